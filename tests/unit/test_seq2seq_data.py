"""seq2seq data: the numbers and dates data sets, splits that hold out numbers and dates, and the
target vocabulary in the preprocessing state (plain JSON)."""

import json

import numpy as np
import pytest

import cellforge as cf
from cellforge.data import prepare, targets
from cellforge.errors import SpecError
from cellforge.seq2seq import EOS

SPEC = {"task": "seq2seq", "cell": "gru", "input": {"type": "text", "tokenizer": "char"}}


def test_numbers_held_out_are_never_seen_in_training():
    data = cf.datasets.load("numbers", source="en", target="fr", low=0, high=300)
    assert data.x[71] == "seventy-one" and data.y[71] == "soixante et onze"
    spec, p = prepare(cf.ModelSpec(**SPEC, target={"tokenizer": "word"}), data)
    train, test = p.splits["train"], p.splits["test"]
    assert len(test["y"]) == 45 and spec.target.vocab_size == len(p.preprocessor.state["target"]["vocab"])
    # every training target decodes back to its text; the test split has numbers of its own
    state = p.preprocessor.state["target"]
    texts = {targets.decode(state, row) for row in train["y"]}
    assert texts <= set(data.y) and len(texts) == len(train["y"])
    assert not texts & {targets.decode(state, row) for row in test["y"]}
    json.dumps(p.preprocessor.state)  # the whole state is plain JSON: a bundle stores it without pickle


def test_dates_are_held_out_by_date_in_every_spelling():
    data = cf.datasets.load("dates", n=40, locales=("en_US", "fr_FR", "de_DE"))
    assert len(data.x) > 40 * 8 and all(len(y) == 10 and y[4] == "-" for y in data.y)
    assert "jeudi 3 mars 2022" in cf.datasets.load("dates", n=1, start="2022-03-03", end="2022-03-03").x
    spec, p = prepare(cf.ModelSpec(**SPEC), data)
    state = p.preprocessor.state["target"]
    dates = {k: {targets.decode(state, row) for row in p.splits[k]["y"]} for k in ("train", "val", "test")}
    assert dates["test"] and not dates["test"] & (dates["train"] | dates["val"]) and not dates["train"] & dates["val"]
    assert sum(len(v) for v in dates.values()) == 40
    assert set(state["vocab"][4:]) == set("0123456789-")  # ISO dates need no more


def test_targets_are_cut_padded_and_unknown_tokens_kept():
    state = targets.fit(cf.ModelSpec(task="seq2seq", target={"max_length": 4}).target, ["abc", "ab"])
    y = targets.encode(state, ["abcabc", "a", "az"])
    assert y.tolist() == [[4, 5, 6, EOS], [4, EOS, -100, -100], [4, 1, EOS, -100]]
    assert targets.decode(state, y[2]) == "a<unk>" and targets.decode(state, [4, 0, 2, 5]) == "ab"
    y_in = targets.teacher_inputs(y)
    assert y_in.tolist() == [[2, 4, 5, 6], [2, 4, 0, 0], [2, 4, 1, 0]]


def test_bad_data_is_named():
    with pytest.raises(SpecError, match="seq2seq targets must be strings"):
        prepare(cf.ModelSpec(**SPEC), (["a", "b", "c", "d", "e"], [1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="numbers: expected 0 <= low < high"):
        cf.datasets.load("numbers", low=5, high=5)
    with pytest.raises(ValueError, match="dates: expected 0 < n <= 1"):
        cf.datasets.load("dates", n=2, start="2022-03-03", end="2022-03-03")
    with pytest.raises(ValueError, match="numbers: "):
        cf.datasets.load("numbers", target="xx")


def test_the_encoded_targets_train_the_decoder_they_were_made_for():
    from cellforge.backends.numpy import init_params
    from cellforge.backends.numpy import seq2seq as ref

    data = cf.datasets.load("numbers", low=10, high=40)
    spec, p = prepare(cf.ModelSpec(**SPEC, hidden_size=8, training={"val_fraction": 0, "test_fraction": 0.2}), data)
    split = p.splits["train"]
    net = ref.build(spec, init_params(spec))
    out = ref.logits(net, split["x"], split["lengths"], targets.teacher_inputs(split["y"]))
    assert out.shape == (*split["y"].shape, spec.target.vocab_size) and np.isfinite(out).all()
