"""The seq2seq spec: defaults filled in, the decoder defaulting to the encoder, round trips, and
every invalid combination reported with its field path."""

import pytest

import cellforge as cf
from cellforge.backends.network import param_shapes
from cellforge.errors import SpecError
from cellforge.spec import ModelSpec


def paths(**fields) -> dict[str, str]:
    with pytest.raises(SpecError) as e:
        ModelSpec(**fields)
    return dict(e.value.problems)


def test_defaults_and_decoder_follows_the_encoder():
    spec = ModelSpec(task="seq2seq", cell="gru", hidden_size=16, num_layers=2, bidirectional=True)
    assert spec.attention == "additive" and spec.decoder.bridge == "linear" and spec.input_feeding
    assert (spec.decoder_cell, spec.decoder_hidden, spec.decoder_layers, spec.memory_size) == ("gru", 16, 2, 32)
    assert spec.decode.strategy == "greedy" and spec.decode.width == 1
    assert spec.target.tokenizer == "char" and spec.target.max_length == 64
    # an unset decoder size follows the encoder's when it is changed later (a sweep over hidden_size)
    assert spec.updated(hidden_size=8).decoder_hidden == 8
    beam = spec.updated(**{"decode.strategy": "beam"}).decode
    assert (beam.width, beam.alpha) == (5, 1.0)
    assert not ModelSpec(task="seq2seq", attention="none").input_feeding


def test_round_trips_and_other_tasks_stay_free_of_seq2seq_fields():
    spec = ModelSpec(task="seq2seq", cell="lstm", attention="general", input={"type": "text"},
                     decoder={"cell": "gru", "hidden_size": 12, "num_layers": 1, "bridge": "zero"},
                     target={"tokenizer": "word", "max_length": 20, "vocab_size": 30},
                     decode={"strategy": "beam", "beam_width": 3, "length_penalty": 0.6},
                     training={"teacher_forcing": 0.5})
    assert ModelSpec.from_json(spec.to_json()) == spec and ModelSpec.from_yaml(spec.to_yaml()) == spec
    classify = ModelSpec()
    assert classify.attention is None and classify.decode is None
    assert ModelSpec.from_json(classify.to_json()) == classify


def test_seq2seq_fields_on_another_task_are_named():
    got = paths(task="classify", attention="dot", target={"max_length": 5}, decode={}, decoder={},
                training={"teacher_forcing": 0.5})
    assert set(got) == {"attention", "target", "decode", "decoder", "training.teacher_forcing"}
    assert got["attention"] == "only for task 'seq2seq', got task 'classify'"


def test_unknown_names_list_the_known_ones():
    got = paths(task="seq2seq", attention="multihead", decoder={"cell": "lstmm"},
                decode={"strategy": "sample"}, target={"tokenizer": "bpe"})
    assert set(got) == {"attention", "decoder.cell", "decode.strategy", "target.tokenizer"}
    assert "known attentions: ['additive', 'dot', 'general', 'none']" in got["attention"]
    assert "known cells: ['gru', 'lstm', 'rnn']" in got["decoder.cell"]


def test_invalid_combinations_name_their_fields():
    # dot attention compares decoder state and memory, so their widths must match
    got = paths(task="seq2seq", hidden_size=8, bidirectional=True, attention="dot", num_classes=3,
                decoder={"input_feeding": True})
    assert set(got) == {"attention", "num_classes"}
    assert "decoder.hidden_size (8) must equal hidden_size x directions (16)" in got["attention"]
    assert ModelSpec(task="seq2seq", hidden_size=8, bidirectional=True, attention="dot",
                     decoder={"hidden_size": 16}).decoder_hidden == 16
    got = paths(task="seq2seq", attention="none", decoder={"input_feeding": True})
    assert "needs attention" in got["decoder.input_feeding"]
    # beam-only settings on greedy decoding: reported with the other fields' problems
    got = paths(task="seq2seq", hidden_size=0, decode={"beam_width": 4, "length_penalty": 0.6},
                training={"teacher_forcing": 1.5}, target={"vocab_size": 3, "max_length": 0})
    assert set(got) == {"hidden_size", "decode.beam_width", "decode.length_penalty", "target.max_length",
                        "training.teacher_forcing", "target.vocab_size"}
    assert got["decode.beam_width"] == "only used by strategy 'beam', got strategy 'greedy'"


def test_canonical_shapes_of_the_decoder():
    spec = cf.ModelSpec(task="seq2seq", cell="lstm", hidden_size=4, bidirectional=True, input={"num_features": 3},
                        decoder={"cell": "gru", "hidden_size": 6}, target={"vocab_size": 10, "embedding_dim": 5})
    shapes = param_shapes(spec)
    assert "head.weight" not in shapes and shapes["rnn.0.bwd.w_ih"] == (16, 3)
    assert shapes["bridge.0.h.weight"] == (6, 8) and "bridge.0.c.weight" not in shapes  # a GRU has no c
    assert shapes["decoder.rnn.0.w_ih"] == (18, 5 + 6)  # embedding + the fed-back attentional vector
    assert shapes["attention.w_k"] == (6, 8) and shapes["attention.v"] == (1, 6)
    assert shapes["decoder.combine.weight"] == (6, 6 + 8) and shapes["decoder.out.weight"] == (10, 6)
    plain = param_shapes(spec.updated(attention="none", **{"decoder.bridge": "zero"}))
    assert not any(k.startswith(("attention.", "bridge.", "decoder.combine")) for k in plain)
    assert plain["decoder.rnn.0.w_ih"] == (18, 5)
    with pytest.raises(ValueError, match="target.vocab_size is not set"):
        param_shapes(spec.updated(**{"target.vocab_size": None}))


def test_fit_refuses_seq2seq_data_that_is_not_text_pairs_before_ray_starts():
    """seq2seq trains now (tests/integration/test_seq2seq.py); its data is checked before Ray starts."""
    import cellforge as cf

    spec = cf.ModelSpec(task="seq2seq", input={"type": "text", "tokenizer": "char"})
    with pytest.raises(cf.SpecError, match="seq2seq targets must be strings"):
        cf.fit(spec, (["one", "two", "three", "four"], [1, 2, 3, 4]))
