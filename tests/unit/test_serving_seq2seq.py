"""The serving engine with a seq2seq bundle, without Serve: requests decoded together in one padded
batch answer what ``cf.load(bundle).predict`` answers for each alone (greedy and beam); a stream's
pieces join to the same text; bad inputs are refused naming the field. (Over real HTTP:
tests/integration/test_seq2seq_serving.py.)"""

import numpy as np
import pytest

import cellforge as cf
from cellforge import bundle
from cellforge.backends import numpy as ref
from cellforge.data import prepare
from cellforge.serving.config import DeployConfig
from cellforge.serving.engine import Engine
from cellforge.serving.schema import InputError

TEXTS = ["four thousand and twelve", "seven", "ninety-nine", "one hundred and one"]


@pytest.fixture(scope="module", params=["char", "word"])
def s2s(request, tmp_path_factory):
    """Random weights (serving's arithmetic needs no training), decoding beam of width 3."""
    tok = request.param
    spec = cf.ModelSpec(task="seq2seq", cell="gru", hidden_size=12, attention="general",
                        input={"type": "text", "tokenizer": "char", "embedding_dim": 6, "max_length": 40},
                        target={"tokenizer": tok, "max_length": 12, "embedding_dim": 6},
                        decode={"strategy": "beam", "beam_width": 3})
    spec, prepared = prepare(spec, cf.datasets.load("numbers", high=300))
    path = bundle.save(tmp_path_factory.mktemp("b") / tok, spec, ref.init_params(spec, 7),
                       prepared.preprocessor.state, {})
    return path, Engine(DeployConfig(bundle=str(path), name="fr", max_length=30))


def answer(engine, texts, options):
    x, lengths = engine.prepare(texts, options)
    return x, lengths, (x, lengths, engine.translator.decoding(options), bool(options.get("return_attention")))


@pytest.mark.parametrize("options", [{}, {"strategy": "greedy"}, {"strategy": "beam", "beam_width": 2}])
def test_requests_batched_together_answer_as_each_alone(s2s, options):
    path, engine = s2s
    model = cf.load(path)
    want = model.predict(TEXTS, strategy=options.get("strategy"), beam_width=options.get("beam_width"))
    requests = [TEXTS[:1], TEXTS[1:3], TEXTS[3:]]
    items = [answer(engine, r, options) for r in requests]
    batched = engine.run([it[2] for it in items])  # the three requests in one padded batch
    got = [t for (x, n, _), rows, r in zip(items, batched, requests) for t in engine.respond(rows, n, r)["texts"]]
    assert got == want
    alone = [engine.respond(engine.run([it[2]])[0], it[1], r)["texts"] for it, r in zip(items, requests)]
    assert sum(alone, []) == want


def test_mixed_decodings_in_one_batch_and_attention(s2s):
    path, engine = s2s
    model = cf.load(path)
    greedy, beam = answer(engine, TEXTS[:2], {"strategy": "greedy", "return_attention": True}), answer(engine, TEXTS[2:], {})
    rows = engine.run([greedy[2], beam[2]])
    out = engine.respond(rows[0], greedy[1], TEXTS[:2], return_attention=True)
    ref_out = model.predict(TEXTS[:2], strategy="greedy", return_attention=True)
    assert out["texts"] == [r["text"] for r in ref_out]
    for a, r in zip(out["attention"], ref_out):
        assert a["input_tokens"] == r["input_tokens"] and a["output_tokens"] == r["output_tokens"]
        np.testing.assert_allclose(a["weights"], r["attention"], atol=1e-6)
        np.testing.assert_allclose(np.sum(a["weights"], 1), 1.0, atol=1e-5)
    assert engine.respond(rows[1], beam[1], TEXTS[2:])["texts"] == model.predict(TEXTS[2:])


def test_stream_pieces_join_to_the_greedy_text(s2s):
    path, engine = s2s
    x, lengths = engine.prepare(TEXTS, {"strategy": "greedy", "stream": True})
    events = list(engine.translator.stream(TEXTS, x, lengths, False))
    assert events[-1]["done"] and events[-1]["texts"] == cf.load(path).predict(TEXTS, strategy="greedy")
    joined = ["".join(e["token"] for e in events[:-1] if e["index"] == i) for i in range(len(TEXTS))]
    assert joined == events[-1]["texts"]


def test_bad_inputs_name_the_field(s2s):
    _, engine = s2s
    cases = [(["one", ""], {}, "inputs.1"), (["one", 3], {}, "inputs.1"), ([], {}, "inputs"),
             (["x" * 31], {}, "inputs.0"), (["one"], {"strategy": "greedy", "beam_width": 2}, "beam_width"),
             (["one"], {"stream": True}, "stream")]  # the spec decodes with beam: nothing to stream
    for inputs, options, field in cases:
        with pytest.raises(InputError) as e:
            engine.prepare(inputs, options)
        assert field in [p.field for p in e.value.problems], (inputs, options, e.value.problems)
    info = engine.info("fr")
    assert info["task"] == "seq2seq" and info["input"]["max_length"] == 30 and not info["sessions"]
    assert info["output"]["decode"] == {"strategy": "beam", "beam_width": 3}
