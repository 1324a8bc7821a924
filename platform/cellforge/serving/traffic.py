"""Traffic control between a model's live version and a canary: which requests and sessions the canary
takes, what each version answered, and when a canary is rolled back. Plain Python (no Ray, no Serve):
``serving.app`` routes with it, ``serving.sessions`` keeps the shared record, ``serving.deploy`` acts.

    cellforge deploy runs/v2/bundle --name digits --canary 10 --max-error-rate 0.05
    cellforge canary digits        # both versions' requests, errors and latency
    cellforge promote digits       # or: cellforge rollback digits

A canary is a second Serve application (``<name>@canary``, no HTTP route of its own): the live
replicas send it ``canary`` percent of new predictions and new sessions through a DeploymentHandle.
A prediction the canary fails is answered by the live version, so the client sees no failure; a
session stays on the version that started it (its version is kept with its state in the session store).

    >>> [takes_canary(n, 25) for n in range(8)]
    [False, False, False, True, False, False, False, True]
    >>> sum(takes_canary(n, 10) for n in range(1000))
    100
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from cellforge.errors import Strict

# latency buckets (ms) of the per-version summaries: 1.25x apart from 0.25 ms to ~2 min, so replicas'
# counts add up and a p50 or p99 is read to within 25%
BUCKETS_MS = [0.25 * 1.25 ** i for i in range(60)]
TIMEOUT_S = 10.0  # a canary call that takes longer is a failure: the live version answers instead


class CanaryConfig(Strict):
    """How much traffic a canary takes and when it is rolled back by itself (the ``deploy`` flags)."""

    what = "canary"

    canary: float = Field(gt=0, lt=100)  # percent of new predictions and new sessions
    # roll back by itself once its error rate (failed predictions and steps, over all it was sent) exceeds
    # this share, with at least min_requests sent to it; None: only by command
    max_error_rate: float | None = Field(None, ge=0, lt=1)
    min_requests: int = Field(20, gt=0)


def takes_canary(n: int, percent: float) -> bool:
    """Whether the ``n``-th request (0-based, counted by one replica) goes to a canary taking ``percent``:
    exactly ``percent`` of every run of 100 / gcd requests, spread evenly (not random, so it is testable)."""
    return math.floor((n + 1) * percent / 100) > math.floor(n * percent / 100)


@dataclass
class VersionStats:
    """What one version answered, as seen by the live replicas that routed to it (mergeable across
    replicas): requests sent, failures (5xx, a crash, a timeout), and a latency histogram."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))

    def add(self, seconds: float, ok: bool) -> None:
        self.requests += 1
        self.errors += not ok
        ms = seconds * 1000
        self.buckets[bisect.bisect_left(BUCKETS_MS, ms)] += 1  # the first bucket whose bound >= ms

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "buckets": list(self.buckets)}

    @classmethod
    def merged(cls, parts: list[dict[str, Any]]) -> VersionStats:
        out = cls()
        for p in parts:
            out.requests += p["requests"]
            out.errors += p["errors"]
            out.buckets = [a + b for a, b in zip(out.buckets, p["buckets"])]
        return out

    def quantile_ms(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (None before any request)."""
        if not self.requests:
            return None
        rank, seen = q * self.requests, 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank and n:
                return round(BUCKETS_MS[min(i, len(BUCKETS_MS) - 1)], 2)
        return round(BUCKETS_MS[-1], 2)

    def summary(self) -> dict[str, Any]:
        """Requests, errors, error rate, p50 and p99 (ms).

            >>> s = VersionStats()
            >>> s.add(0.002, ok=True); s.add(0.004, ok=False)
            >>> s.summary()
            {'requests': 2, 'errors': 1, 'error_rate': 0.5, 'p50_ms': 2.33, 'p99_ms': 4.55}
        """
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.errors / self.requests, 4) if self.requests else None,
                "p50_ms": self.quantile_ms(0.5), "p99_ms": self.quantile_ms(0.99)}


def verdict(stats: VersionStats, cfg: CanaryConfig) -> str | None:
    """Why a canary should be rolled back now (None: keep it).

    >>> cfg = CanaryConfig(canary=10, max_error_rate=0.05, min_requests=20)
    >>> verdict(VersionStats(requests=19, errors=19), cfg) is None        # too few requests to judge
    True
    >>> verdict(VersionStats(requests=20, errors=2), cfg)
    'error rate 10.0% over 20 requests exceeds max_error_rate 5.0%'
    """
    if cfg.max_error_rate is None or stats.requests < cfg.min_requests:
        return None
    rate = stats.errors / stats.requests
    if rate <= cfg.max_error_rate:
        return None
    return (f"error rate {rate:.1%} over {stats.requests} requests exceeds max_error_rate "
            f"{cfg.max_error_rate:.1%}")


def public(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """A canary's record as ``GET .../metrics`` shows it (without its deploy config: it holds keys)."""
    if entry is None:
        return None
    return {k: entry[k] for k in ("version", "canary", "max_error_rate", "min_requests", "state", "reason")}
