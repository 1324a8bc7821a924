"""A bounded load generator over real HTTP on 127.0.0.1: ``concurrency`` clients mixing predictions and
streaming sessions for ``duration_s``, each step's answer checked against the whole-sequence prediction.

Every request attempt is counted; a failed one (transport error, 5xx, or any other status but 200) is
recorded with its reason, and a session's step is retried with the same ``offset`` (safe: a step
that was applied answers 409 naming what the session consumed, and the stream continues from there).
That 409, answering the retry of a step whose first try failed, is the same incident's recovery, not
another failure: it is counted as ``resumed``; a 409 on any other try is a failure.
A session is *lost* when its step answers 404: the store no longer knows it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np


@dataclass
class Tally:
    requests: int = 0
    failed: Counter = field(default_factory=Counter)  # reason -> count
    sessions: int = 0
    resumed: int = 0  # retries of a failed step answered 409 "offset": it had been applied; the stream goes on
    lost: int = 0
    steps_checked: int = 0
    wrong: list = field(default_factory=list)
    step_s: list = field(default_factory=list)
    predict_s: list = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    def summary(self) -> str:
        share = self.failures / max(self.requests, 1)
        return (f"{self.requests} requests, {self.failures} failed ({share:.3%}: {dict(self.failed)}), "
                f"{self.resumed} retries resumed after an applied step, {self.sessions} sessions, {self.lost} lost, {self.steps_checked} steps checked, "
                f"{len(self.wrong)} wrong")


async def run_load(base: str, model: str, x: np.ndarray, want: np.ndarray, concurrency: int, duration_s: float,
                   predict_share: float = 0.3, headers: dict | None = None, seed: int = 0) -> Tally:
    """``x``: (n, T, F) sequences; ``want[i, t]``: the probabilities of x[i][: t + 1] as a whole sequence."""
    tally, end = Tally(), time.monotonic() + duration_s
    url = f"/v1/models/{model}"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def call(http, method, path, body=None, session=None, retry=False):
        hdrs = {"x-session-id": session} if session else None
        tally.requests += 1
        t0 = time.perf_counter()
        try:
            r = await http.request(method, path, json=body, headers=hdrs)
        except httpx.TransportError as e:
            tally.failed[type(e).__name__] += 1
            return None
        if retry and r.status_code == 409 and r.json()["problems"][0]["field"] == "offset":
            tally.resumed += 1
        elif r.status_code != 200:
            tally.failed[f"{r.status_code} {r.json().get('error', '') if r.content[:1] == b'{' else ''}"] += 1
        return r, time.perf_counter() - t0

    async def stream(http, rng):
        got = None
        while got is None or got[0].status_code != 200:
            got = await call(http, "POST", f"{url}/sessions")
            if time.monotonic() > end + 30:
                return
        sid = got[0].json()["session_id"]
        tally.sessions += 1
        i = int(rng.integers(len(x)))
        t, total, retry = 0, x.shape[1], False
        while t < total:
            n = int(rng.integers(1, 4))
            chunk = x[i, t: t + n]
            got = await call(http, "POST", f"{url}/sessions/{sid}/step", {"inputs": chunk.tolist(), "offset": t}, sid,
                             retry)
            retry = got is None or got[0].status_code >= 500  # this step's next try is a retry of a failed one
            if got is None:
                await asyncio.sleep(0.05)
                continue
            r, dt = got
            if r.status_code == 200:
                probs = np.asarray(r.json()["probabilities"])
                tally.steps_checked += len(probs)
                if not np.allclose(probs, want[i, t: t + len(chunk)], atol=1e-4):
                    tally.wrong.append((sid, t))
                t += len(chunk)
                tally.step_s.append(dt)
            elif r.status_code == 404:
                tally.lost += 1
                return
            elif r.status_code == 409 and r.json()["problems"][0]["field"] == "offset":
                # an earlier try of this step was applied but its answer lost: continue from the session
                t = int(r.json()["problems"][0]["message"].split("consumed ")[1].split(" ")[0])
            else:
                await asyncio.sleep(0.05)
        await call(http, "DELETE", f"{url}/sessions/{sid}")

    async def worker(k):
        rng = np.random.default_rng(seed + k)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits, headers=headers) as http:
            while time.monotonic() < end:
                if random.Random(seed * 1000 + k + tally.requests).random() < predict_share:
                    rows = rng.integers(len(x), size=2)
                    got = await call(http, "POST", f"{url}/predict", {"inputs": x[rows].tolist()})
                    if got and got[0].status_code == 200:
                        tally.predict_s.append(got[1])
                        if not np.allclose(got[0].json()["probabilities"], want[rows, -1], atol=1e-4):
                            tally.wrong.append(("predict", rows.tolist()))
                else:
                    await stream(http, rng)

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return tally
