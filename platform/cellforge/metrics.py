"""Metrics from sufficient statistics, so per-epoch metrics sum exactly over all ranks.

``stats`` turns one shard's outputs into a flat float64 vector; summing the vectors of
every rank (an all-reduce) and calling ``finalize`` gives the metrics of the whole split.

    >>> import numpy as np
    >>> s = stats("classify", np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), 2)
    >>> finalize("classify", s, 2)["accuracy"]
    0.5
"""

from __future__ import annotations

import numpy as np

# which way is better, for early stopping and sweeps
MODES = {"loss": "min", "accuracy": "max", "macro_f1": "max", "mae": "min", "rmse": "min", "mape": "min"}


def stats(task: str, out: np.ndarray, y: np.ndarray, num_classes: int | None = None,
          target_scaler: dict | None = None) -> np.ndarray:
    """Sufficient statistics of one shard. ``out`` are raw network outputs; ``y`` encoded targets."""
    out = np.asarray(out, np.float64)
    if task in ("classify", "tag"):
        z = out.reshape(-1, out.shape[-1])
        t = np.asarray(y).reshape(-1)
        keep = t != -100
        z, t = z[keep], t[keep]
        m = z.max(-1, keepdims=True)
        logp = z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
        loss = -logp[np.arange(len(t)), t].sum()
        conf = np.zeros((num_classes, num_classes))
        np.add.at(conf, (t, z.argmax(-1)), 1)
        return np.concatenate([[loss, len(t)], conf.ravel()])
    y = np.asarray(y, np.float64)
    loss = ((out - y) ** 2).sum()  # MSE in the scaled space, as trained
    if target_scaler is not None:
        k = len(target_scaler["scale"])
        sc, sh = np.asarray(target_scaler["scale"]), np.asarray(target_scaler["shift"])
        out = out.reshape(len(out), -1, k) * sc + sh
        y = y.reshape(len(y), -1, k) * sc + sh
    err = out - y
    nz = np.abs(y) > 1e-8  # MAPE skips true zeros, where it is undefined
    return np.array([loss, err.size, np.abs(err).sum(), (err ** 2).sum(),
                     (np.abs(err)[nz] / np.abs(y)[nz]).sum(), nz.sum()])


def finalize(task: str, s: np.ndarray, num_classes: int | None = None) -> dict[str, float]:
    """Metrics of a split from its summed statistics."""
    n = max(s[1], 1)
    if task in ("classify", "tag"):
        conf = s[2:].reshape(num_classes, num_classes)
        tp = np.diag(conf)
        prec = np.divide(tp, conf.sum(0), out=np.zeros_like(tp), where=conf.sum(0) > 0)
        rec = np.divide(tp, conf.sum(1), out=np.zeros_like(tp), where=conf.sum(1) > 0)
        f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
        present = (conf.sum(0) + conf.sum(1)) > 0  # macro over classes seen in truth or prediction
        return {"loss": float(s[0] / n), "accuracy": float(tp.sum() / n),
                "macro_f1": float(f1[present].mean()) if present.any() else 0.0}
    return {"loss": float(s[0] / n), "mae": float(s[2] / n), "rmse": float(np.sqrt(s[3] / n)),
            "mape": float(s[4] / max(s[5], 1))}


def evaluate(task: str, out: np.ndarray, y: np.ndarray, num_classes=None, target_scaler=None) -> dict[str, float]:
    return finalize(task, stats(task, out, y, num_classes, target_scaler), num_classes)


def score(spec, out: np.ndarray, y: np.ndarray, target_scaler: dict | None = None) -> dict[str, float]:
    """Metrics of a model's raw outputs against encoded targets. A tagger's outputs cover the
    batch's padded steps; they are cut to the targets' width first."""
    if spec.task == "tag":
        out = out[:, : y.shape[1]]
    return evaluate(spec.task, out, y, spec.num_classes, target_scaler)


MODES.update({"cer": "min", "wer": "min"})


def transcribe_stats(target: dict, logits: np.ndarray, lengths: np.ndarray, y: np.ndarray) -> np.ndarray:
    """transcribe: [CTC loss sum, rows, char edits, reference chars, word edits, reference words] of
    one shard, from greedy transcripts (cellforge.ctc) against the encoded targets."""
    from cellforge import ctc

    if not len(y):
        return np.zeros(6)
    truth = [ctc.text(target, [int(c) for c in row if c != ctc.PAD]) for row in y]
    found = ctc.transcripts(target, logits, lengths)
    return np.concatenate([[ctc.losses(logits, lengths, y).sum(), len(y)], ctc.edit_stats(truth, found)])


def transcribe_finalize(s: np.ndarray) -> dict[str, float]:
    """Loss, CER and WER of a split from its summed ``transcribe_stats``."""
    return {"loss": float(s[0] / max(s[1], 1)), "cer": float(s[2] / max(s[3], 1)), "wer": float(s[4] / max(s[5], 1))}


def mode_of(metric: str) -> str:
    """'min' or 'max' for a metric name such as 'val_accuracy'."""
    return MODES.get(metric.split("_", 1)[-1] if metric.startswith(("val_", "train_", "test_")) else metric, "min")


# seq2seq ---------------------------------------------------------------------------------------
MODES.update({"token_accuracy": "max", "exact_match": "max", "bleu": "max", "chrf": "max", "rouge_l": "max"})


def token_stats(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Teacher-forced sufficient statistics of one shard: [loss sum, real target tokens, tokens
    predicted right]; ``y`` (B, T) is -100 at padding (skipped)."""
    z = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    t = np.asarray(y).reshape(-1)
    keep = t != -100
    z, t = z[keep], t[keep]
    m = z.max(-1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
    return np.array([-logp[np.arange(len(t)), t].sum(), len(t), (z.argmax(-1) == t).sum()], np.float64)


class _Whitespace:
    """rouge-score's default tokenizer keeps only [a-z0-9] (it would drop 'é' from 'zéro');
    seq2seq targets are any language, so ROUGE-L reads whitespace-separated tokens."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


def text_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Exact match, corpus BLEU and chrF (sacrebleu) and mean ROUGE-L F1 (rouge-score) of decoded
    texts against their references.

        >>> s = text_scores(["quatre mille douze", "mille"], ["quatre mille douze", "mille un"])
        >>> s["exact_match"], round(s["chrf"], 1) > 50, 0 < s["rouge_l"] < 1
        (0.5, True, True)
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    if not references:
        return {}
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Whitespace())
    return {"exact_match": float(np.mean([h == r for h, r in zip(hypotheses, references)])),
            "bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
            "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
            "rouge_l": float(np.mean([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)]))}


# anomaly ---------------------------------------------------------------------------------------
MODES.update({"f1": "max", "auroc": "max", "average_precision": "max", "pa_f1": "max", "ucr": "max",
              "precision": "max", "recall": "max", "event_recall": "max", "event_precision": "max"})


def intervals(flags: np.ndarray) -> list[tuple[int, int]]:
    """The runs of True in ``flags`` as (start, end) pairs, end exclusive.

        >>> intervals(np.array([0, 1, 1, 0, 0, 1], bool))
        [(1, 3), (5, 6)]
    """
    f = np.concatenate([[False], np.asarray(flags, bool), [False]])
    edges = np.flatnonzero(f[1:] != f[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def point_adjust(flags: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Xu et al. 2018's adjustment: one flag inside a labelled interval counts for all of it.

        >>> point_adjust(np.array([0, 0, 1, 0, 1]), np.array([0, 1, 1, 1, 0])).astype(int).tolist()
        [0, 1, 1, 1, 1]
    """
    out = np.asarray(flags, bool).copy()
    for a, b in intervals(labels):
        if out[a:b].any():
            out[a:b] = True
    return out


def ucr_hit(scores: np.ndarray, labels: np.ndarray, tolerance: int = 100) -> bool:
    """The UCR anomaly archive's rule (Wu & Keogh 2021): the top-scoring step counts as found when it
    lies within ``tolerance`` steps of the labelled interval (NaN scores never win).

        >>> labels = np.zeros(500, bool); labels[300:310] = True
        >>> s = np.zeros(500); s[205] = 1.0
        >>> ucr_hit(s, labels), ucr_hit(s, labels, tolerance=50)
        (True, False)
    """
    (start, end), *_ = intervals(labels) or [(None, None)]
    if start is None:
        raise ValueError("labels: the UCR rule needs one labelled anomaly, got none")
    top = int(np.nanargmax(scores))
    return start - tolerance <= top < end + tolerance


def event_scores(flags: np.ndarray, labels: np.ndarray, tolerance: int = 0) -> dict[str, float]:
    """Interval-wise recall (labelled intervals with at least one flag) and precision (flagged
    intervals that touch a labelled one). ``tolerance``: a labelled interval also owns the steps just
    after it — a detector's window still holds the anomaly there (its own window length is the
    natural value: a level shift's end, a flat line's return are flagged there).

        >>> event_scores(np.array([0, 0, 0, 1, 0, 0, 1]), np.array([0, 1, 1, 0, 0, 0, 0]), tolerance=1)
        {'event_recall': 1.0, 'event_precision': 0.5}
    """
    truth = [(a, b + tolerance) for a, b in intervals(labels)]
    found = intervals(flags)
    hit = [any(a < fb and fa < b for fa, fb in found) for a, b in truth]
    real = [any(a < lb and la < b for la, lb in truth) for a, b in found]
    return {"event_recall": float(np.mean(hit)) if truth else 0.0,
            "event_precision": float(np.mean(real)) if found else 0.0}


def detection(scores: np.ndarray, labels: np.ndarray, threshold: float, tolerance: int = 0) -> dict[str, float]:
    """Detection metrics of per-step ``scores`` (NaN at warm-up steps, left out) against 0/1 ``labels``:
    point-wise and point-adjusted precision/recall/F1 at ``threshold``, AUROC and average precision
    (scikit-learn), interval-wise recall/precision (``tolerance``: see ``event_scores``), and the UCR
    rule when there is one labelled interval.

        >>> s = np.array([np.nan, 0.1, 0.2, 3.0, 2.5, 0.1, 0.3, 0.2])
        >>> y = np.array([0, 0, 0, 1, 1, 1, 0, 0])
        >>> m = detection(s, y, 1.0)
        >>> m["precision"], round(m["recall"], 3), m["pa_recall"], round(m["auroc"], 3)  # AUROC: 8.5 of 12 pairs
        (1.0, 0.667, 1.0, 0.708)
    """
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"labels: expected one label per step ({scores.shape[0]}), got {labels.shape[0]}")
    keep = ~np.isnan(scores)
    s, y = scores[keep], labels[keep]
    flags = np.zeros_like(labels)
    flags[keep] = s > threshold
    out: dict[str, float] = {}
    for prefix, f in (("", flags[keep]), ("pa_", point_adjust(flags, labels)[keep])):
        p, r, f1, _ = precision_recall_fscore_support(y, f, average="binary", zero_division=0)
        out.update({f"{prefix}precision": float(p), f"{prefix}recall": float(r), f"{prefix}f1": float(f1)})
    both = 0 < y.sum() < len(y)  # AUROC and AP need both classes
    out["auroc"] = float(roc_auc_score(y, s)) if both else float("nan")
    out["average_precision"] = float(average_precision_score(y, s)) if both else float("nan")
    out.update(event_scores(flags, labels, tolerance))
    if len(intervals(labels)) == 1:
        out["ucr"] = float(ucr_hit(scores, labels))
    return out


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold (flag when score > it) with the best point-wise F1 on labelled data.

        >>> best_f1_threshold(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        0.1
    """
    from sklearn.metrics import precision_recall_curve

    keep = ~np.isnan(scores)
    p, r, t = precision_recall_curve(np.asarray(labels)[keep].astype(int), np.asarray(scores)[keep])
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)[:-1]
    chosen = t[int(np.argmax(f1))]  # sklearn's thresholds flag score >= t: step just below it
    below = np.asarray(scores)[keep]
    below = below[below < chosen]
    return float(below.max()) if len(below) else float(np.nextafter(chosen, -np.inf))
