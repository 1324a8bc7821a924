"""Real text: a recurrent classifier on ``debian_descriptions`` (package descriptions -> 10 archive
sections) held to TF-IDF + logistic regression (scikit-learn) on exactly the same split: the word-level
model's test accuracy is within 2 points of the baseline's (make test-all; make test runs a short
version); the char-level one does not get there yet (a strict xfail with its figures). The split is
made once, by group (a package's '(data files)' companions stay with it), and given to ``cf.fit`` as
official splits, so the model trains on the baseline's training texts, stops early on the validation
ones and is scored on the same test texts (``benchmarks/real_text.py`` prints the figures)."""

import time

import pytest

import cellforge as cf
from cellforge.data.debian import debian_splits, tfidf_baseline
from cellforge.evaluate import evaluate

pytestmark = pytest.mark.integration

# a GRU over the words, its last step's output read by the head; dropout on the embedded words and on
# what the head reads (input.dropout, head_dropout) and weight decay are what brought it to the baseline:
# 0.666 without regularisation, 0.733-0.749 with weight decay alone, 0.790 with the dropouts (TF-IDF 0.795)
WORD = {"task": "classify", "cell": "gru", "hidden_size": 64, "head_dropout": 0.5,
        "input": {"type": "text", "tokenizer": "word", "dropout": 0.5},
        "training": {"lr": 5e-3, "batch_size": 64, "weight_decay": 1e-4, "epochs": 40,
                     "early_stopping": {"metric": "val_accuracy", "mode": "max", "patience": 6}}}
# make test's short run: the same network, fewer epochs at a higher rate, no early stopping
SHORT = {**WORD, "training": {"lr": 1e-2, "batch_size": 64, "weight_decay": 1e-4, "epochs": 8}}
# over the characters: ~44 steps a text instead of ~6, so a wider state and light input dropout
CHAR = {**WORD, "hidden_size": 128,
        "input": {"type": "text", "tokenizer": "char", "embedding_dim": 32, "dropout": 0.1},
        "training": {**WORD["training"], "epochs": 30, "bucket_by_length": True,
                     "early_stopping": {"metric": "val_accuracy", "mode": "max", "patience": 5}}}


@pytest.fixture(scope="module")
def splits():
    s = debian_splits()
    assert not set(s["train"].groups) & (set(s["val"].groups) | set(s["test"].groups))
    return s


def _fit(spec, splits, tmp_path, name):
    """The model's and the baseline's test accuracies on the same texts."""
    train, val, test = splits["train"], splits["val"], splits["test"]
    start = time.perf_counter()
    r = cf.fit(spec, train, validation=val, test=test, name=name, storage_path=tmp_path, tracking="none",
               verbose=False)
    took = time.perf_counter() - start
    baseline = tfidf_baseline(train.x, train.y, test.x, test.y)
    # the reported figure is the given test texts' accuracy, recomputed from the bundle
    acc = r.metrics["test_accuracy"]
    assert evaluate(r.bundle, (test.x, test.y), split="all")["all_accuracy"] == pytest.approx(acc)
    print(f"{name}: test accuracy {acc:.3f} ({len(r.history)} epochs, {took:.0f} s), "
          f"TF-IDF + logistic regression {baseline:.3f}")
    return acc, baseline


def test_a_short_word_level_run_comes_close_to_tfidf(ray_session, splits, tmp_path):
    """make test's lean version of the bar below: 8 epochs at a higher rate (measured 0.7785 against 0.795;
    the same run without the dropouts 0.738, which fails here). 3 points rather than 2: the run's margin is
    kept out of the reach of a few texts flipping with the machine's float summation order. The fit took
    7 s as a process's second fit (load 3.2), 40 s in a fresh test session (load 4.5)."""
    acc, baseline = _fit(SHORT, splits, tmp_path, "debian-word-short")
    assert acc >= baseline - 0.03, (acc, baseline)


@pytest.mark.slow  # make test-all: 26 epochs, 33-135 s on this machine at load 4-5 (the short run stays in make test)
def test_word_level_gru_is_within_two_points_of_tfidf(ray_session, splits, tmp_path):
    acc, baseline = _fit(WORD, splits, tmp_path, "debian-word")
    assert acc >= baseline - 0.02, (acc, baseline)


@pytest.mark.slow  # make test-all: a char-level epoch reads ~44 steps a text, not ~6
@pytest.mark.xfail(strict=True, reason="not reached yet: the char-level GRU scored 0.660 against TF-IDF's 0.795 "
                                       "(25 epochs, 255 s); strict: reaching the bar fails here until this is removed")
def test_char_level_gru_is_within_two_points_of_tfidf(ray_session, splits, tmp_path):
    acc, baseline = _fit(CHAR, splits, tmp_path, "debian-char")
    assert acc >= baseline - 0.02, (acc, baseline)
