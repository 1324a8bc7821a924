"""seq2seq on Ray Train in both frameworks: numbers in English words -> French words, trained on
2 workers with clipping, a cosine schedule and early stopping on ``val_chrf`` (BLEU stays 0 while outputs share no 4-gram with the truth, so it cannot rank early epochs); metrics over every
rank (token accuracy, exact match, BLEU and chrF by sacrebleu, ROUGE-L by rouge-score); bundles
that translate strings identically in every runtime, greedy and beam, with attention matrices.

The lean runs here (1,000 numbers, 4 epochs) prove learning, not the quality bar: the bar (numbers
below 10,000 never seen in training, exact match >= 0.95) is the ``slow`` test at the end."""

import _seq2seq_runs
import numpy as np
import pytest

import cellforge as cf

numbers_runs = _seq2seq_runs.numbers_runs  # a session fixture, shared by the seq2seq test modules
numbers_spec = _seq2seq_runs.numbers_spec

# Keras' lean run costs ~5 min on 2 cores (graph building on 2 workers): in make test-all. The torch
# bundle is still read by the Keras runtime below, and Keras' seq2seq network is held to numpy's by
# tests/unit/test_seq2seq_parity.py
FRAMEWORKS = ["torch", pytest.param("tensorflow", marks=pytest.mark.slow)]
TEXTS = ["four thousand and twelve", "seven hundred and one", "thirteen"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_seq2seq_learns_on_two_workers_with_metrics_over_all_ranks(numbers_runs, framework):
    result = numbers_runs(framework)
    hist = result.history_frame()
    print(hist.to_string())
    assert list(hist.index) == [1, 2, 3, 4]
    for key in ("val_loss", "val_token_accuracy", "val_exact_match", "val_bleu", "val_chrf", "val_rouge_l"):
        assert key in hist.columns and np.isfinite(hist[key]).all(), key
    # learning, shown by every metric: the teacher-forced loss halves, chrF climbs
    assert hist["val_loss"].iloc[-1] < hist["val_loss"].iloc[0] / 2
    assert hist["val_token_accuracy"].iloc[-1] > 0.7 and hist["val_chrf"].iloc[-1] > hist["val_chrf"].iloc[0] + 10
    # the replicas stayed in sync (DDP / one averaged Keras update)
    assert max(hist["rank_weight_spread"]) < 1e-5
    for key in ("test_loss", "test_token_accuracy", "test_exact_match", "test_bleu", "test_chrf", "test_rouge_l"):
        assert key in result.metrics
    assert result.metrics["test_chrf"] > 30
    ex = result.examples[0]
    assert isinstance(ex["prediction"], str) and isinstance(ex["truth"], str)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bundle_translates_strings_the_same_in_every_runtime(numbers_runs, framework):
    bundle = numbers_runs(framework).bundle
    models = {fw: cf.load(bundle, framework=fw) for fw in ("numpy", "torch", "tensorflow")}
    for strategy in ("greedy", "beam"):
        outs = {fw: m.predict(TEXTS, strategy=strategy) for fw, m in models.items()}
        assert all(isinstance(t, str) for t in outs["numpy"])
        assert outs["torch"] == outs["numpy"] and outs["tensorflow"] == outs["numpy"], strategy
    # the spec's decoding (beam, width 3) is the default; one row alone decodes as in a padded batch
    model = models[framework]
    assert model.predict(TEXTS) == model.predict(TEXTS, strategy="beam", beam_width=3)
    assert [model.predict([t])[0] for t in TEXTS] == model.predict(TEXTS)
    # attention: one (output tokens x input tokens) matrix each, rows are distributions
    for text, out in zip(TEXTS, model.predict(TEXTS, return_attention=True)):
        a = out["attention"]
        assert a.shape == (len(out["output_tokens"]), len(text)) and out["input_tokens"] == list(text)
        np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-5)
        assert out["text"] == model.predict([text])[0]


def test_bad_inputs_name_the_field(numbers_runs):
    model = cf.load(numbers_runs("torch").bundle)
    for bad, field in ((["one", ""], "inputs.1"), ("one", "inputs"), (["one", 3], "inputs.1"), ([], "inputs")):
        with pytest.raises(cf.SpecError, match=field):
            model.predict(bad)


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("workers", [1, 2])
def test_numbers_below_10000_reach_95_percent_exact_match_on_unseen_numbers(ray_session, tmp_path, workers):
    """The bar, on 1 and on 2 workers (the same global batch of 64). torch: Keras' seq2seq training
    is ~4x slower on these 2 cores (the lean runs above: ~5 min against 80 s), and
    tests/unit/test_seq2seq_parity.py holds Keras' network to the same numbers."""
    spec = numbers_spec("torch", epochs=3, hidden=128, batch_size=64)
    result = cf.fit(spec, cf.datasets.load("numbers", high=10000), workers=workers, storage_path=tmp_path)
    print(f"numbers en->fr, {workers} worker(s):", {k: round(v, 4) for k, v in result.metrics.items()})
    assert result.metrics["test_exact_match"] >= 0.95
    assert result.metrics["test_bleu"] > 90


@pytest.mark.slow  # 5.8 min at load 7-26 (4,269 functions x 10 epochs, 1 worker)
def test_docstring_summaries_beat_the_function_name_baseline(ray_session, tmp_path):
    """Summarisation of real code: functions of numpy, pandas, scikit-learn and statsmodels (docstring
    taken out) -> their docstring's summary line. On the test split's functions, scored against the
    real summary lines (lower-cased, rare words included, which the model can only answer with
    <unk>), the model beats the function's own name split into words on ROUGE-L and BLEU. Measured
    at 9228c8d+: model ROUGE-L 0.22, BLEU 5.8; baseline 0.14 and 0.12 (fit's own test metrics, against
    the references as taught - rare words as <unk> - were ROUGE-L 0.30, BLEU 14.6)."""
    from cellforge import metrics
    from cellforge.data.docstrings import name_baseline
    from cellforge.data.preprocess import split_groups

    data = cf.datasets.load("docstrings", max_tokens=100)
    spec = cf.ModelSpec(task="seq2seq", framework="torch", cell="gru", hidden_size=128, attention="additive",
                        input={"type": "text", "tokenizer": "word", "embedding_dim": 64, "min_freq": 2},
                        target={"tokenizer": "word", "max_length": 24, "embedding_dim": 64, "min_freq": 2,
                                "lowercase": True},
                        decode={"strategy": "greedy"},
                        training={"epochs": 10, "batch_size": 32, "lr": 3e-3, "clip_norm": 1.0, "seed": 0,
                                  "lr_schedule": "cosine"})
    result = cf.fit(spec, data, workers=1, storage_path=tmp_path)
    t = spec.training
    test = split_groups(data.groups, t.val_fraction, t.test_fraction, t.seed)["test"]
    inputs, truth = [data.x[i] for i in test], [data.y[i].lower() for i in test]
    model = metrics.text_scores(cf.load(result.bundle).predict(inputs), truth)
    baseline = metrics.text_scores([name_baseline(c) for c in inputs], truth)
    print("docstrings: model", model, "baseline", baseline, "fit's test metrics", result.metrics)
    assert model["rouge_l"] > baseline["rouge_l"] + 0.03 and model["bleu"] > baseline["bleu"] + 2


@pytest.mark.slow
@pytest.mark.timeout(2400)  # one epoch took 60-400 s on the shared 2-core machine (load 8-10)
def test_dates_in_many_locales_and_formats_reach_98_percent_on_unseen_dates(ray_session, tmp_path):
    """1,000 dates, each written in 8 locales x 4 CLDR formats (28,038 distinct spellings) -> ISO 8601;
    splits hold out dates, so a test date was never seen in training in any spelling. Some short
    spellings are ambiguous (en_US "11/1/50" is 1 November, es_ES's 11 January), which caps exact match
    below 1. Validation exact match per epoch in an 8-epoch run: 0.977, 0.983, 0.985, 0.986, 0.988."""
    spec = cf.ModelSpec(task="seq2seq", framework="torch", cell="gru", hidden_size=128, attention="additive",
                        input={"type": "text", "tokenizer": "char", "embedding_dim": 32},
                        target={"tokenizer": "char", "max_length": 12, "embedding_dim": 16},
                        decode={"strategy": "greedy"},
                        training={"epochs": 3, "batch_size": 64, "lr": 3e-3, "clip_norm": 1.0, "seed": 0,
                                  "lr_schedule": "cosine"})
    result = cf.fit(spec, cf.datasets.load("dates", n=1000), workers=1, storage_path=tmp_path)
    print("dates:", {k: round(v, 4) for k, v in result.metrics.items()})
    assert result.metrics["test_exact_match"] >= 0.98
