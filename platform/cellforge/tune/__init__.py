"""Sweeps with Ray Tune: ``sweep`` and the search-space builders.

Modules: ``sweep`` (the driver), ``space`` (dimensions, checked before a trial starts),
``trial`` (one trial = one Ray Train run), ``progress`` (the live table), ``result`` (``Sweep``:
leaderboard, plots, the best bundle).
"""

from cellforge.tune.space import choice, grid, loguniform, randint, uniform
from cellforge.tune.sweep import sweep

__all__ = ["choice", "grid", "loguniform", "randint", "sweep", "uniform"]
