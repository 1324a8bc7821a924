"""Preprocessing fitted on the training split: scalers, vocabulary, labels, windows.

The state is plain JSON (``Preprocessor.state``) so a bundle carries it without pickle,
and ``Preprocessor.transform`` turns the same raw inputs a user has (strings, raw
values) into model arrays at predict time.

    >>> import cellforge as cf
    >>> spec, prepared = prepare(cf.ModelSpec(task="classify"), cf.datasets.load("digits"))
    >>> prepared.splits["train"]["x"].shape[1:], spec.num_classes
    ((8, 8), 10)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellforge import ctc
from cellforge.data import audio, targets
from cellforge.data.sources import Sequences, Series, group_rows, with_splits
from cellforge.errors import SpecError
from cellforge.spec import ModelSpec

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"\w+|[^\w\s]")


class Preprocessor:
    """Raw inputs <-> model arrays, from a JSON-able ``state``."""

    def __init__(self, state: dict[str, Any]):
        self.state = state
        self._index = {t: i for i, t in enumerate(state.get("vocab", []))}

    # inputs -------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        s = self.state
        text = text.lower() if s["lowercase"] else text
        return list(text) if s["tokenizer"] == "char" else _WORD.findall(text)

    def token_ids(self, text: str) -> list[int]:
        """The vocabulary ids of ``text``'s tokens (1, ``<unk>``, for unknown ones)."""
        return [self._index.get(tok, 1) for tok in self.tokenize(text)]

    def transform(self, raw: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw inputs -> (padded x, lengths). Text: strings; numeric: (N,T,F) or a list of (T_i,F)."""
        s = self.state
        if s["input_type"] == "text":
            if isinstance(raw, str):
                raise SpecError([("inputs", "expected a list of strings, got one string")], what="input")
            seqs = []
            for i, t in enumerate(raw):
                if not isinstance(t, str):
                    raise SpecError([(f"inputs.{i}", f"expected a string, got {type(t).__name__}")], what="input")
                ids = self.token_ids(t) or [1]
                seqs.append(np.asarray(ids, np.int64))
            return pad(seqs, s.get("max_length"), np.int64)
        if s["input_type"] == "audio":
            return self.from_features(audio.featurize(raw, s["audio"]))
        seqs = as_sequences(raw, s["num_features"])
        if s["kind"] == "series":
            seqs = [q[-s["window"]:] for q in seqs]
        return pad([scale(q, s["scaler"]) for q in seqs], s.get("max_length"), np.float32)

    def from_features(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Audio: feature sequences (cellforge.data.audio) -> scaled, padded x and lengths."""
        s = self.state
        return pad([scale(q, s["scaler"]).astype(np.float32) for q in seqs], s.get("max_length"), np.float32)

    # targets ------------------------------------------------------------------
    def encode_y(self, y: Any, lengths: np.ndarray | None = None) -> np.ndarray:
        s = self.state
        if s["task"] == "classify":
            index = {c: i for i, c in enumerate(s["classes"])}
            return np.asarray([index[_key(v)] for v in np.asarray(y).tolist()], np.int64)
        if s["task"] == "seq2seq":
            return targets.encode(s["target"], list(y))
        if s["task"] == "transcribe":
            return ctc.encode(s["target"], list(y))
        if s["task"] == "tag":
            index = {c: i for i, c in enumerate(s["classes"])}
            out = np.full((len(y), int(lengths.max())), -100, np.int64)  # -100: ignored by the loss
            for i, tags in enumerate(y):
                ids = [index[_key(v)] for v in list(tags)[: lengths[i]]]
                out[i, : len(ids)] = ids
            return out
        y = np.asarray(y, np.float64).reshape(len(y), -1)
        return scale(y, s["target_scaler"]).astype(np.float32)

    def decode(self, outputs: np.ndarray, lengths: np.ndarray | None = None) -> dict[str, Any]:
        """Network outputs -> user-facing predictions (labels / probabilities / values)."""
        s = self.state
        if s["task"] in ("classify", "tag"):
            z = outputs - outputs.max(-1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(-1, keepdims=True)
            labels = np.asarray(s["classes"], dtype=object)[p.argmax(-1)]
            if s["task"] == "tag":
                return {"labels": [lab[: n].tolist() for lab, n in zip(labels, lengths)],
                        "probabilities": [q[: n] for q, n in zip(p, lengths)]}
            return {"labels": labels.tolist(), "probabilities": p}
        if s["task"] == "transcribe":
            return {"texts": ctc.transcripts(s["target"], outputs, lengths)}
        values = unscale(outputs.reshape(len(outputs), -1, s["num_targets"]), s["target_scaler"])
        if s["task"] == "regress":
            values = values[:, 0]
        return {"values": values[..., 0] if s["num_targets"] == 1 else values}


def _key(v):
    return v.item() if hasattr(v, "item") else v


def as_sequences(raw: Any, num_features: int | None) -> list[np.ndarray]:
    """A (N,T,F)/(N,T) array or list of (T_i,F)/(T_i,) sequences -> list of float arrays."""
    if isinstance(raw, np.ndarray) and raw.dtype != object and raw.ndim in (2, 3):
        seqs = list(raw[..., None] if raw.ndim == 2 else raw)
    else:
        try:
            seqs = [np.asarray(q, np.float64) for q in raw]
        except (TypeError, ValueError) as e:
            raise SpecError([("inputs", f"expected numeric sequences, {e}")], what="input") from None
    out = []
    for i, q in enumerate(seqs):
        q = np.asarray(q, np.float64)
        q = q[:, None] if q.ndim == 1 else q
        if q.ndim != 2 or len(q) == 0:
            raise SpecError([(f"inputs.{i}", f"expected a non-empty (steps, features) sequence, got shape {q.shape}")],
                            what="input")
        if num_features is not None and q.shape[1] != num_features:
            raise SpecError([(f"inputs.{i}", f"expected {num_features} features per step, got {q.shape[1]}")],
                            what="input")
        if not np.isfinite(q).all():
            raise SpecError([(f"inputs.{i}", "contains NaN or infinity")], what="input")
        out.append(q)
    return out


def pad(seqs: list[np.ndarray], max_length: int | None, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence (keeping the first ``max_length`` steps)."""
    if not seqs:
        raise SpecError([("inputs", "empty batch: send at least one sequence")], what="input")
    seqs = [q[:max_length] if max_length else q for q in seqs]
    lengths = np.asarray([len(q) for q in seqs], np.int64)
    shape = (len(seqs), int(lengths.max()), *seqs[0].shape[1:])
    x = np.zeros(shape, dtype)
    for i, q in enumerate(seqs):
        x[i, : len(q)] = q
    return x, lengths


def fit_scaler(values: np.ndarray, kind: str) -> dict[str, list[float]]:
    if kind == "none":
        return {"shift": [0.0] * values.shape[-1], "scale": [1.0] * values.shape[-1]}
    if kind == "minmax":
        lo, hi = values.min(0), values.max(0)
        return {"shift": lo.tolist(), "scale": np.where(hi > lo, hi - lo, 1.0).tolist()}
    sd = values.std(0)
    return {"shift": values.mean(0).tolist(), "scale": np.where(sd > 0, sd, 1.0).tolist()}


def scale(v: np.ndarray, sc: dict) -> np.ndarray:
    return (v - np.asarray(sc["shift"])) / np.asarray(sc["scale"])


def unscale(v: np.ndarray, sc: dict) -> np.ndarray:
    return v * np.asarray(sc["scale"]) + np.asarray(sc["shift"])


def split_indices(n: int, val: float, test: float, seed: int, shuffle: bool) -> dict[str, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    n_test, n_val = int(round(n * test)), int(round(n * val))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise SpecError([("training.val_fraction", f"no training data left from {n} examples")], what="data")
    return {"train": idx[:n_train], "val": idx[n_train: n_train + n_val], "test": idx[n_train + n_val:]}


def split_groups(groups: list, val: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Like ``split_indices`` over the distinct groups: every row of a group lands in one split."""
    keys, inverse = np.unique(np.asarray(groups), return_inverse=True)
    parts = split_indices(len(keys), val, test, seed, shuffle=True)
    return {k: np.flatnonzero(np.isin(inverse, v)) for k, v in parts.items()}


@dataclass
class Prepared:
    """Model-ready splits ({'train', 'val', 'test'} -> {'x', 'lengths', 'y'}) and the preprocessor."""

    splits: dict[str, dict[str, np.ndarray]]
    preprocessor: Preprocessor
    raw_test: Any = None  # the test split's raw inputs, for showing predictions next to the truth
    baseline: dict[str, float] = field(default_factory=dict)  # e.g. the naive forecast's test RMSE
    fingerprint: str | None = None  # the splits' sha256, once computed (cellforge.tracking.fingerprint)


SPLIT_NAMES = {"train": "train", "training": "train", "validation": "val", "val": "val", "valid": "val",
               "dev": "val", "test": "test"}


def split_parts(src: Sequences, val: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices of each split: the source's official ones (``src.split``) kept exactly, a split it
    lacks carved from its training rows at the spec's fraction; else random (by group when grouped)."""
    if src.split is None:
        return (split_indices(len(src.x), val, test, seed, shuffle=True) if src.groups is None
                else split_groups(src.groups, val, test, seed))
    if len(src.split) != len(src.x):
        raise SpecError([("input.split", f"{len(src.x)} inputs but {len(src.split)} split values")], what="data")
    names = [SPLIT_NAMES.get(str(v).strip().lower()) for v in src.split]
    bad = sorted({str(v) for v, n in zip(src.split, names) if n is None})
    if bad:
        raise SpecError([("input.split", f"expected 'train', 'validation' (or 'val', 'dev') or 'test', got "
                                         f"{bad[:5]}")], what="data")
    names = np.asarray(names)
    given = {k: np.flatnonzero(names == k) for k in ("train", "val", "test")}
    if not len(given["train"]):
        raise SpecError([("input.split", "no training rows")], what="data")
    fracs = {k: 0.0 if len(given[k]) else f for k, f in (("val", val), ("test", test))}
    train = given["train"]
    sub = (split_indices(len(train), fracs["val"], fracs["test"], seed, shuffle=True) if src.groups is None
           else split_groups([src.groups[i] for i in train], fracs["val"], fracs["test"], seed))
    return {"train": train[sub["train"]], **{k: given[k] if len(given[k]) else train[sub[k]] for k in ("val", "test")}}


def prepare(spec: ModelSpec, data: Any, validation: Any = None, test: Any = None) -> tuple[ModelSpec, Prepared]:
    """Split, fit preprocessing on the training split only, and fill in the spec's sizes. ``validation``
    / ``test``: official splits, kept exactly (``data`` is then the training data)."""
    src = with_splits(spec, data, validation, test)
    if spec.task in ("forecast", "anomaly") and not isinstance(src, Series):
        raise SpecError([("data", f"{spec.task} needs a time series (Series, 1-D/2-D array or a table)")],
                        what="data")
    if spec.task not in ("forecast", "anomaly") and isinstance(src, Series):
        raise SpecError([("task", f"a time series needs task 'forecast', got {spec.task!r}")], what="data")
    return fit_preprocessor(spec, src)


def fit_preprocessor(spec: ModelSpec, src: Sequences | Series) -> tuple[ModelSpec, Prepared]:
    if isinstance(src, Series):
        return _fit_series(spec, src)
    t, inp = spec.training, spec.input
    n = len(src.x)
    if len(src.y) != n:
        raise SpecError([("data", f"{n} inputs but {len(src.y)} targets")], what="data")
    if src.groups is not None and len(src.groups) != n:
        raise SpecError([("data", f"{n} inputs but {len(src.groups)} groups")], what="data")
    parts = split_parts(src, t.val_fraction, t.test_fraction, t.seed)
    state: dict[str, Any] = {"kind": "sequences", "task": spec.task, "input_type": inp.type,
                             "max_length": inp.max_length}
    if inp.type == "text":
        if not all(isinstance(s, str) for s in src.x):
            raise SpecError([("input.type", "text input needs strings")], what="data")
        state.update(tokenizer=inp.tokenizer, lowercase=inp.lowercase, vocab=[])
        pre = Preprocessor(state)
        counts = Counter(tok for i in parts["train"] for tok in pre.tokenize(src.x[i]))
        kept = sorted((c for c in counts.items() if c[1] >= inp.min_freq), key=lambda c: (-c[1], c[0]))
        state["vocab"] = [PAD, UNK, *[tok for tok, _ in kept[: inp.max_vocab - 2]]]
        spec = spec.updated(**{"input.vocab_size": len(state["vocab"])})
    elif inp.type == "audio":  # features computed once here: epochs read the arrays
        state["audio"] = inp.audio.model_dump()
        feats = audio.featurize(src.x, state["audio"])
        state["num_features"] = feats[0].shape[1]
        state["scaler"] = fit_scaler(np.concatenate([feats[i][: inp.max_length or None] for i in parts["train"]]),
                                     inp.scale)
        spec = spec.updated(**{"input.num_features": state["num_features"]})
    else:
        seqs = as_sequences(src.x, None)
        widths = {q.shape[1] for q in seqs}
        if len(widths) != 1:
            raise SpecError([("data", f"sequences have different feature counts: {sorted(widths)}")], what="data")
        state["num_features"] = widths.pop()
        train_rows = np.concatenate([seqs[i][: inp.max_length or None] for i in parts["train"]])
        state["scaler"] = fit_scaler(train_rows, inp.scale)
        spec = spec.updated(**{"input.num_features": state["num_features"]})
    if spec.task in ("classify", "tag"):
        flat = [_key(v) for ys in src.y for v in (ys if spec.task == "tag" else [ys])]
        classes = sorted(set(flat), key=lambda v: (str(type(v)), v))
        if len(classes) < 2:
            raise SpecError([("data", f"need at least 2 classes, found {classes}")], what="data")
        state["classes"] = classes
        spec = spec.updated(num_classes=len(classes))
    elif spec.task == "seq2seq":
        if not all(isinstance(t, str) for t in src.y):
            raise SpecError([("data", "seq2seq targets must be strings")], what="data")
        state["target"] = targets.fit(spec.target, [src.y[i] for i in parts["train"]])
        spec = spec.updated(**{"target.vocab_size": len(state["target"]["vocab"])})
    elif spec.task == "transcribe":
        if not all(isinstance(t, str) for t in src.y):
            raise SpecError([("data", "transcribe targets must be strings (transcripts)")], what="data")
        state["target"] = ctc.fit(spec.target, [src.y[i] for i in parts["train"]])
        spec = spec.updated(**{"target.vocab_size": len(state["target"]["vocab"])})
    else:
        y = np.asarray(src.y, np.float64).reshape(n, -1)
        state["num_targets"] = y.shape[1]
        state["target_scaler"] = fit_scaler(y[parts["train"]], inp.scale)
        spec = spec.updated(num_outputs=y.shape[1])
    pre = Preprocessor(state)
    x, lengths = pre.from_features(feats) if inp.type == "audio" else pre.transform(src.x)
    y = pre.encode_y(src.y if spec.task != "tag" else list(src.y), lengths)
    splits = {k: {"x": x[i], "lengths": lengths[i], "y": y[i]} for k, i in parts.items()}
    raw_test = [src.x[i] for i in parts["test"]]
    return spec, Prepared(splits, pre, raw_test)


def anomaly_windows(scaled: np.ndarray, window: int, reconstruct: bool) -> tuple[np.ndarray, np.ndarray]:
    """A scaled (T, F) series -> (x, y). forecast: x = the window before each step from ``window`` on,
    y = that step; reconstruct: x = y = the window ending at each step from ``window - 1`` on.

        >>> x, y = anomaly_windows(np.arange(5.0)[:, None], 3, reconstruct=False)
        >>> x[:, :, 0].tolist(), y[:, 0].tolist()
        ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]], [3.0, 4.0])
    """
    from numpy.lib.stride_tricks import sliding_window_view

    v = np.asarray(scaled, np.float32)
    win = np.ascontiguousarray(sliding_window_view(v, window, axis=0).transpose(0, 2, 1))  # (T-W+1, W, F)
    return (win, win) if reconstruct else (win[:-1], v[window:])


def _fit_anomaly(spec: ModelSpec, src: Series) -> tuple[ModelSpec, Prepared]:
    """Windows of a series believed normal, split in time order: train, then validation (where the
    score's scaling and the threshold are calibrated, see cellforge.anomaly.scores), then test.
    Many series in one table (``input.group``): each is windowed and split in time order on its own
    (no window crosses from one series into the next), one scaler fitted on every train part."""
    inp, t = spec.input, spec.training
    values, reconstruct = src.values, spec.reconstructs
    if not np.isfinite(values).all():
        raise SpecError([("data", "the series contains NaN or infinity")], what="data")
    series = []  # (rows, that series' splits of its windows)
    for key, rows in group_rows(src.groups, len(values)):
        n_windows = len(rows) - inp.window + reconstruct
        if n_windows < 3:
            which = "" if key is None else f" (series {key!r} of input.group)"
            raise SpecError([("input.window", f"a window of {inp.window} steps needs a series longer than "
                              f"{inp.window + 2} steps, got {len(rows)}{which}")], what="data")
        series.append((rows, split_indices(n_windows, t.val_fraction, t.test_fraction, t.seed, shuffle=False)))
    scaler = fit_scaler(np.concatenate([values[rows[: parts["train"][-1] + inp.window + (not reconstruct)]]
                                        for rows, parts in series]), inp.scale)
    state = {"kind": "series", "task": "anomaly", "method": spec.anomaly.method, "input_type": "numeric",
             "max_length": None, "num_features": values.shape[1], "window": inp.window, "horizon": 1,
             "columns": list(src.columns), "targets": list(src.columns), "num_targets": values.shape[1],
             "scaler": scaler, "target_scaler": scaler, "group": inp.group if src.groups is not None else None}
    spec = spec.updated(**{"input.num_features": values.shape[1]})
    pieces: dict[str, dict[str, list]] = {k: {"x": [], "y": [], "labels": []} for k in ("train", "val", "test")}
    for rows, parts in series:
        x, y = anomaly_windows(scale(values[rows], scaler), inp.window, reconstruct)
        # the label of the step each window scores: val_f1, val_auroc, the threshold
        scored = None if src.labels is None else src.labels[rows][inp.window - reconstruct:]
        for k, i in parts.items():
            pieces[k]["x"].append(x[i])
            pieces[k]["y"].append(y[i])
            if scored is not None:
                pieces[k]["labels"].append(scored[i])
    splits = {}
    for k, p in pieces.items():
        x = np.concatenate(p["x"])
        splits[k] = {"x": x, "lengths": np.full(len(x), inp.window, np.int64), "y": np.concatenate(p["y"])}
        if src.labels is not None:
            splits[k]["labels"] = np.concatenate(p["labels"])
    return spec, Prepared(splits, Preprocessor(state), list(splits["test"]["x"][:5]))


def _fit_series(spec: ModelSpec, src: Series) -> tuple[ModelSpec, Prepared]:
    if spec.task == "anomaly":
        return _fit_anomaly(spec, src)
    inp, t = spec.input, spec.training
    values = src.values
    names = _targets(spec, src)
    tcols = [src.columns.index(c) for c in names]
    n_windows = len(values) - inp.window - spec.horizon + 1
    if n_windows < 3:
        raise SpecError([("horizon", f"window ({inp.window}) + horizon ({spec.horizon}) needs a series longer than "
                          f"{inp.window + spec.horizon + 1} steps, got {len(values)}")], what="data")
    if not np.isfinite(values).all():
        raise SpecError([("data", "the series contains NaN or infinity")], what="data")
    parts = split_indices(n_windows, t.val_fraction, t.test_fraction, t.seed, shuffle=False)
    train_rows = values[: parts["train"][-1] + inp.window + spec.horizon]
    scaler = fit_scaler(train_rows, inp.scale)
    state = {"kind": "series", "task": "forecast", "input_type": "numeric", "max_length": None,
             "num_features": values.shape[1], "window": inp.window, "horizon": spec.horizon,
             "columns": list(src.columns), "targets": names, "num_targets": len(tcols), "scaler": scaler,
             "target_scaler": {k: [v[c] for c in tcols] for k, v in scaler.items()}}
    spec = spec.updated(**{"input.num_features": values.shape[1], "num_outputs": len(tcols)})
    pre = Preprocessor(state)
    starts = np.arange(n_windows)
    xs = np.stack([values[s: s + inp.window] for s in starts])
    ys = np.stack([values[s + inp.window: s + inp.window + spec.horizon][:, tcols] for s in starts])
    x = scale(xs, scaler).astype(np.float32)
    y = scale(ys, state["target_scaler"]).reshape(n_windows, -1).astype(np.float32)
    lengths = np.full(n_windows, inp.window, np.int64)
    splits = {k: {"x": x[i], "lengths": lengths[i], "y": y[i]} for k, i in parts.items()}
    test = parts["test"]
    naive = np.repeat(xs[test][:, -1:, tcols], spec.horizon, axis=1)
    baseline = {"naive_rmse": float(np.sqrt(np.mean((naive - ys[test]) ** 2)))} if len(test) else {}
    return spec, Prepared(splits, pre, [xs[i] for i in test], baseline)


def _targets(spec: ModelSpec, src) -> list[str]:
    tgt = spec.input.target
    names = src.columns if tgt is None else [tgt] if isinstance(tgt, str) else list(tgt)
    bad = [c for c in names if c not in src.columns]
    if bad:
        raise SpecError([("input.target", f"{bad} not among the series' columns {src.columns}")], what="data")
    return list(names)
