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


def to_source(data: Any, spec: ModelSpec) -> Sequences | Series:
    """Normalise any supported source into Sequences or Series."""
    if isinstance(data, (Sequences, Series)):
        return data
    if isinstance(data, (str, Path)):
        data = read_table(Path(data))
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
    missing = [c for c in [*(inp.columns or []), *_as_list(inp.target), *([inp.group] if inp.group else [])]
               if c not in df.columns]
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
    feats = inp.columns or [c for c in df.columns if c not in (*targets, inp.group)]
    if inp.type == "text":
        return Sequences(df[feats[0]].astype(str).tolist(), df[targets[0]].to_numpy(), name="table")
    if inp.group is None:  # one row = one sequence of length 1 is rarely meant: require a group
        raise SpecError([("input.group", "numeric table sources need a column that groups rows into sequences")],
                        what="data")
    xs, ys = [], []
    for _, g in df.groupby(inp.group, sort=False):
        xs.append(g[feats].to_numpy(np.float32))
        y = g[targets].to_numpy()
        ys.append(y[:, 0] if spec.task == "tag" else (y[0, 0] if spec.task == "classify" else y[0]))
    return Sequences(xs, ys if spec.task == "tag" else np.asarray(ys), name="table")


def _as_list(v) -> list[str]:
    return [] if v is None else [v] if isinstance(v, str) else list(v)
