"""Per-step anomaly scores, the threshold calibrated on held-out normal data, and detections.

A step's error is, per feature and in the scaled units the network was trained in:

- forecast: the network's prediction of the step from the ``window`` steps before it, minus the step;
- reconstruct: the root-mean-square error of rebuilding the window that ends at the step.

Each feature's error is divided by its root-mean-square on the validation split (normal data the
network never trained on), so a score of about 1 is a typical normal error whatever the feature's
units; a step's score is the root-mean-square of its features' standardised errors. The first
``window`` steps (forecast) or ``window - 1`` (reconstruct) have no score: NaN, ``warmup`` True.

Everything ``detect`` needs — the error scaling and the threshold — is in the bundle's
preprocessing state (``state["anomaly"]``), written by ``fit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellforge import metrics
from cellforge.data.preprocess import anomaly_windows, scale
from cellforge.errors import SpecError


def errors(reconstruct: bool, out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, F) errors of network outputs against their targets (see the module docstring)."""
    out, y = np.asarray(out, np.float64), np.asarray(y, np.float64)
    if reconstruct:
        return np.sqrt(np.mean((out - y) ** 2, axis=1))
    return out - y


def standardise(err: np.ndarray, error_scale: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(per-feature |standardised error| (N, F), combined score (N,))."""
    z = np.abs(err) / np.asarray(error_scale)
    return z, np.sqrt(np.mean(z ** 2, axis=1))


RISK = 1e-3  # auto: a normal step's chance of exceeding the threshold


def pot_threshold(normal_scores: np.ndarray, risk: float = RISK, level: float = 0.8) -> float:
    """Peaks over threshold (Siffer et al. 2017, the initial step of SPOT): a generalised Pareto
    distribution (scipy) fitted to the scores' excesses over their ``level`` quantile, and the score
    it exceeds with probability ``risk``: a tail estimate beyond the largest held-out score.

        >>> s = np.random.default_rng(0).exponential(size=5000)
        >>> round(pot_threshold(s, 1e-3), 1), round(float(-np.log(1e-3)), 1)  # exponential: -log(risk)
        (7.2, 6.9)
    """
    from scipy.stats import genpareto

    s = np.sort(np.asarray(normal_scores, np.float64))
    t = float(np.quantile(s, level))
    excess = s[s > t] - t
    if len(excess) < 5:  # too few to fit a tail
        return float(s[-1])
    gamma, _, sigma = genpareto.fit(excess, floc=0)
    ratio = risk * len(s) / len(excess)
    if abs(gamma) < 1e-6:
        return float(t - sigma * np.log(ratio))
    return float(t + sigma / gamma * (ratio ** -gamma - 1))


def threshold_of(rule: Any, normal_scores: np.ndarray) -> float:
    """The spec's threshold rule applied to held-out normal scores. auto: the peaks-over-threshold
    estimate at ``RISK``, never below their highest. The tail is fitted to the top 20% of the scores:
    on the ~300 validation scores of tests/integration/test_anomaly.py's CO2 detectors the top 10%
    (30 points) put the torch and Keras forecasters at 4.9 and 3.7 (the first missed a flat line
    scoring 3.85), the top 20% at 3.84 and 3.56; the highest score alone (1.48) let the torch
    reconstructor flag normal weeks (interval precision 0.73, 0.86 at the tail's 1.55)."""
    if rule == "auto":
        return max(float(np.max(normal_scores)), pot_threshold(normal_scores))
    if hasattr(rule, "risk"):
        return pot_threshold(normal_scores, rule.risk)
    if hasattr(rule, "quantile"):
        return float(np.quantile(normal_scores, rule.quantile))
    return float(np.quantile(normal_scores, 1 - rule.contamination))


def _scaled(reconstruct: bool, out, y, labels) -> tuple[np.ndarray, np.ndarray]:
    """(error scale from the normal windows, scores of every window)."""
    err = errors(reconstruct, out, y)
    normal = err if labels is None else err[~np.asarray(labels, bool)]
    error_scale = np.sqrt(np.mean(normal ** 2, axis=0))
    error_scale = np.where(error_scale > 0, error_scale, 1.0)
    return error_scale, standardise(err, error_scale.tolist())[1]


def calibrate(spec, out_val: np.ndarray, y_val: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """What ``detect`` needs, from the network's outputs on the validation split: the per-feature
    error scale (from its normal windows), the threshold, and the warm-up length. With ``labels``
    holding both classes, 'auto' is the threshold of the best F1 on the split."""
    if len(y_val) < 2:
        raise SpecError([("training.val_fraction", f"the threshold is calibrated on the validation split, which "
                          f"holds {len(y_val)} window(s); use a longer series or a larger val_fraction")], what="data")
    error_scale, s = _scaled(spec.reconstructs, out_val, y_val, labels)
    rule = spec.anomaly.threshold
    both = labels is not None and 0 < np.sum(labels) < len(labels)
    if rule == "auto" and both:
        threshold, rule_json = metrics.best_f1_threshold(s, labels), "auto: best F1 on the labelled validation split"
    else:
        normal = s if labels is None else s[~np.asarray(labels, bool)]
        threshold, rule_json = threshold_of(rule, normal), _rule_json(rule)
    return {"method": spec.anomaly.method, "error_scale": error_scale.tolist(), "threshold": threshold,
            "rule": rule_json, "warmup": spec.input.window - spec.reconstructs}


def validation_metrics(reconstruct: bool, out: np.ndarray, y: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per epoch, on a labelled validation split: AUROC, average precision and the best F1 over
    thresholds (what a sweep ranks by: ``val_f1``, ``val_auroc``). Empty when it lacks a class."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels, bool)
    if not 0 < labels.sum() < len(labels):
        return {}
    _, s = _scaled(reconstruct, out, y, labels)
    f1 = metrics.detection(s, labels, metrics.best_f1_threshold(s, labels))["f1"]
    return {"f1": f1, "auroc": float(roc_auc_score(labels, s)), "average_precision": float(
        average_precision_score(labels, s))}


def _rule_json(rule) -> Any:
    return rule if isinstance(rule, str) else rule.model_dump()


def as_values(series: Any, state: dict[str, Any], key: Any = None) -> np.ndarray:
    """A (T, F) float array from a Series, a DataFrame (the training columns), or a 1-D/2-D array;
    refuses, naming the field, what cannot be scored (``key``: the series' group, said in errors)."""
    from cellforge.data.sources import Series

    field = "series" if key is None else f"series[{key!r}]"
    columns = state["columns"]
    if isinstance(series, Series):
        series = series.values
    if type(series).__name__ == "DataFrame":
        missing = [c for c in columns if c not in series.columns]
        if missing:
            raise SpecError([(field, f"columns {missing} are missing; the model was trained on {columns}")],
                            what="input")
        series = series[columns].to_numpy()
    try:
        v = np.asarray(series, np.float64)
    except (TypeError, ValueError) as e:
        raise SpecError([(field, f"expected numbers, {e}")], what="input") from None
    v = v[:, None] if v.ndim == 1 else v
    if v.ndim != 2:
        raise SpecError([(field, f"expected (steps,) or (steps, features), got shape {v.shape}")], what="input")
    if v.shape[1] != state["num_features"]:
        raise SpecError([(field, f"expected {state['num_features']} feature(s) per step ({columns}), "
                                 f"got {v.shape[1]}")], what="input")
    need = state["anomaly"]["warmup"] + 1
    if len(v) < need:
        raise SpecError([(field, f"the first score needs {need} steps (window {state['window']}), "
                                 f"got {len(v)}")], what="input")
    bad = np.flatnonzero(~np.isfinite(v).all(axis=1))
    if len(bad):
        raise SpecError([(field, f"contains NaN or infinity at step(s) {bad[:5].tolist()}")], what="input")
    return v


def series_parts(series: Any, state: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(row indices, (T_i, F) values) of each series in ``series``: one, or with groups (a Series'
    ``groups``, or a DataFrame's column named like the training data's ``input.group``) one per
    group, in order of first appearance."""
    from cellforge.data.sources import Series, group_rows

    column = state.get("group")
    if isinstance(series, Series) and series.groups is not None:
        keys, rows_of = series.groups, lambda rows: series.values[rows]
    elif column is not None and type(series).__name__ == "DataFrame" and column in series.columns:
        keys, rows_of = series[column].to_numpy(), lambda rows: series.iloc[rows]
    else:
        v = as_values(series, state)
        return [(np.arange(len(v)), v)]
    return [(rows, as_values(rows_of(rows), state, key)) for key, rows in group_rows(keys, len(keys))]


def score_series(predict, state: dict[str, Any], series: Any) -> tuple[np.ndarray, np.ndarray]:
    """(scores (T,), per-feature standardised errors (T, F)), NaN at warm-up steps. ``predict(x,
    lengths)`` is the network (a loaded model's ``outputs``). Many series in one table (the training
    data's group column): each is scored on its own windows, in one call of the network."""
    return _score_parts(predict, state, series_parts(series, state))


def _score_parts(predict, state: dict[str, Any], parts: list) -> tuple[np.ndarray, np.ndarray]:
    a = state["anomaly"]
    reconstruct = a["method"] == "reconstruct"
    windows = [anomaly_windows(scale(v, state["scaler"]), state["window"], reconstruct) for _, v in parts]
    x, y = (np.concatenate([w[i] for w in windows]) for i in (0, 1))
    out = predict(x, np.full(len(x), state["window"], np.int64))
    z, s = standardise(errors(reconstruct, out, y), a["error_scale"])
    total = sum(len(rows) for rows, _ in parts)
    scores, per_feature = np.full(total, np.nan), np.full((total, state["num_features"]), np.nan)
    at = 0
    for (rows, _), (wx, _) in zip(parts, windows):
        scored = rows[a["warmup"]:]  # each window scores one step past the warm-up
        scores[scored], per_feature[scored] = s[at: at + len(wx)], z[at: at + len(wx)]
        at += len(wx)
    return scores, per_feature


@dataclass
class Detection:
    """What ``Model.detect`` returns: per-step scores (NaN at warm-up), flags, the threshold, and the
    flagged intervals as (start, end) steps, end exclusive (with many series in one table: rows of
    the table, each interval within one series)."""

    scores: np.ndarray
    flags: np.ndarray
    threshold: float
    intervals: list[tuple[int, int]] = field(default_factory=list)
    per_feature: np.ndarray | None = None
    columns: list[str] = field(default_factory=list)
    window: int = 0

    @property
    def warmup(self) -> np.ndarray:
        return np.isnan(self.scores)

    def frame(self):
        """A DataFrame: step, score, flag, warmup, and each feature's standardised error."""
        import pandas as pd

        df = pd.DataFrame({"step": np.arange(len(self.scores)), "score": self.scores, "flag": self.flags,
                           "warmup": self.warmup})
        if self.per_feature is not None:
            for i, c in enumerate(self.columns):
                df[f"score_{c}"] = self.per_feature[:, i]
        return df

    def metrics(self, labels: Any, tolerance: int | None = None) -> dict[str, float]:
        """Detection metrics against 0/1 per-step labels (:func:`cellforge.metrics.detection`);
        ``tolerance`` (interval-wise): default the window, the steps that still see an anomaly."""
        return metrics.detection(self.scores, np.asarray(labels), self.threshold,
                                 self.window if tolerance is None else tolerance)


def detect(predict, state: dict[str, Any], series: Any, threshold: float | None = None) -> Detection:
    parts = series_parts(series, state)
    scores, per_feature = _score_parts(predict, state, parts)
    t = state["anomaly"]["threshold"] if threshold is None else float(threshold)
    flags = np.nan_to_num(scores, nan=-np.inf) > t
    # each series' intervals on its own (one never runs into the next series' rows), as table rows
    intervals = sorted((int(rows[a]), int(rows[b - 1]) + 1) for rows, _ in parts
                       for a, b in metrics.intervals(flags[rows]))
    return Detection(scores, flags, t, intervals, per_feature, list(state["columns"]), state["window"])


@dataclass
class StreamStep:
    """One stream step's work, split so a server can run many streams' windows in one forward pass:
    ``windows`` (n, window, F) go through the network (n may be 0 while warming up), ``answer`` turns
    the network's outputs for them into the step's scores; ``carry`` is what to keep for the stream."""

    state: dict[str, Any]
    windows: np.ndarray
    targets: np.ndarray
    warming: int  # the new steps with no score yet (before the warm-up ends)
    carry: dict[str, Any]

    def answer(self, outputs: np.ndarray | None) -> dict[str, Any]:
        a = self.state["anomaly"]
        scores: list[float | None] = [None] * self.warming
        if len(self.windows):
            _, s = standardise(errors(a["method"] == "reconstruct", outputs, self.targets), a["error_scale"])
            scores += [float(v) for v in s]
        flags = [v is not None and v > a["threshold"] for v in scores]
        return {"scores": scores, "flags": flags, "threshold": a["threshold"]}


def stream_windows(state: dict[str, Any], x: np.ndarray, carry: dict[str, Any] | None) -> StreamStep:
    """A live stream's new steps (``x``: (t, F), already scaled) and what the server keeps for it
    (``carry``: the last ``window`` steps and how many came before; None to start) -> the windows to
    score, the same ones ``score_series`` scores for the whole stream at the same steps."""
    a, window = state["anomaly"], state["window"]
    x = np.asarray(x, np.float32).reshape(-1, state["num_features"])
    kept = np.zeros((0, x.shape[1]), np.float32) if carry is None else np.asarray(carry["window"], np.float32)
    before = 0 if carry is None else int(carry["steps"])
    seq = np.concatenate([kept.reshape(-1, x.shape[1]), x])
    first = before - len(kept)  # the stream step that seq[0] is
    reconstruct = a["method"] == "reconstruct"
    steps = [k for k in range(before, before + len(x)) if k >= a["warmup"]]
    ends = [k - first + reconstruct for k in steps]  # seq index just past each scored window
    empty = np.zeros((0, window, x.shape[1]), np.float32)
    xs = np.stack([seq[e - window: e] for e in ends]) if ends else empty
    y = xs if reconstruct else (np.stack([seq[e] for e in ends]) if ends else empty[:, 0])
    return StreamStep(state, xs, y, len(x) - len(steps), {"window": seq[-window:].tolist(), "steps": before + len(x)})

