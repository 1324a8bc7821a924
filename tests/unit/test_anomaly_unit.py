"""Anomaly detection without Ray: the spec, the network in every backend against the numpy
reference, the generator and the labelled series, the metrics on hand-checked cases, the threshold's
calibration, and ``score``/``detect`` on a bundle (errors named by field)."""

import numpy as np
import pytest

import cellforge as cf
from cellforge import metrics
from cellforge.anomaly import scores
from cellforge.backends import get_backend
from cellforge.data import prepare
from cellforge.data.anomalies import KINDS, co2_seasonal, inject, internal_bleeding
from cellforge.errors import SpecError
from cellforge.spec import ModelSpec
from cellforge.train.fit import finish

pytestmark = pytest.mark.unit


def problems(**fields) -> dict[str, str]:
    with pytest.raises(SpecError) as e:
        ModelSpec(**fields)
    return dict(e.value.problems)


# spec -------------------------------------------------------------------------------------------
def test_spec_defaults_round_trip_and_other_tasks_stay_free_of_it():
    spec = ModelSpec(task="anomaly", anomaly={"method": "reconstruct", "threshold": {"quantile": 0.99}})
    assert spec.reconstructs and spec.anomaly.threshold.quantile == 0.99
    assert ModelSpec.from_json(spec.to_json()) == spec and ModelSpec.from_yaml(spec.to_yaml()) == spec
    assert ModelSpec(task="anomaly").anomaly.method == "forecast" and ModelSpec(task="anomaly").anomaly.threshold == "auto"
    assert "anomaly" not in ModelSpec(task="forecast").model_dump()


@pytest.mark.parametrize("threshold", ["max", {"quantile": 0}, {"quantile": 1.5}, {"contamination": 0.5}, {"risk": 0.2},
                                       {"quantile": 0.9, "contamination": 0.1}, {"percent": 5}, 0.9])
def test_a_bad_threshold_is_one_clear_problem(threshold):
    p = problems(task="anomaly", anomaly={"threshold": threshold})
    assert list(p) == ["anomaly.threshold"] and "'auto', {'quantile': q}" in p["anomaly.threshold"]


def test_every_bad_combination_is_named():
    p = problems(task="anomaly", horizon=3, bidirectional=True, input={"type": "text"}, training={"val_fraction": 0})
    assert set(p) == {"horizon", "bidirectional", "input.type", "training.val_fraction"}
    assert "'forecast' or 'reconstruct'" in problems(task="anomaly", anomaly={"method": "vae"})["anomaly.method"]
    assert "only for task 'anomaly'" in problems(task="forecast", anomaly={})["anomaly"]


# network: every backend against the numpy reference ------------------------------------------------
@pytest.mark.parametrize("method", ["forecast", "reconstruct"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backends_match_the_reference_and_round_trip_weights(method, cell):
    spec = ModelSpec(task="anomaly", cell=cell, hidden_size=6, num_layers=2, input={"num_features": 2, "window": 5},
                     anomaly={"method": method})
    ref = get_backend("numpy")
    params = ref.init_params(spec, seed=3)
    x = np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)
    lengths = np.full(3, 5)
    want = ref.predict(ref.build(spec, params), x, lengths)
    assert want.shape == ((3, 5, 2) if method == "reconstruct" else (3, 2))
    for name in ("torch", "tensorflow"):
        b = get_backend(name)
        net = b.build(spec, params)
        np.testing.assert_allclose(b.predict(net, x, lengths), want, atol=1e-5)
        np.testing.assert_allclose(ref.predict(ref.build(spec, b.to_canonical(net)), x, lengths), want, atol=1e-5)


# data ---------------------------------------------------------------------------------------------
def test_inject_puts_each_kind_where_it_says():
    base = co2_seasonal()
    assert base.values.shape == (2232, 1) and abs(base.values.mean()) < 0.1  # the trend is gone
    out, where = inject(base, per_kind=1, start=1000, length=20, magnitude=4.0, seed=1)
    sd = base.values.std()
    assert [k for *_, k in where] == list(KINDS)
    assert out.labels.sum() == 1 + 3 * 20 and not out.labels[:1000].any()
    for a, b, kind in where:
        delta = out.values[a:b, 0] - base.values[a:b, 0]
        if kind == "spike":
            assert b - a == 1 and abs(delta[0]) == pytest.approx(4 * sd)
        elif kind == "level_shift":
            np.testing.assert_allclose(np.abs(delta), 2 * sd)
        elif kind == "frequency":
            np.testing.assert_array_equal(out.values[a:b, 0], base.values[a: a + 40: 2, 0])
        else:
            assert (out.values[a:b, 0] == out.values[a, 0]).all()
    untouched = ~out.labels
    np.testing.assert_array_equal(out.values[untouched], base.values[untouched])
    with pytest.raises(ValueError, match="kinds: unknown"):
        inject(base, kinds=("wobble",))
    with pytest.raises(ValueError, match="start"):
        inject(base, start=2200)


def test_the_labelled_real_series_ships_with_its_one_anomaly():
    test, train = internal_bleeding("test"), internal_bleeding("train")
    assert test.values.shape == (7501, 1) and train.values.shape == (1200, 1) and not train.labels.any()
    assert metrics.intervals(test.labels) == [(4187, 4199)]
    assert cf.datasets.load("internal_bleeding").name == "internal_bleeding-test"


# metrics: hand-checked ---------------------------------------------------------------------------
def test_detection_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 0, 0, 0, 1, 0])
    s = np.array([np.nan, 0.2, 0.9, 0.1, 0.3, 0.8, 0.1, 0.0, 0.2, 0.1])
    m = metrics.detection(s, labels, threshold=0.5)
    # flags at steps 2 and 5: one true positive of 4 labelled steps, one false
    assert (m["precision"], m["recall"]) == (0.5, 0.25)
    # point-adjusted: the flag at 2 counts for steps 2-4; 3 of 4 labelled steps, 3 of 4 flags right
    assert (m["pa_precision"], m["pa_recall"]) == (0.75, 0.75)
    # interval-wise: one of two labelled intervals found; one of two flagged intervals real
    assert (m["event_recall"], m["event_precision"]) == (0.5, 0.5)
    from sklearn.metrics import roc_auc_score

    assert m["auroc"] == pytest.approx(roc_auc_score(labels[1:], s[1:]))
    assert "ucr" not in m  # two labelled intervals: the UCR rule needs one


def test_ucr_rule_and_best_f1_threshold():
    labels = np.zeros(1000, bool)
    labels[500:510] = True
    s = np.zeros(1000)
    s[609] = 1.0
    assert metrics.ucr_hit(s, labels) and not metrics.ucr_hit(s, labels, tolerance=99)
    s[610], s[609] = 2.0, 0.0
    assert not metrics.ucr_hit(s, labels)
    assert metrics.detection(s, labels, 0.5)["ucr"] == 0.0
    t = metrics.best_f1_threshold(np.array([0.1, 0.2, 0.9, 0.8, 0.3]), np.array([0, 0, 1, 1, 0]))
    assert 0.3 <= t < 0.8


# threshold calibration ----------------------------------------------------------------------------
def test_threshold_rules_on_normal_scores():
    s = np.arange(1, 1001, dtype=float)
    q, c = ModelSpec(task="anomaly", anomaly={"threshold": {"quantile": 0.99}}), ModelSpec(
        task="anomaly", anomaly={"threshold": {"contamination": 0.05}})
    assert scores.threshold_of(q.anomaly.threshold, s) == pytest.approx(np.quantile(s, 0.99))
    assert scores.threshold_of(c.anomaly.threshold, s) == pytest.approx(np.quantile(s, 0.95))
    assert scores.threshold_of("auto", s) >= 1000  # never below the highest normal score
    normal = np.abs(np.random.default_rng(0).normal(size=20000))
    # the tail fit's 1-in-1,000 point of |N(0,1)| is its 0.999 quantile, 3.29
    r = ModelSpec(task="anomaly", anomaly={"threshold": {"risk": 1e-3}}).anomaly.threshold
    assert scores.threshold_of(r, normal) == pytest.approx(3.29, abs=0.15)


def test_calibration_standardises_errors_per_feature():
    spec = ModelSpec(task="anomaly", input={"num_features": 2, "window": 4})
    rng = np.random.default_rng(0)
    y = rng.normal(size=(500, 2))
    out = y + rng.normal(size=(500, 2)) * [0.1, 3.0]
    cal = scores.calibrate(spec, out, y)
    np.testing.assert_allclose(cal["error_scale"], [0.1, 3.0], rtol=0.1)
    assert cal["warmup"] == 4 and cal["rule"] == "auto"
    _, s = scores.standardise(out - y, cal["error_scale"])
    assert (s <= cal["threshold"]).all() and np.sqrt(np.mean(s ** 2)) == pytest.approx(1.0)
    with pytest.raises(SpecError, match="val_fraction"):
        scores.calibrate(spec, out[:1], y[:1])


# score / detect on a bundle (random weights: what is checked is the plumbing) ------------------------
@pytest.fixture(scope="module", params=["forecast", "reconstruct"])
def bundle(request, tmp_path_factory):
    spec = ModelSpec(task="anomaly", cell="gru", hidden_size=8, input={"window": 16},
                     anomaly={"method": request.param, "threshold": {"quantile": 0.95}})
    base = co2_seasonal()
    spec, prepared = prepare(spec, cf.Series(base.values[:400], ["co2"]))
    weights = get_backend("numpy").init_params(spec, 0)
    d = tmp_path_factory.mktemp("anomaly")
    return finish(spec, prepared, weights, {"history": []}, d / "bundle", d, verbose=False)


def test_score_and_detect_align_with_the_input(bundle):
    model = cf.load(bundle.bundle)
    series = co2_seasonal().values[400:700]
    s, per = model.score(series, per_feature=True)
    warmup = 16 if model.spec.anomaly.method == "forecast" else 15
    assert s.shape == (300,) and per.shape == (300, 1)
    assert np.isnan(s[:warmup]).all() and np.isfinite(s[warmup:]).all()
    np.testing.assert_allclose(s[warmup:], per[warmup:, 0])  # one feature: its score is the step's
    d = model.detect(series)
    assert d.threshold == model.preprocessor.state["anomaly"]["threshold"]
    np.testing.assert_array_equal(d.flags, np.nan_to_num(s, nan=-np.inf) > d.threshold)
    assert d.intervals == metrics.intervals(d.flags) and not d.flags[:warmup].any()
    assert list(d.frame().columns) == ["step", "score", "flag", "warmup", "score_co2"]
    assert "test_flag_rate" in bundle.metrics
    # the same scores from the torch runtime and a DataFrame input
    import pandas as pd

    np.testing.assert_allclose(cf.load(bundle.bundle, framework="torch").score(pd.DataFrame({"co2": series[:, 0]})),
                               s, atol=1e-4, equal_nan=True)


def test_bad_series_are_refused_naming_the_field(bundle):
    model = cf.load(bundle.bundle)
    ok = co2_seasonal().values[:100]
    for bad, match in [(ok[:10], "needs 1[67] steps"), (np.where(np.arange(100)[:, None] == 50, np.nan, ok), "NaN"),
                       (np.hstack([ok, ok]), "expected 1 feature"), ("text", "expected")]:
        with pytest.raises(SpecError) as e:
            model.score(bad)
        assert e.value.problems[0][0] == "series" and e.value.problems[0][1]
        assert __import__("re").search(match, str(e.value)), str(e.value)


def test_scoring_a_model_of_another_task_is_refused(tmp_path):
    spec = ModelSpec(task="forecast", hidden_size=4, input={"window": 5})
    spec, prepared = prepare(spec, cf.Series(np.sin(np.arange(60.0))))
    res = finish(spec, prepared, get_backend("numpy").init_params(spec), {"history": []}, tmp_path / "b", tmp_path,
                 verbose=False)
    with pytest.raises(SpecError) as e:
        cf.load(res.bundle).score(np.zeros(30))
    assert e.value.problems[0][0] == "task" and "'anomaly'" in e.value.problems[0][1]


# evaluate, the detect job step and jobs/anomaly.yaml ----------------------------------------------------
def test_evaluate_reports_detection_metrics_on_a_labelled_series(bundle):
    from cellforge.evaluate import evaluate

    injected, _ = inject(co2_seasonal(), start=400, seed=0)
    m = evaluate(bundle.bundle, injected, split="all")
    assert {"all_f1", "all_pa_f1", "all_auroc", "all_average_precision", "all_event_recall"} <= set(m)
    found = cf.load(bundle.bundle).detect(injected)
    assert m["all_auroc"] == pytest.approx(found.metrics(injected.labels)["auroc"])
    with pytest.raises(SpecError, match="series with labels"):
        evaluate(bundle.bundle, co2_seasonal())


def test_detect_step_writes_scores_and_flags_next_to_the_rows(bundle, tmp_path):
    import pandas as pd

    from cellforge.jobs.steps import STEPS

    rows = pd.read_csv("jobs/data/co2_anomalies.csv")
    step = STEPS["detect"].parse({"bundle": str(bundle.bundle), "input": "in.csv", "output": "out/scores.csv",
                                  "labels": "is_anomaly"})
    rows.to_csv(tmp_path / "in.csv", index=False)
    out = step.run(tmp_path, None)
    written = pd.read_csv(out["output"])
    assert list(written.columns[:3]) == ["week", "co2", "is_anomaly"] and len(written) == len(rows) == out["rows"]
    found = cf.load(bundle.bundle).detect(rows)
    np.testing.assert_allclose(written["score"], found.scores, equal_nan=True)
    assert written["flag"].sum() == out["flagged"] and written["warmup"].sum() == found.warmup.sum() in (15, 16)
    assert out["metrics"]["auroc"] == pytest.approx(found.metrics(rows["is_anomaly"])["auroc"])
    with pytest.raises(SpecError, match="labels"):
        STEPS["detect"].parse({"bundle": str(bundle.bundle), "input": "in.csv", "output": "o.csv",
                               "labels": "nope"}).run(tmp_path, None)
    with pytest.raises(SpecError, match="output"):
        STEPS["detect"].parse({"bundle": "b", "input": "in.csv", "output": "o.parquet"})


def test_the_anomaly_job_file_is_valid():
    from cellforge.jobs import parse_job

    _, steps, _ = parse_job("jobs/anomaly.yaml")
    assert [kind for kind, _ in steps] == ["train", "detect"]


def test_labels_give_validation_metrics_and_a_best_f1_threshold():
    """A labelled training series: each window carries its scored step's label; the validation
    metrics a sweep ranks by, and 'auto' as the best F1 on the validation split."""
    injected, _ = inject(co2_seasonal(), start=0, seed=0, per_kind=6)
    spec, prepared = prepare(ModelSpec(task="anomaly", hidden_size=4, input={"window": 8}), injected)
    val = prepared.splits["val"]
    assert val["labels"].shape == (len(val["y"]),) and val["labels"].any()
    rng = np.random.default_rng(0)
    out = val["y"] + rng.normal(size=val["y"].shape) * 0.1 + val["labels"][:, None] * 3.0  # errors where labelled
    m = scores.validation_metrics(False, out, val["y"], val["labels"])
    assert m["auroc"] == 1.0 and m["f1"] == 1.0 and m["average_precision"] == pytest.approx(1.0)
    cal = scores.calibrate(spec, out, val["y"], val["labels"])
    assert cal["rule"].startswith("auto: best F1") and cal["error_scale"][0] == pytest.approx(0.1, rel=0.2)
    assert scores.validation_metrics(False, out, val["y"], np.zeros(len(out), bool)) == {}


# streams: the serving engine's session step ------------------------------------------------------------
@pytest.mark.parametrize("runtime", ["torch", "numpy"])
def test_stepping_a_stream_gives_the_scores_of_the_whole_series(bundle, runtime):
    from cellforge.serving.config import DeployConfig
    from cellforge.serving.engine import Engine
    from cellforge.serving.schema import StepResponse

    engine = Engine(DeployConfig(bundle=str(bundle.bundle), name="m", runtime=runtime))
    series = co2_seasonal().values[400:480, 0]
    want = cf.load(bundle.bundle, framework=runtime).score(series)
    got, state = [], None
    for chunk in np.split(np.arange(80), [1, 2, 5, 20, 21, 50]):  # point by point, then in chunks
        answer, state = engine.step(engine.step_inputs(series[chunk].tolist()), state)
        StepResponse(session_id="s", model="m", version="v", steps=state["steps"], **answer)  # the API's shape
        assert len(answer["scores"]) == len(chunk) and answer["threshold"] == engine.state["anomaly"]["threshold"]
        assert answer["flags"] == [s is not None and s > answer["threshold"] for s in answer["scores"]]
        got += answer["scores"]
    assert state["steps"] == 80 and len(state["window"]) == 16
    np.testing.assert_allclose(np.array([np.nan if s is None else s for s in got]), want, atol=1e-5,
                               equal_nan=True)


def test_many_streams_scored_in_one_forward_pass_give_each_stream_its_own_scores(bundle):
    """The server's batched stream steps: several streams' windows (some still warming up, chunks of
    different sizes) through ``windows_outputs`` at once answer what each stream's lone step answers."""
    from cellforge.serving.config import DeployConfig
    from cellforge.serving.engine import Engine

    engine = Engine(DeployConfig(bundle=str(bundle.bundle), name="m", runtime="numpy"))
    values = co2_seasonal().values[:, 0]
    streams = [values[k * 30: k * 30 + 60] for k in range(5)]
    rng = np.random.default_rng(0)  # each stream cut into 5 chunks of its own sizes (some of 1 step)
    chunks = [np.split(np.arange(60), np.sort(rng.choice(np.arange(1, 60), 4, replace=False))) for _ in streams]
    carries = [None] * 5
    for r in range(5):
        x = [engine.step_inputs(s[c[r]].tolist()) for s, c in zip(streams, chunks)]
        lone = [engine.step(xi, c) for xi, c in zip(x, carries)]
        work = [engine.stream_work(xi, c) for xi, c in zip(x, carries)]
        scored = [w for w in work if len(w.windows)]
        outs = iter(engine.windows_outputs([w.windows for w in scored]) if scored else [])
        batched = [w.answer(next(outs) if len(w.windows) else None) for w in work]
        for (want, want_carry), got, w in zip(lone, batched, work):
            assert got["flags"] == want["flags"] and w.carry == want_carry
            np.testing.assert_allclose(np.array(got["scores"], dtype=float), np.array(want["scores"], dtype=float),
                                       atol=1e-6, equal_nan=True)
        carries = [w.carry for w in work]
    assert [c["steps"] for c in carries] == [60] * 5


def test_onnx_runs_a_forecast_detector_and_refuses_a_reconstructing_one():
    spec = ModelSpec(task="anomaly", cell="gru", hidden_size=4, input={"num_features": 2, "window": 5})
    ref, onnx = get_backend("numpy"), get_backend("onnx")
    params = ref.init_params(spec)
    x = np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)
    np.testing.assert_allclose(onnx.predict(onnx.build(spec, params), x, np.full(3, 5)),
                               ref.predict(ref.build(spec, params), x, np.full(3, 5)), atol=1e-5)
    with pytest.raises(ValueError, match="runtime 'onnx' does not run anomaly's 'reconstruct'"):
        onnx.build(spec.updated(**{"anomaly.method": "reconstruct"}))


def test_a_labelled_validation_split_reports_what_sweeps_rank_by():
    """The training loop's validation metrics on a labelled split (a torch Fitter, no Ray): the
    regression ones plus f1/auroc/average_precision, which metrics.mode_of ranks as 'max'."""
    from cellforge.train.loop import fitter_class, shard_eval
    from cellforge.train.worker import WorkerInfo

    injected, _ = inject(co2_seasonal(), start=0, seed=0, per_kind=6)
    spec, prepared = prepare(ModelSpec(task="anomaly", hidden_size=4, input={"window": 8}), injected)
    fitter = fitter_class(spec)(spec, WorkerInfo(0, 1, 1, False))
    m = shard_eval(fitter, spec, prepared.splits["val"], WorkerInfo(0, 1, 1, False), None)
    assert {"loss", "rmse", "f1", "auroc", "average_precision"} <= set(m) and 0 <= m["auroc"] <= 1
    assert metrics.mode_of("val_f1") == metrics.mode_of("val_auroc") == "max"


# many series in one table (input.group) --------------------------------------------------------------
def machines(interleave: bool):
    """Three machines' series in one table: machine k's values are k * 1000 + its own steps, so a
    window's values tell which machine(s) it read. ``interleave``: rows alternate between machines."""
    import pandas as pd

    frames = [pd.DataFrame({"machine": f"m{k}", "temp": k * 1000.0 + np.arange(n)}) for k, n in ((0, 80), (1, 60), (2, 100))]
    df = pd.concat(frames, ignore_index=True)
    if interleave:
        df = df.iloc[np.argsort(df.groupby("machine").cumcount().to_numpy(), kind="stable")].reset_index(drop=True)
    return df


@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("method", ["forecast", "reconstruct"])
def test_a_group_column_windows_and_splits_each_series_on_its_own(method, interleave):
    spec = ModelSpec(task="anomaly", cell="gru", hidden_size=4, input={"window": 8, "group": "machine"},
                     anomaly={"method": method}, training={"val_fraction": 0.2, "test_fraction": 0.1})
    spec, prepared = prepare(spec, machines(interleave))
    state = prepared.preprocessor.state
    assert spec.input.num_features == 1 and state["columns"] == ["temp"] and state["group"] == "machine"
    scaler = state["scaler"]
    raw = {k: v["x"][..., 0] * scaler["scale"][0] + scaler["shift"][0] for k, v in prepared.splits.items()}
    reconstruct = method == "reconstruct"
    per_machine = [n - 8 + reconstruct for n in (80, 60, 100)]
    assert sum(len(v) for v in raw.values()) == sum(per_machine)
    for split, w in raw.items():
        machine = np.floor(np.round(w) / 1000)
        assert (machine == machine[:, :1]).all(), f"{split}: a window crosses from one machine into another"
        assert (np.diff(np.round(w), axis=1) == 1).all(), f"{split}: a window skips or reorders a machine's steps"
    for k, n in enumerate(per_machine):  # each machine split in time order: train, then val, then test
        starts = {s: np.round(w[np.floor(np.round(w[:, 0]) / 1000) == k, 0]) - k * 1000 for s, w in raw.items()}
        assert len(starts["train"]) + len(starts["val"]) + len(starts["test"]) == n
        assert starts["train"].max() < starts["val"].min() <= starts["val"].max() < starts["test"].min()
    # the scaler is fitted on the train parts of every machine, not on one alone
    assert scaler["shift"][0] > 1000


def test_a_grouped_table_is_scored_series_by_series(tmp_path):
    import pandas as pd

    spec = ModelSpec(task="anomaly", cell="gru", hidden_size=8, input={"window": 16, "group": "machine"},
                     anomaly={"method": "forecast", "threshold": {"quantile": 0.95}})
    base = co2_seasonal().values[:, 0]
    train = pd.DataFrame({"machine": np.repeat(["a", "b"], 300), "co2": np.r_[base[:300], base[300:600] + 2.0]})
    spec, prepared = prepare(spec, train)
    model = cf.load(finish(spec, prepared, get_backend("numpy").init_params(spec, 0), {"history": []},
                           tmp_path / "bundle", tmp_path, verbose=False).bundle)
    a, b = base[600:700], base[700:760] + 2.0
    spiked = b.copy()
    spiked[40] += 30.0
    table = pd.DataFrame({"machine": np.r_[["a"] * 100, ["b"] * 60], "co2": np.r_[a, spiked]})
    s = model.score(table)
    np.testing.assert_allclose(s[:100], model.score(a), equal_nan=True)
    np.testing.assert_allclose(s[100:], model.score(spiked), equal_nan=True)
    assert np.isnan(s[:16]).all() and np.isnan(s[100:116]).all()  # each series warms up on its own
    # rows of the two machines interleaved: each machine's rows keep their order, the scores follow them
    mixed = table.iloc[np.argsort(np.r_[np.arange(100.0), np.arange(60) + 0.5], kind="stable")]
    got = model.score(mixed)
    for m, want in (("a", s[:100]), ("b", s[100:])):
        np.testing.assert_allclose(got[(mixed["machine"] == m).to_numpy()], want, equal_nan=True)
    d = model.detect(table, threshold=float(np.nanmax(s[100:])) - 1e-6)
    assert d.intervals == [(140, 141)] and d.flags.sum() == 1
    # a Series with groups scores the same; a series too short for one window is named
    np.testing.assert_allclose(model.score(cf.Series(table[["co2"]].to_numpy(), ["co2"],
                                                     groups=table["machine"].to_numpy())), s, equal_nan=True)
    short = pd.DataFrame({"machine": ["a"] * 100 + ["c"] * 10, "co2": np.r_[a, a[:10]]})
    with pytest.raises(SpecError) as e:
        model.score(short)
    assert e.value.problems[0][0] == "series['c']" and "needs 17 steps" in e.value.problems[0][1]


def test_a_group_too_short_to_train_on_or_a_grouped_forecast_is_refused():
    import pandas as pd

    df = pd.DataFrame({"machine": ["a"] * 50 + ["b"] * 9, "v": np.arange(59.0)})
    spec = ModelSpec(task="anomaly", cell="gru", hidden_size=4, input={"window": 8, "group": "machine"})
    with pytest.raises(SpecError) as e:
        prepare(spec, df)
    assert e.value.problems[0][0] == "input.window" and "series 'b' of input.group" in e.value.problems[0][1]
    with pytest.raises(SpecError) as e:
        prepare(ModelSpec(task="forecast", input={"window": 8, "group": "machine"}), df)
    assert e.value.problems[0][0] == "input.group"
