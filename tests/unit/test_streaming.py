"""Streaming: stepping a unidirectional network through time, carrying its state, equals running the
whole sequence (the reference the Serve sessions are held to). Framework parity lives in test_parity.py."""

import numpy as np

import cellforge as cf
from cellforge.backends import numpy as ref


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
