"""``input.dropout`` (on the embedded tokens or input features) and ``head_dropout`` (on what the head
reads): in training only, in both frameworks; at inference the network is the numpy reference's."""

import json

import numpy as np
import pytest
import torch
from test_parity import ATOL, FRAMEWORKS, check_parity, make_spec, padded_batch

import cellforge as cf
from cellforge.backends import get_backend
from cellforge.backends import numpy as ref
from cellforge.errors import SpecError

TEXT = {"type": "text", "vocab_size": 30, "embedding_dim": 4, "dropout": 0.5}


def _train_mode(fw, net, x, lengths):
    if fw == "torch":
        net.train()
        with torch.no_grad():
            return net(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    return net(x, lengths, training=True).numpy()


@pytest.mark.parametrize("which", ["input", "head", "both"])
def test_dropout_acts_in_training_only(which):
    extra = {"head_dropout": 0.5} if which != "input" else {}
    inp = TEXT if which != "head" else {**TEXT, "dropout": 0.0}
    spec = make_spec("gru", 1, False, "classify", input=inp, **extra)
    x, lengths = padded_batch(spec)
    check_parity(spec, x, lengths, compiled=False, cross=False)  # inference: no dropout, the reference
    for fw in FRAMEWORKS:
        net = get_backend(fw).build(spec, ref.init_params(spec))
        a, b = (_train_mode(fw, net, x, lengths) for _ in range(2))
        assert np.abs(a - b).max() > 1e-3, fw  # a fresh mask each call
        np.testing.assert_allclose(get_backend(fw).predict(net, x, lengths),
                                   ref.forward(spec, ref.init_params(spec), x, lengths), atol=ATOL, rtol=0)


def test_specs_without_them_are_unchanged_and_a_network_without_a_head_refuses_head_dropout():
    spec = cf.ModelSpec()
    assert "head_dropout" not in json.loads(spec.to_json()) and "dropout" not in json.loads(spec.to_json())["input"]
    on = cf.ModelSpec(head_dropout=0.3, input={"type": "text", "dropout": 0.2})
    assert cf.ModelSpec.from_json(on.to_json()) == on and "head_dropout: 0.3" in on.to_yaml()
    with pytest.raises(SpecError, match="head_dropout: this network has no head"):
        cf.ModelSpec(task="seq2seq", head_dropout=0.5)
    with pytest.raises(SpecError, match="head_dropout: this network has no head"):
        cf.ModelSpec(task="anomaly", anomaly={"method": "reconstruct"}, head_dropout=0.5)
    with pytest.raises(SpecError, match="input.dropout"):
        cf.ModelSpec(input={"dropout": 1.0})
