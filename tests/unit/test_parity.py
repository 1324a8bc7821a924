"""The one parity harness: cells x layers 1-3 x directions x heads, numpy vs torch vs tensorflow.

Both weight directions: canonical weights loaded into each framework give the numpy outputs,
and each framework's own (randomised) weights, converted to canonical, give the same outputs in
numpy and in the other framework. Batches are padded, variable-length, with garbage in the
padding (which must not matter).
"""

import itertools

import numpy as np
import pytest
import torch

import cellforge as cf
from cellforge.backends import get_backend
from cellforge.backends import numpy as ref
from cellforge.backends.network import param_shapes

FRAMEWORKS = ("torch", "tensorflow")
HEADS = {"classify": {"task": "classify", "num_classes": 4},
         "forecast": {"task": "forecast", "horizon": 2, "num_outputs": 2},  # the regress head, 2x2 wide
         "tag": {"task": "tag", "num_classes": 3}}
ATOL = 1e-5
LENGTHS = np.array([6, 1, 4, 6, 3, 2])  # padded, variable length


def make_spec(cell: str, layers: int = 1, bidirectional: bool = False, head: str = "classify", **extra):
    inp = extra.pop("input", {"num_features": 5})
    return cf.ModelSpec(cell=cell, num_layers=layers, bidirectional=bidirectional, hidden_size=7, input=inp,
                        **HEADS[head], **extra)


def padded_batch(spec, lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    steps = int(lengths.max())
    if spec.input.type == "text":
        x = rng.integers(0, spec.input.vocab_size, (len(lengths), steps))
    else:
        x = rng.normal(size=(len(lengths), steps, spec.input.num_features)).astype(np.float32)
        x[np.arange(steps)[None, :] >= lengths[:, None]] = 1e3  # padding garbage: must be ignored
    return x, lengths


def run(framework: str, net, x, lengths, compiled: bool = True) -> np.ndarray:
    if framework == "tensorflow" and not compiled:  # eager: the same Net.call, without tracing (faster here)
        return net(x, lengths).numpy()
    return get_backend(framework).predict(net, x, lengths)


def randomize(framework: str, net, seed: int = 1):
    """Give a framework's own net non-trivial weights in its own layout (biases included)."""
    rng = np.random.default_rng(seed)
    if framework == "torch":
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, tuple(p.shape)).astype(np.float32)))
    else:
        for v in net.weights:
            v.assign(rng.uniform(-0.5, 0.5, tuple(v.shape)).astype(np.float32))
    return net


def check_parity(spec, x, lengths, compiled: bool = True, cross: bool = True):
    """Assert numpy == torch == tensorflow through canonical weights, in both directions.

    ``compiled``: run TensorFlow through ``predict`` (tf.function) rather than eagerly;
    ``cross``: also load each framework's converted weights into the other framework.
    """
    params = ref.init_params(spec, seed=spec.num_layers)
    want = ref.forward(spec, params, x, lengths)
    for fw in FRAMEWORKS:  # canonical -> framework
        got = run(fw, get_backend(fw).build(spec, params), x, lengths, compiled)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"canonical -> {fw}")
    for fw, other in (FRAMEWORKS, FRAMEWORKS[::-1]):  # framework -> canonical -> numpy and the other one
        net = randomize(fw, get_backend(fw).build(spec))
        canonical = get_backend(fw).to_canonical(net)
        assert {k: v.shape for k, v in canonical.items()} == param_shapes(spec)
        got = run(fw, net, x, lengths, compiled)
        np.testing.assert_allclose(ref.forward(spec, canonical, x, lengths), got, atol=ATOL, rtol=0,
                                   err_msg=f"{fw} -> canonical -> numpy")
        if cross:
            np.testing.assert_allclose(run(other, get_backend(other).build(spec, canonical), x, lengths, compiled),
                                       got, atol=ATOL, rtol=0, err_msg=f"{fw} -> canonical -> {other}")


@pytest.mark.parametrize("cell,layers,bidirectional,head",
                         list(itertools.product(["rnn", "lstm", "gru"], [1, 2, 3], [False, True], HEADS)))
def test_frameworks_equal_reference(cell, layers, bidirectional, head):
    spec = make_spec(cell, layers, bidirectional, head)
    # eager and without the cross leg to keep 54 cases fast; the tests below run compiled and cross
    check_parity(spec, *padded_batch(spec), compiled=False, cross=False)


@pytest.mark.parametrize("cell,bidirectional", list(itertools.product(["rnn", "lstm", "gru"], [False, True])))
def test_unpadded_batches_and_text_input(cell, bidirectional):
    # every sequence full length: the frameworks skip masking (packing) on this path
    spec = make_spec(cell, 2, bidirectional, "tag")
    check_parity(spec, *padded_batch(spec, lengths=np.full(4, 6)))
    text = make_spec(cell, 1, bidirectional, "classify", input={"type": "text", "vocab_size": 30, "embedding_dim": 4})
    check_parity(text, *padded_batch(text))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_real_digits_cut_to_variable_length(cell):
    from sklearn.datasets import load_digits

    images = (load_digits().images[:32] / 16.0).astype(np.float32)  # 8 steps of 8 pixels
    lengths = np.random.default_rng(0).integers(1, 9, 32)
    images[np.arange(8)[None, :] >= lengths[:, None]] = 0.0
    check_parity(make_spec(cell, 2, True, "classify", input={"num_features": 8}), images, lengths)


def test_wrong_weight_shape_is_refused_with_its_name():
    spec = make_spec("gru")
    params = ref.init_params(spec)
    params["rnn.0.fwd.w_hh"] = params["rnn.0.fwd.w_hh"][:, :3]
    for fw in FRAMEWORKS:
        with pytest.raises(ValueError, match=r"rnn\.0\.fwd\.w_hh: expected shape"):
            get_backend(fw).build(spec, params)


# training: the same steps in both frameworks ------------------------------------------
def _regress_data(spec, n=24, seed=2):
    rng = np.random.default_rng(seed)
    x, lengths = padded_batch(spec, lengths=rng.integers(1, 8, n), seed=seed)
    return {"x": x, "lengths": lengths, "y": rng.normal(size=(n, spec.output_size)).astype(np.float32)}


@pytest.mark.parametrize("training", [
    {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.01, "clip_norm": 0.5},
    {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "l1": 1e-3},
    {"optimizer": "rmsprop", "lr": 0.01, "momentum": 0.5, "l2": 1e-2},
])
def test_training_steps_match_torch_and_trained_bundles_cross(training, tmp_path):
    from cellforge import bundle
    from cellforge.train.loop import batches
    from cellforge.train.worker import WorkerInfo

    # GRU: Keras keeps both of its biases, so torch's parameters map one to one
    spec = make_spec("gru", 1, True, "forecast", training=training)
    data, start = _regress_data(spec), ref.init_params(spec, seed=5)
    fitters = {fw: get_backend(fw).Fitter(spec, WorkerInfo(0, 1, 1, False)) for fw in FRAMEWORKS}
    for f in fitters.values():
        f.set_weights(start)
        f.train_epoch(0, batches(data, np.arange(24), 8))
        f.train_epoch(1, batches(data, np.arange(24)[::-1], 8))
    got = {fw: f.get_weights() for fw, f in fitters.items()}
    moved = max(np.abs(got["torch"][k] - start[k]).max() for k in start)
    diff = max(np.abs(got["torch"][k] - got["tensorflow"][k]).max() for k in start)
    assert moved > 1e-2 and diff < 1e-4, (moved, diff)  # torch update rules, not just similar ones
    x, lengths = data["x"], data["lengths"]
    for fw, other in (FRAMEWORKS, FRAMEWORKS[::-1]):  # a bundle trained in one framework, loaded in the other
        path = bundle.save(tmp_path / fw, spec, got[fw], {"kind": "sequences", "task": "forecast"}, {})
        np.testing.assert_allclose(cf.load(path, framework=other).outputs(x, lengths),
                                   fitters[fw].predict(x, lengths), atol=ATOL, rtol=0)


def test_keras_optimizer_state_resumes_exactly(tmp_path):
    from cellforge.train.loop import batches
    from cellforge.train.worker import WorkerInfo

    spec = make_spec("lstm", 1, False, "forecast", training={"optimizer": "adam", "lr": 0.01, "lr_schedule": "step",
                                                              "lr_step_size": 1})
    data = _regress_data(spec)
    Fitter = get_backend("tensorflow").Fitter
    one = Fitter(spec, WorkerInfo(0, 1, 1, False))
    one.train_epoch(0, batches(data, np.arange(24), 8))
    one.lr.end_epoch(None)
    one.save_state(tmp_path)
    two = Fitter(spec, WorkerInfo(0, 1, 1, False))
    two.set_weights(one.get_weights())
    two.load_state(tmp_path)
    assert two.lr.value == one.lr.value == 0.005
    for f in (one, two):
        f.train_epoch(1, batches(data, np.arange(24), 8))
    a, b = one.get_weights(), two.get_weights()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_keras_dropout_acts_between_layers_in_training_only():
    spec = make_spec("lstm", 2, False, "forecast", dropout=0.5)
    x, lengths = padded_batch(spec)
    net = get_backend("tensorflow").build(spec, ref.init_params(spec))
    np.testing.assert_allclose(run("tensorflow", net, x, lengths), ref.forward(spec, ref.init_params(spec), x, lengths),
                               atol=ATOL, rtol=0)
    a, b = (net(x, lengths, training=True).numpy() for _ in range(2))
    assert np.abs(a - b).max() > 1e-3
