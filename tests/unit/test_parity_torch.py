"""PyTorch's fused nn.RNN/LSTM/GRU equal the numpy reference cells through the converted weights."""

import itertools

import numpy as np
import pytest

import cellforge as cf
from cellforge.backends import numpy_backend as ref
from cellforge.backends import torch_backend as tb

CASES = list(itertools.product(["rnn", "lstm", "gru"], [1, 2, 3], [False, True], ["classify", "forecast", "tag"]))


@pytest.mark.parametrize("cell,layers,bidirectional,task", CASES)
def test_torch_equals_reference(cell, layers, bidirectional, task):
    spec = cf.ModelSpec(task=task, cell=cell, num_layers=layers, bidirectional=bidirectional, hidden_size=12,
                        num_classes=4, horizon=2, input={"num_features": 5})
    params = ref.init_params(spec, seed=layers)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 9, 5)).astype(np.float32)
    lengths = np.array([9, 1, 4, 9, 6, 2, 8])  # padded, variable length
    want = ref.forward(spec, params, x, lengths)
    net = tb.build(spec, params)
    got = tb.predict(net, x, lengths)
    if task == "tag":  # padded steps are not outputs
        valid = np.arange(9)[None, :] < lengths[:, None]
        want, got = want[valid], got[valid]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    back = tb.to_canonical(net)
    assert set(back) == set(params) and all(np.array_equal(back[k], params[k]) for k in params)


def test_padding_does_not_change_a_sequence_output():
    spec = cf.ModelSpec(task="classify", cell="lstm", bidirectional=True, hidden_size=8, num_classes=3,
                        input={"num_features": 2})
    params = ref.init_params(spec)
    x = np.random.default_rng(1).normal(size=(1, 5, 2)).astype(np.float32)
    padded = np.concatenate([x, np.full((1, 4, 2), 99.0, np.float32)], 1)
    net = tb.build(spec, params)
    np.testing.assert_allclose(tb.predict(net, padded, np.array([5])), tb.predict(net, x, np.array([5])), atol=1e-6)


def test_text_embedding_matches_reference():
    spec = cf.ModelSpec(task="classify", cell="gru", hidden_size=8, num_classes=2,
                        input={"type": "text", "vocab_size": 20, "embedding_dim": 6})
    params = ref.init_params(spec)
    x = np.array([[3, 4, 5, 0], [7, 1, 0, 0]])
    lengths = np.array([3, 2])
    np.testing.assert_allclose(tb.predict(tb.build(spec, params), x, lengths), ref.forward(spec, params, x, lengths),
                               atol=1e-5)


def test_streaming_steps_equal_whole_sequence():
    spec = cf.ModelSpec(task="forecast", cell="lstm", num_layers=2, hidden_size=8, input={"num_features": 1})
    params = ref.init_params(spec)
    x = np.random.default_rng(2).normal(size=(2, 6, 1)).astype(np.float32)
    state, outs = None, []
    for t in range(6):
        out, state = ref.step(spec, params, x[:, t: t + 1], state)
        outs.append(out[:, -1])
    whole = ref.forward(spec, params, x, np.array([6, 6]))
    np.testing.assert_allclose(outs[-1], whole, atol=1e-6)
