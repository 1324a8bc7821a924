"""Search spaces: dimensions over any spec field (dotted paths), checked before a trial starts.

    >>> import cellforge as cf
    >>> space = {"cell": cf.choice(["lstm", "gru"]), "training.lr": cf.loguniform(1e-4, 1e-2)}
    >>> check_space(cf.ModelSpec(), space)     # every bad dimension, with its path: none here
    []
    >>> check_space(cf.ModelSpec(), {"hidden_size": cf.choice([32, 0])})[0][0]
    'space.hidden_size'

A job file writes the same space as mappings: ``{choice: [lstm, gru]}``, ``{loguniform: [1e-4,
1e-2]}``; a plain list means ``choice`` and a plain value fixes the field.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from cellforge.errors import SpecError
from cellforge.spec import ModelSpec

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
# fields that change how the data is split or preprocessed: a space over any of them makes each
# trial prepare its own data
DATA_FIELDS = ("task", "horizon", "input.", "training.val_fraction", "training.test_fraction", "training.seed")
MAX_COMBINATIONS = 512  # spaces this small are checked combination by combination


@dataclass(frozen=True)
class Dim:
    """One search dimension; build it with ``choice``, ``grid``, ``uniform``, ``loguniform`` or ``randint``."""

    kind: str
    values: tuple

    def to_tune(self, as_grid: bool = False):
        from ray import tune

        if self.kind == "grid" or (as_grid and self.kind == "choice"):
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.kind)(*self.values)

    def probes(self) -> list[Any]:
        """The values checked against the spec: every value of a finite dimension, a range's ends."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        lo, hi = self.values
        return [lo, hi - 1] if self.kind == "randint" else [lo, hi]

    @property
    def finite(self) -> bool:
        return self.kind in ("choice", "grid")


def choice(values) -> Dim:
    """Sample one of ``values`` (with ``search="grid"``: try every one)."""
    return Dim("choice", tuple(values))


def grid(values) -> Dim:
    """Try every one of ``values``; ``trials`` must then be a multiple of the grid's size."""
    return Dim("grid", tuple(values))


def uniform(low: float, high: float) -> Dim:
    return Dim("uniform", (low, high))


def loguniform(low: float, high: float) -> Dim:
    """Uniform in log space, e.g. a learning rate: ``loguniform(1e-4, 1e-2)``."""
    return Dim("loguniform", (low, high))


def randint(low: int, high: int) -> Dim:
    """An integer in ``[low, high)`` (``high`` excluded, as in ``range``)."""
    return Dim("randint", (low, high))


def as_space(space: Any, where: str = "space") -> tuple[dict[str, Dim], list[tuple[str, str]]]:
    """Normalise a space (Dims, job-file mappings, lists, fixed values) and list what is malformed."""
    problems: list[tuple[str, str]] = []
    out: dict[str, Dim] = {}
    if not isinstance(space, dict) or not space:
        return {}, [(where, "expected a non-empty mapping of spec field (dotted path) -> dimension, "
                            f"got {space!r}")]
    for path, dim in space.items():
        at = f"{where}.{path}"
        if not isinstance(path, str) or not path:
            problems.append((where, f"dimension names are spec fields such as 'training.lr', got {path!r}"))
            continue
        if isinstance(dim, dict):
            if len(dim) != 1 or next(iter(dim)) not in KINDS:
                problems.append((at, f"expected one of {{{', '.join(f'{k}: ...' for k in KINDS)}}}, got {dim!r}"))
                continue
            (kind, args), = dim.items()
            dim = Dim(kind, tuple(args) if isinstance(args, (list, tuple)) else (args,))
        elif isinstance(dim, (list, tuple)):
            dim = Dim("choice", tuple(dim))
        elif not isinstance(dim, Dim):
            dim = Dim("choice", (dim,))  # a fixed value
        msg = _check_dim(dim)
        if msg:
            problems.append((at, msg))
        else:
            out[path] = dim
    return out, problems


def _check_dim(dim: Dim) -> str | None:
    if dim.kind not in KINDS:
        return f"unknown dimension kind {dim.kind!r}; known kinds: {list(KINDS)}"
    if dim.finite:
        return None if dim.values else f"{dim.kind} needs at least one value"
    if len(dim.values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in dim.values):
        return f"{dim.kind} takes two numbers [low, high], got {list(dim.values)}"
    lo, hi = dim.values
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        return f"{dim.kind} needs low < high, got [{lo}, {hi}]"
    if dim.kind == "loguniform" and lo <= 0:
        return f"loguniform needs low > 0, got {lo}"
    if dim.kind == "randint" and not (isinstance(lo, int) and isinstance(hi, int)):
        return f"randint takes integers, got [{lo}, {hi}]"
    return None


def check_space(spec: ModelSpec, space: dict[str, Dim], where: str = "space") -> list[tuple[str, str]]:
    """Apply every dimension's probe values to ``spec``; each invalid value is one problem naming
    its dimension. Small spaces are also checked combination by combination (e.g.
    ``training.val_fraction`` + ``training.test_fraction``)."""
    problems: list[tuple[str, str]] = []
    for path, dim in space.items():
        for value in dim.probes():
            msg = _try(spec, {path: value})
            if msg:
                problems.append((f"{where}.{path}", f"value {value!r} gives an invalid spec: {msg}"))
        if path == "framework" and "tensorflow" in dim.probes():
            problems += _check_backend(where)
    if problems:
        return problems
    sizes = [len(d.probes()) for d in space.values()]
    if math.prod(sizes) <= MAX_COMBINATIONS:
        for combo in itertools.product(*(d.probes() for d in space.values())):
            changes = dict(zip(space, combo))
            msg = _try(spec, changes)
            if msg:
                return [(where, f"the combination {changes} gives an invalid spec: {msg}")]
    return problems


def _try(spec: ModelSpec, changes: dict[str, Any]) -> str | None:
    try:
        spec.updated(**changes)
    except SpecError as e:
        return "; ".join(f"{p or '<root>'}: {m}" for p, m in e.problems)
    return None


def _check_backend(where: str) -> list[tuple[str, str]]:
    import importlib.util

    # found, not imported: importing TensorFlow here would cost the driver seconds
    if importlib.util.find_spec("cellforge.backends.keras") is None or \
            importlib.util.find_spec("tensorflow") is None:
        return [(f"{where}.framework", "'tensorflow' is not available in this installation (no Keras backend)")]
    return []


def affects_data(space: dict[str, Dim]) -> bool:
    """Whether a dimension changes the data split or preprocessing (then each trial prepares its own)."""
    return any(p == f or (f.endswith(".") and p.startswith(f)) for p in space for f in DATA_FIELDS)
