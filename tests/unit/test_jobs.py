"""Job files: references between steps checked before anything runs; evaluate and predict steps
give the numbers the reference backend gives; every shipped job file validates."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cellforge as cf
from cellforge import bundle
from cellforge import metrics as M
from cellforge.backends import numpy as ref
from cellforge.data import prepare
from cellforge.evaluate import evaluate, predict_file
from cellforge.jobs import parse_job, run_job
from cellforge.jobs.parse import _resolve

REPO = Path(__file__).resolve().parents[2]


def problems(job: dict | str, base: Path | None = None) -> dict[str, str]:
    if isinstance(job, str):
        job = __import__("yaml").safe_load(textwrap.dedent(job))
    path = None
    if base is not None:
        path = base / "job.yaml"
        path.write_text(__import__("yaml").safe_dump(job))
    with pytest.raises(cf.SpecError) as e:
        parse_job(path or job)
    return dict(e.value.problems)


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    """An untrained (seeded) digits bundle: evaluate/predict must agree with the numpy reference."""
    spec, prepared = prepare(cf.ModelSpec(task="classify", hidden_size=8), cf.datasets.load("digits"))
    params = ref.init_params(spec, seed=1)
    path = bundle.save(tmp_path_factory.mktemp("b") / "digits", spec, params, prepared.preprocessor.state, {})
    return path, spec, params, prepared


@pytest.fixture(scope="module")
def forecast_bundle(tmp_path_factory):
    spec = cf.ModelSpec(task="forecast", cell="gru", hidden_size=8, horizon=3,
                        input={"columns": ["SUNACTIVITY"], "target": "SUNACTIVITY", "window": 12})
    csv = REPO / "jobs" / "data" / "sunspots.csv"
    spec, prepared = prepare(spec, csv)
    params = ref.init_params(spec, seed=2)
    path = bundle.save(tmp_path_factory.mktemp("b") / "sun", spec, params, prepared.preprocessor.state, {})
    return path, spec, params, prepared


# ---------------------------------------------------------------- validation
def test_reference_to_a_missing_or_later_step_names_the_field(digits_bundle, tmp_path):
    got = problems({"steps": [
        {"evaluate": {"bundle": "${train.bundle}", "data": {"dataset": "digits"}}},
        {"train": {"data": {"dataset": "digits"}}},
        {"predict": {"bundle": "${nope.bundle}", "input": "in.csv", "output": "out.csv"}},
    ]}, tmp_path)
    assert "no earlier step has that id" in got["steps.0.evaluate.bundle"]  # train comes later
    assert "'nope'" in got["steps.2.predict.bundle"] and "earlier steps: ['evaluate', 'train']" in \
        got["steps.2.predict.bundle"]
    assert got["steps.2.predict.input"].startswith("file not found")


def test_reference_to_an_output_the_step_does_not_make():
    got = problems("""
        steps:
          - train: {id: fit, data: {dataset: digits}}
          - evaluate: {id: ev, bundle: "${fit.weights}", data: {dataset: digits}}
          - predict: {bundle: "${ev.bundle}", input: x.csv, output: y.csv}
    """)
    assert "makes no output 'weights'" in got["steps.1.evaluate.bundle"]
    assert "['bundle', 'metrics']" in got["steps.1.evaluate.bundle"]
    assert "step 'ev' (evaluate) makes no output 'bundle'" in got["steps.2.predict.bundle"]


def test_unknown_step_missing_input_duplicate_id_and_bad_output(tmp_path):
    got = problems({"steps": [
        {"train": {"id": "a", "data": {"dataset": "digits"}}},
        {"deploi": {"bundle": "${a.bundle}"}},
        {"evaluate": {"id": "a", "bundle": "no/such/bundle", "data": {"path": "missing.csv"}}},
        {"predict": {"bundle": "${a.bundle}", "input": "x.csv", "output": "y.txt"}},
        {"evaluate": {"bundle": "${a.bundle}"}},
    ]}, tmp_path)
    assert "unknown step kind" in got["steps.1.deploi"] and "'train'" in got["steps.1.deploi"]
    assert "already used" in got["steps.2.evaluate.id"]
    assert "no bundle at" in got["steps.2.evaluate.bundle"]
    assert got["steps.2.evaluate.data.path"].startswith("file not found")
    assert "expected a .csv or .json file" in got["steps.3.predict.output"]
    assert got["steps.4.evaluate.data"] == "Field required"


def test_a_bundle_an_earlier_step_writes_needs_no_reference(tmp_path):
    job, steps, _ = parse_job(_write(tmp_path, """
        steps:
          - train: {data: {dataset: digits}, bundle: out/b}
          - evaluate: {bundle: out/b, data: {dataset: digits}}
    """))
    assert [k for k, _ in steps] == ["train", "evaluate"]


def test_every_shipped_job_file_validates():
    jobs = sorted(str(p) for p in (REPO / "jobs").glob("*.yaml"))
    assert len(jobs) >= 4
    out = subprocess.run([sys.executable, "-m", "cellforge.cli", "validate", *jobs], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": ok (") == len(jobs)


def test_references_resolve_to_values_or_into_strings():
    outputs = {"t": {"bundle": "/x/b", "metrics": {"test_accuracy": 0.5}}}
    body = {"bundle": "${t.bundle}", "acc": "${t.metrics.test_accuracy}", "name": "run-${t.metrics.test_accuracy}",
            "list": ["${ t.bundle }", 3]}
    assert _resolve(body, outputs) == {"bundle": "/x/b", "acc": 0.5, "name": "run-0.5", "list": ["/x/b", 3]}


# ---------------------------------------------------------------- evaluate / predict
def test_evaluate_scores_the_held_out_split_like_the_reference(digits_bundle):
    path, spec, params, prepared = digits_bundle
    test = prepared.splits["test"]
    want = M.evaluate("classify", ref.forward(spec, params, test["x"], test["lengths"]), test["y"], spec.num_classes)
    got = evaluate(path, cf.datasets.load("digits"))
    assert set(got) == {f"test_{k}" for k in want}
    for k, v in want.items():
        assert got[f"test_{k}"] == pytest.approx(v, abs=1e-5)
    everything = evaluate(path, cf.datasets.load("digits"), split="all", framework="numpy")
    assert everything["all_accuracy"] != got["test_accuracy"]


def test_evaluate_a_forecast_from_csv_with_its_naive_baseline(forecast_bundle):
    path, spec, params, prepared = forecast_bundle
    test = prepared.splits["test"]
    out = ref.forward(spec, params, test["x"], test["lengths"])
    scaler = prepared.preprocessor.state["target_scaler"]
    want = M.evaluate("forecast", out, test["y"], None, scaler)
    got = evaluate(path, REPO / "jobs" / "data" / "sunspots.csv")
    assert got["test_rmse"] == pytest.approx(want["rmse"], rel=1e-5)
    assert got["naive_rmse"] == pytest.approx(prepared.baseline["naive_rmse"], rel=1e-9)


def test_evaluate_refuses_data_that_does_not_fit(digits_bundle, forecast_bundle):
    data = cf.datasets.load("digits")
    with pytest.raises(cf.SpecError, match="label 'seven' is not one the bundle knows"):
        evaluate(digits_bundle[0], (data.x[:40], ["seven"] * 40), split="all")
    with pytest.raises(cf.SpecError, match="expected 8 features per step"):
        evaluate(digits_bundle[0], (data.x[:40, :, :4], data.y[:40]), split="all")
    with pytest.raises(cf.SpecError, match="SUNACTIVITY"):
        evaluate(forecast_bundle[0], pd.DataFrame({"other": np.arange(100.0)}))


def test_predict_file_forecasts_after_the_last_row(forecast_bundle, tmp_path):
    path = forecast_bundle[0]
    csv = REPO / "jobs" / "data" / "sunspots.csv"
    res = predict_file(path, csv, tmp_path / "f.csv")
    df = pd.read_csv(res["output"])
    assert res["rows"] == 3 and list(df.columns) == ["step", "SUNACTIVITY"]
    values = pd.read_csv(csv)["SUNACTIVITY"].to_numpy()
    want = cf.load(path, framework="numpy").predict([values])[0]
    np.testing.assert_allclose(df["SUNACTIVITY"], want, rtol=1e-5)
    (tmp_path / "s.json").write_text(json.dumps(values.tolist()))
    res = predict_file(path, tmp_path / "s.json", tmp_path / "f.json")
    np.testing.assert_allclose([r["SUNACTIVITY"] for r in json.loads(Path(res["output"]).read_text())], want,
                               rtol=1e-5)


def test_predict_file_groups_table_rows_into_sequences(digits_bundle, tmp_path):
    path = digits_bundle[0]
    images = cf.datasets.load("digits").x[:5]
    rows = [{"image": f"img{i}", **{f"p{j}": v for j, v in enumerate(step)}} for i, im in enumerate(images)
            for step in im]
    pd.DataFrame(rows).to_csv(tmp_path / "in.csv", index=False)
    res = predict_file(path, tmp_path / "in.csv", tmp_path / "out.csv", group="image")
    df = pd.read_csv(res["output"])
    model = cf.load(path)
    assert df["image"].tolist() == [f"img{i}" for i in range(5)]
    assert df["prediction"].tolist() == model.predict(images).tolist()
    np.testing.assert_allclose(df[[f"p_{c}" for c in range(10)]].to_numpy(), model.predict_proba(images),
                               atol=1e-6)
    with pytest.raises(cf.SpecError, match="group"):
        predict_file(path, tmp_path / "in.csv", tmp_path / "out.csv")


def test_a_job_of_evaluate_and_predict_runs_without_training(forecast_bundle, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "s.csv").write_text((REPO / "jobs" / "data" / "sunspots.csv").read_text())
    job = _write(tmp_path, f"""
        steps:
          - evaluate: {{id: score, bundle: {forecast_bundle[0]}, data: {{path: data/s.csv}}}}
          - predict: {{bundle: {forecast_bundle[0]}, input: data/s.csv, output: "out/f-${{score.metrics.test_rmse}}.csv"}}
    """)
    outputs = run_job(job)
    rmse = outputs["score"]["metrics"]["test_rmse"]
    assert Path(outputs["predict"]["output"]) == (tmp_path / "out" / f"f-{rmse}.csv").resolve()
    assert len(pd.read_csv(outputs["predict"]["output"])) == 3
    assert "[cellforge] outputs {" in capsys.readouterr().out


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_endpoints_are_held_after_the_last_step_not_in_between(monkeypatch, digits_bundle):
    """A deploy step followed by more steps: those run first, then the job holds the endpoint (on an
    embedded Ray, until Ctrl-C)."""
    from cellforge.jobs import parse, steps

    calls = []
    monkeypatch.setattr(steps.DeployStep, "run", lambda step, base, address: calls.append("deploy") or {
        "name": step.name, "url": "http://127.0.0.1:8000/v1/models/m", "version": "v"})
    monkeypatch.setattr(steps.EvaluateStep, "run", lambda step, base, address: calls.append("evaluate") or {})
    monkeypatch.setattr(parse, "hold", lambda block, address, message: calls.append(("hold", block)))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run_job({"steps": [{"deploy": {"bundle": str(digits_bundle[0]), "name": "m"}},
                       {"evaluate": {"bundle": str(digits_bundle[0]), "data": {"dataset": "digits"}}}]})
    assert calls == ["deploy", "evaluate", ("hold", None)]
    calls.clear()
    run_job({"steps": [{"deploy": {"bundle": str(digits_bundle[0]), "name": "m", "block": False}}]})
    assert calls == ["deploy", ("hold", False)]


def test_a_job_sets_how_much_cellforge_logs_and_puts_it_back(digits_bundle, capsys):
    import logging

    from cellforge.log import log

    body = {"evaluate": {"bundle": str(digits_bundle[0]), "data": {"dataset": "digits"}}}
    run_job({"steps": [body]})
    assert "[cellforge] step evaluate (evaluate)" in capsys.readouterr().out
    run_job({"log_level": "warning", "steps": [body]})
    assert capsys.readouterr().out == ""
    assert log.level == logging.INFO  # the caller's level again
    with pytest.raises(cf.SpecError, match="log_level"):
        parse_job({"log_level": "loud", "steps": [body]})


def test_train_and_sweep_steps_take_official_splits(tmp_path, monkeypatch):
    """``validation:`` / ``test:`` data references: a missing file is named at its field before anything
    runs; when run, each reaches fit / sweep as the split it names."""
    from cellforge.jobs import steps

    for kind in ("train", "sweep"):
        body = {"data": {"dataset": "digits"}, "validation": {"path": "val.csv"}, "test": {"dataset": "nope"}}
        if kind == "sweep":
            body["space"] = {"hidden_size": {"choice": [8, 16]}}
        got = problems({"steps": [{kind: body}]}, tmp_path)
        assert got[f"steps.0.{kind}.validation.path"].startswith("file not found")
        assert "unknown data set 'nope'" in got[f"steps.0.{kind}.test"]
    pd.DataFrame({"x0": [0.1, 0.2], "label": [0, 1]}).to_csv(tmp_path / "val.csv", index=False)
    seen = {}

    def fake(spec, data, *args, validation=None, test=None, **kw):  # what the step hands to fit / sweep
        seen.update(data=data, validation=validation, test=test)
        raise RuntimeError("stop here")

    monkeypatch.setattr(steps, "fit", fake)
    step = steps.TrainStep.parse({"data": {"dataset": "digits"}, "validation": {"path": "val.csv"}})
    with pytest.raises(RuntimeError, match="stop here"):
        step.run(tmp_path, None)
    assert seen["validation"] == (tmp_path / "val.csv").resolve() and seen["test"] is None
    monkeypatch.setattr(steps, "sweep", fake)
    step = steps.SweepStep.parse({"data": {"path": "val.csv"}, "test": {"dataset": "digits"},
                                  "space": {"hidden_size": {"choice": [8, 16]}}})
    with pytest.raises(RuntimeError, match="stop here"):
        step.run(tmp_path, None)
    assert seen["data"] == (tmp_path / "val.csv").resolve() and seen["validation"] is None
    assert len(seen["test"].x) == len(cf.datasets.load("digits").x)
