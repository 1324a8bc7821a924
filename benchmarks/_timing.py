"""Timing shared by the benchmark scripts (run as ``python benchmarks/<name>.py``: this folder is on
the path)."""

from __future__ import annotations

import time

import numpy as np


def median_s(fn, repeats: int) -> float:
    """The median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call (first-call
    allocations, lazy imports such as Captum's)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))
