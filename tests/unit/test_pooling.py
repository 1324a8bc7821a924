"""``pooling: mean | max``: the classify/regress head reads the top layer's outputs pooled over each
sequence's own steps. Held to the numpy reference in torch, Keras and ONNX Runtime (padded batches with
garbage in the padding, both weight directions, through a saved bundle); refused where it makes no sense
(per-step tasks, sessions, single-step graphs) with the field named."""

import itertools

import numpy as np
import pytest
from test_parity import ATOL, FRAMEWORKS, check_parity, make_spec, padded_batch

import cellforge as cf
from cellforge.backends import get_backend
from cellforge.backends import numpy as ref
from cellforge.backends import onnx as ox
from cellforge.backends.onnx.graph import step_graph
from cellforge.errors import SpecError

TEXT = {"type": "text", "vocab_size": 30, "embedding_dim": 4}


def test_pool_is_the_mean_or_max_of_each_sequences_own_steps():
    rng = np.random.default_rng(0)
    seq, lengths = rng.normal(size=(4, 6, 3)).astype(np.float32), np.array([6, 1, 4, 3])
    for how, fn in (("mean", np.mean), ("max", np.max)):
        want = np.stack([fn(seq[i, :n], 0) for i, n in enumerate(lengths)])
        np.testing.assert_allclose(ref.model.pool(seq, lengths, how), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cell,pooling,bidirectional,layers",
                         list(itertools.product(["rnn", "lstm", "gru"], ["mean", "max"], [False, True], [1, 2])))
def test_frameworks_equal_reference(cell, pooling, bidirectional, layers):
    spec = make_spec(cell, layers, bidirectional, "classify", pooling=pooling)
    check_parity(spec, *padded_batch(spec), compiled=False, cross=False)


@pytest.mark.parametrize("pooling,bidirectional", list(itertools.product(["mean", "max"], [False, True])))
def test_unpadded_text_and_compiled(pooling, bidirectional):
    # every sequence full length: the frameworks skip masking (packing) on this path; text; tf.function
    spec = make_spec("gru", 2, bidirectional, "classify", pooling=pooling, input=TEXT)
    check_parity(spec, *padded_batch(spec, lengths=np.full(4, 6)))
    check_parity(spec, *padded_batch(spec))


def test_a_cell_of_your_own_and_the_regress_head(user_cells):
    # mgu: each backend's generic step loop (not the fused kernel)
    for pooling, bidirectional in itertools.product(["mean", "max"], [False, True]):
        spec = cf.ModelSpec(task="regress", num_outputs=2, cell="mgu", hidden_size=7, bidirectional=bidirectional,
                            pooling=pooling, input={"num_features": 5})
        check_parity(spec, *padded_batch(spec), compiled=False, cross=False)


@pytest.mark.parametrize("cell,pooling,bidirectional",
                         list(itertools.product(["lstm", "gru", "mgu"], ["mean", "max"], [False, True])))
def test_onnx_runtime_equals_reference(cell, pooling, bidirectional, user_cells):
    spec = cf.ModelSpec(cell=cell, num_layers=2, bidirectional=bidirectional, hidden_size=7, pooling=pooling,
                        task="classify", num_classes=4, input={"num_features": 5})
    params = ref.init_params(spec, seed=3)
    net = ox.build(spec, params)
    for lengths in (np.array([6, 1, 4, 6, 3, 2]), np.full(3, 5)):
        x, lengths = padded_batch(spec, lengths=lengths)
        np.testing.assert_allclose(ox.predict(net, x, lengths), ref.forward(spec, params, x, lengths),
                                   atol=ATOL, rtol=0)


def test_pooling_changes_the_answer():
    # the three summaries differ on the same weights (so a backend ignoring the option fails the tests above)
    outs = {}
    for pooling in ("last", "mean", "max"):
        spec = make_spec("gru", 1, False, "classify", pooling=pooling)
        params = ref.init_params(spec, seed=1)
        outs[pooling] = ref.forward(spec, params, *padded_batch(spec))
    assert min(np.abs(outs[a] - outs[b]).max() for a, b in itertools.combinations(outs, 2)) > 1e-3


def test_trained_bundles_cross_frameworks(tmp_path):
    from cellforge import bundle
    from cellforge.train.loop import batches
    from cellforge.train.worker import WorkerInfo

    spec = make_spec("gru", 1, True, "classify", pooling="mean", input=TEXT, training={"lr": 0.01})
    rng = np.random.default_rng(2)
    x, lengths = padded_batch(spec, lengths=rng.integers(1, 8, 24), seed=2)
    data = {"x": x, "lengths": lengths, "y": rng.integers(0, 4, 24)}
    start = ref.init_params(spec, seed=5)
    fitters = {fw: get_backend(fw).Fitter(spec, WorkerInfo(0, 1, 1, False)) for fw in FRAMEWORKS}
    for f in fitters.values():
        f.set_weights(start)
        f.train_epoch(0, batches(data, np.arange(24), 8, "classify"))
    got = {fw: f.get_weights() for fw, f in fitters.items()}
    assert max(np.abs(got["torch"][k] - start[k]).max() for k in start) > 1e-3
    assert max(np.abs(got["torch"][k] - got["tensorflow"][k]).max() for k in start) < 1e-4  # the same gradients
    state = {"kind": "sequences", "task": "classify", "input_type": "text"}
    for fw in FRAMEWORKS:
        path = bundle.save(tmp_path / fw, spec, got[fw], state, {})
        want = ref.forward(spec, got[fw], x, lengths)
        for runtime in (*FRAMEWORKS, "numpy", "onnx"):
            np.testing.assert_allclose(cf.load(path, framework=runtime).outputs(x, lengths), want, atol=ATOL, rtol=0,
                                       err_msg=f"{fw} bundle in {runtime}")


def test_spec_refuses_pooling_on_other_tasks_and_keeps_old_specs_unchanged():
    for task in ("tag", "forecast", "seq2seq", "anomaly", "transcribe"):
        with pytest.raises(SpecError, match=r"pooling: only for tasks \['classify', 'regress'\]"):
            cf.ModelSpec(task=task, pooling="mean")
    with pytest.raises(SpecError, match="pooling"):
        cf.ModelSpec(pooling="sum")
    assert "pooling" not in cf.ModelSpec().model_dump() and "pooling" not in cf.ModelSpec().to_yaml(full=True)
    spec = cf.ModelSpec(pooling="max")
    assert cf.ModelSpec.from_json(spec.to_json()) == spec and "pooling: max" in spec.to_yaml()


def test_sessions_and_single_step_graphs_are_refused(tmp_path):
    from cellforge import bundle
    from cellforge.export import export
    from cellforge.serving.config import DeployConfig
    from cellforge.serving.engine import Engine

    spec = make_spec("lstm", 1, False, "classify", pooling="mean")
    params = ref.init_params(spec)
    with pytest.raises(ValueError, match="pooling 'mean' .* cannot be streamed"):
        ref.step(spec, params, padded_batch(spec)[0])
    with pytest.raises(ValueError, match="pooling 'mean' cannot be exported as a single-step graph"):
        step_graph(spec, params)
    path = bundle.save(tmp_path / "b", spec, params, {"kind": "sequences", "task": "classify", "input_type": "numeric",
                                                       "classes": [0, 1, 2, 3]}, {})
    with pytest.raises(SpecError, match=r"step: a model with pooling 'mean'"):
        export(path, tmp_path / "m.onnx", step=True)
    assert export(path, tmp_path / "m.onnx")["model"].exists()  # the whole-sequence graph
    engine = Engine(DeployConfig(bundle=str(path), name="m", runtime="numpy"))
    assert not engine.streams and "pooling 'mean'" in engine.no_sessions
