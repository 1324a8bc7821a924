"""seq2seq parity: teacher-forced logits equal in numpy (the reference), torch and Keras through the
canonical weights, for every built-in cell x attention x 1-2 layers x bidirectional encoder.

Same legs as ``test_parity``: canonical weights loaded into each framework give numpy's logits,
and each framework's own randomised weights, read back as canonical, give its logits in numpy.
Inputs are padded with garbage past each sequence's length (it must not matter).
"""

import itertools

import numpy as np
import pytest
from test_parity import ATOL, randomize

import cellforge as cf
from cellforge.backends.keras import seq2seq as keras_s2s
from cellforge.backends.network import param_shapes
from cellforge.backends.numpy import init_params
from cellforge.backends.numpy import seq2seq as ref
from cellforge.backends.torch import seq2seq as torch_s2s

BACKENDS = {"torch": torch_s2s, "tensorflow": keras_s2s}
LENGTHS = np.array([4, 1, 3, 4])


def make_spec(cell="gru", layers=1, bidirectional=False, attention="additive", **extra):
    extra.setdefault("input", {"type": "text", "vocab_size": 13, "embedding_dim": 4})
    extra.setdefault("target", {"vocab_size": 11, "embedding_dim": 3})
    if attention == "dot":  # dot needs a decoder as wide as the memory; bidirectional makes it wider
        extra.setdefault("decoder", {"hidden_size": 5 * (1 + bidirectional)})
    return cf.ModelSpec(task="seq2seq", cell=cell, hidden_size=5, num_layers=layers, bidirectional=bidirectional,
                        attention=attention, **extra)


def batch(spec, lengths=LENGTHS, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    width = int(lengths.max())
    if spec.input.type == "text":
        x = rng.integers(0, spec.input.vocab_size, (len(lengths), width))
    else:
        x = rng.normal(size=(len(lengths), width, spec.input.num_features)).astype(np.float32)
        x[np.arange(width)[None, :] >= lengths[:, None]] = 1e3  # padding garbage: must be ignored
    return x, lengths, rng.integers(0, spec.target.vocab_size, (len(lengths), steps))


def check(spec, x, lengths, y_in, both_ways: bool = True):
    """``both_ways``: also read each framework's own random weights back as canonical (Keras runs
    eagerly here, about 0.5 s a call on 2 cores, so the full grid checks one way and a subset both)."""
    params = init_params(spec, seed=3)
    want = ref.logits(ref.build(spec, params), x, lengths, y_in)
    assert want.shape == (len(x), y_in.shape[1], spec.target.vocab_size) and np.isfinite(want).all()
    for fw, backend in BACKENDS.items():
        got = backend.logits(backend.build(spec, params), x, lengths, y_in)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"canonical -> {fw}")
        if not both_ways:
            continue
        net = randomize(fw, backend.build(spec))
        canonical = backend.to_canonical(net)
        assert {k: v.shape for k, v in canonical.items()} == param_shapes(spec)
        np.testing.assert_allclose(ref.logits(ref.build(spec, canonical), x, lengths, y_in),
                                   backend.logits(net, x, lengths, y_in), atol=ATOL, rtol=0,
                                   err_msg=f"{fw} -> canonical -> numpy")


@pytest.mark.parametrize("cell,attention,layers,bidirectional",
                         list(itertools.product(["rnn", "lstm", "gru"], ["none", "additive", "dot", "general"],
                                                [1, 2], [False, True])))
def test_teacher_forced_logits_equal_reference(cell, attention, layers, bidirectional):
    spec = make_spec(cell, layers, bidirectional, attention)
    check(spec, *batch(spec), both_ways=layers == 2 and bidirectional)


@pytest.mark.parametrize("extra", [
    {"decoder": {"cell": "lstm", "hidden_size": 6, "num_layers": 2, "bridge": "zero"}},  # a decoder of its own
    {"decoder": {"input_feeding": False}},
    {"input": {"num_features": 3}},  # numeric input sequences
], ids=["own-decoder", "no-input-feeding", "numeric-input"])
def test_decoder_variants_equal_reference(extra):
    spec = make_spec("gru", 2, True, "general", **extra)
    check(spec, *batch(spec))


def test_unpadded_batch_and_attention_ignores_padding():
    spec = make_spec("lstm", 1, True, "additive")
    x, lengths, y_in = batch(spec, lengths=np.full(3, 4))
    check(spec, x, lengths, y_in)  # every sequence full: the frameworks skip masking on this path
    # a padded sequence gives the same logits as the same sequence alone, unpadded
    x, lengths, y_in = batch(spec)
    net = ref.build(spec, init_params(spec))
    full = ref.logits(net, x, lengths, y_in)
    alone = ref.logits(net, x[2:3, :3], lengths[2:3], y_in[2:3])
    np.testing.assert_allclose(full[2:3], alone, atol=1e-6)
    _, weights = ref.logits(net, x, lengths, y_in, return_attention=True)
    assert weights.shape == (4, 3, 4) and np.allclose(weights.sum(-1), 1)
    assert (weights[1, :, 1:] == 0).all() and (weights[2, :, 3:] == 0).all()


def test_wrong_decoder_weight_is_refused_with_its_name():
    spec = make_spec()
    params = init_params(spec)
    params["attention.w_q"] = params["attention.w_q"][:, :2]
    for backend in BACKENDS.values():
        with pytest.raises(ValueError, match=r"attention\.w_q: expected shape"):
            backend.build(spec, params)


def test_an_attention_of_your_own_runs_in_every_framework():
    """Written once with the ops (as in a notebook) and registered by name, like a cell."""
    import math

    from cellforge.attention import ATTENTIONS

    def scaled_keys(op, p, memory):
        return op.linear(memory, p["w"])

    def scaled_score(op, p, keys, q):  # scaled bilinear: (W m) . q / sqrt(Q)
        return op.squeeze(op.matmul(keys, op.expand(q, -1)), -1) * (1.0 / math.sqrt(q.shape[-1]))

    cf.register_attention(cf.Attention("scaled", scaled_keys, scaled_score, params={"w": ("Q", "K")}))
    try:
        spec = make_spec("gru", 1, True, "scaled")
        assert param_shapes(spec)["attention.w"] == (5, 10)
        check(spec, *batch(spec))
    finally:
        ATTENTIONS.pop("scaled")
