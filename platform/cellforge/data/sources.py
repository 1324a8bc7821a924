"""Data sources: ``(X, y)`` of numpy arrays / lists / strings, :class:`Sequences`, :class:`Series`,
pandas DataFrames, CSV or Parquet paths, and Ray Data datasets — normalised by ``to_source``.

    >>> import numpy as np
    >>> to_source(np.arange(10.0), ModelSpec(task="forecast")).values.shape
    (10, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellforge.errors import SpecError
from cellforge.spec import ModelSpec


@dataclass
class Sequences:
    """Sequence inputs and their labels/values/tags. ``x``: (N, T, F) array, a list of (T_i, F)
    arrays, a list of strings (text), or a list of token lists."""

    x: Any
    y: Any
    name: str = "sequences"
    groups: Any = None  # one key per row: rows sharing a key go to the same split (e.g. one date's spellings)
    # official splits: one of 'train', 'validation' ('val', 'dev') or 'test' per row, kept exactly
    # (cellforge.data.preprocess.split_parts); None: split at random by the spec's fractions
    split: Any = None


@dataclass
class Series:
    """A (multivariate) time series: ``values`` (T, F), one column per feature."""

    values: np.ndarray
    columns: list[str] = field(default_factory=list)
    name: str = "series"
    labels: np.ndarray | None = None  # anomaly: 1 at each anomalous step, for metrics (never for training)
    # anomaly: one key per step when the table holds many series (one per machine), each in time order;
    # windows never cross from one series into the next
    groups: np.ndarray | None = None

    def __post_init__(self):
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.ndim == 1:
            self.values = self.values[:, None]
        if self.groups is not None:
            self.groups = np.asarray(self.groups)
            if self.groups.shape != (len(self.values),):
                raise ValueError(f"groups: expected one key per step, shape ({len(self.values)},), "
                                 f"got {self.groups.shape}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels).astype(bool)
            if self.labels.shape != (len(self.values),):
                raise ValueError(f"labels: expected one per step, shape ({len(self.values)},), got {self.labels.shape}")
        if not self.columns:
            self.columns = [f"x{i}" for i in range(self.values.shape[1])]


def group_rows(groups: Any, n: int) -> list[tuple[Any, np.ndarray]]:
    """Each series' key and its row indices (in row order), series in order of first appearance;
    ``[(None, all n rows)]`` without groups.

        >>> [(k, r.tolist()) for k, r in group_rows(np.array(["b", "a", "b", "a"]), 4)]
        [('b', [0, 2]), ('a', [1, 3])]
    """
    if groups is None:
        return [(None, np.arange(n))]
    keys, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    return [(keys[k].item() if hasattr(keys[k], "item") else keys[k], np.flatnonzero(inverse == k))
            for k in np.argsort(first, kind="stable")]


def with_splits(spec: ModelSpec, train: Any, validation: Any = None, test: Any = None) -> Sequences | Series:
    """Official splits (a benchmark's own files) as one source whose ``split`` marks each row's part, so
    ``prepare`` keeps them exactly; with neither ``validation`` nor ``test``, ``train`` as it is.

        >>> s = with_splits(ModelSpec(), ([[1.0]], [0]), test=([[2.0], [3.0]], [1, 0]))
        >>> s.x, s.split
        ([[1.0], [2.0], [3.0]], ['train', 'test', 'test'])
    """
    src = to_source(train, spec)
    if validation is None and test is None:
        return src
    parts = {"train": src, "validation": validation, "test": test}
    for name, data in parts.items():
        part = to_source(data, spec) if data is not None else None
        if isinstance(part, Series):
            raise SpecError([(name, "official splits are for sequences (inputs with targets); a time series is "
                                    "split in time order by the spec's fractions")], what="data")
        if part is not None and part.split is not None:
            raise SpecError([(name, "already has a split column: give one table with input.split, or separate "
                                    "train / validation / test data")], what="data")
        parts[name] = part
    given = {k: v for k, v in parts.items() if v is not None}
    has_groups = all(p.groups is not None for p in given.values())
    return Sequences([x for p in given.values() for x in list(p.x)], [y for p in given.values() for y in list(p.y)],
                     name=src.name, groups=[g for p in given.values() for g in p.groups] if has_groups else None,
                     split=[k for k, p in given.items() for _ in range(len(p.x))])


def to_source(data: Any, spec: ModelSpec) -> Sequences | Series:
    """Normalise any supported source into Sequences or Series."""
    if isinstance(data, (Sequences, Series)):
        return data
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        return from_folder(Path(data), spec)
    if isinstance(data, (str, Path)):
        table = Path(data)
        data = read_table(table)
        if spec.input.type == "audio":  # a manifest: clip paths relative to the manifest's own folder
            src = _from_frame(data, spec)
            src.x = [str(table.parent / p) if not Path(p).is_absolute() else p for p in src.x]
            return src
    if type(data).__module__.startswith("ray.data"):
        data = data.to_pandas()
    if isinstance(data, tuple) and len(data) == 2:
        return Sequences(*data)
    if type(data).__name__ == "DataFrame":
        return _from_frame(data, spec)
    if spec.task in ("forecast", "anomaly") and isinstance(data, (np.ndarray, list)):
        return Series(np.asarray(data, dtype=np.float64))
    raise SpecError([("data", "expected (X, y), Sequences, Series, a DataFrame, a CSV/Parquet path or a "
                      f"Ray Dataset, got {type(data).__name__}")], what="data")


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def from_folder(root: Path, spec: ModelSpec) -> Sequences:
    """A folder with one subfolder per label: audio clips (input.type audio: WAV/FLAC/OGG paths) or
    text files (input.type text: each file's text), in name order; the subfolder's name is the label."""
    if spec.input.type not in ("audio", "text"):
        raise SpecError([("data", f"a folder of labelled files is read for input.type 'audio' or 'text', got "
                                  f"{spec.input.type!r}")], what="data")
    x, y = [], []
    for label in sorted(d for d in root.iterdir() if d.is_dir()):
        for f in sorted(label.iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            if spec.input.type == "audio":
                if f.suffix.lower() in AUDIO_SUFFIXES:
                    x.append(str(f))
                    y.append(label.name)
            else:
                x.append(f.read_text(encoding="utf-8", errors="replace"))
                y.append(label.name)
    if not x:
        raise SpecError([("data", f"no labelled files in {root}: expected one subfolder per label"
                                  + (f" holding {', '.join(AUDIO_SUFFIXES)} files" if spec.input.type == "audio" else ""))],
                        what="data")
    return Sequences(x, y, name=root.name)


def read_table(path: Path):
    import pandas as pd

    if not path.exists():
        raise SpecError([("data", f"file not found: {path}")], what="data")
    if path.suffix in (".csv", ".txt", ".tsv"):
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise SpecError([("data", f"unsupported file type {path.suffix!r}; use .csv, .tsv or .parquet")], what="data")


def _from_frame(df, spec: ModelSpec) -> Sequences | Series:
    inp = spec.input
    missing = [c for c in [*(inp.columns or []), *_as_list(inp.target), *([inp.group] if inp.group else []),
                           *([inp.split] if inp.split else [])] if c not in df.columns]
    if missing:
        raise SpecError([("input.columns", f"columns {missing} not in the data; it has {list(df.columns)}")],
                        what="data")
    targets = _as_list(inp.target)
    if spec.task in ("forecast", "anomaly"):
        if inp.group is not None and spec.task == "forecast":
            raise SpecError([("input.group", "a forecaster learns one series; many series in one table (a group "
                                             "column) are supported for task 'anomaly'")], what="data")
        cols = inp.columns or [c for c in df.columns
                               if c != inp.group and np.issubdtype(df[c].dtype, np.number)]
        groups = None if inp.group is None else df[inp.group].to_numpy()
        return Series(df[cols].to_numpy(np.float64), list(cols), name="table", groups=groups)
    if not targets:
        raise SpecError([("input.target", "name the label/value column of a table source")], what="data")
    feats = inp.columns or [c for c in df.columns if c not in (*targets, inp.group, inp.split)]
    split = df[inp.split].astype(str).tolist() if inp.split else None
    if inp.type in ("text", "audio"):  # one row per input: a string, or a clip's path
        return Sequences(df[feats[0]].astype(str).tolist(), df[targets[0]].to_numpy(), name="table", split=split)
    if inp.group is None:  # one row = one sequence of length 1 is rarely meant: require a group
        raise SpecError([("input.group", "numeric table sources need a column that groups rows into sequences")],
                        what="data")
    xs, ys, splits = [], [], []
    for key, g in df.groupby(inp.group, sort=False):
        xs.append(g[feats].to_numpy(np.float32))
        y = g[targets].to_numpy()
        ys.append(y[:, 0] if spec.task == "tag" else (y[0, 0] if spec.task == "classify" else y[0]))
        if inp.split:
            values = set(g[inp.split].astype(str))
            if len(values) != 1:
                raise SpecError([("input.split", f"the rows of sequence {key!r} are in several splits: "
                                                 f"{sorted(values)}")], what="data")
            splits.append(values.pop())
    return Sequences(xs, ys if spec.task == "tag" else np.asarray(ys), name="table", split=splits if inp.split else None)


def _as_list(v) -> list[str]:
    return [] if v is None else [v] if isinstance(v, str) else list(v)
