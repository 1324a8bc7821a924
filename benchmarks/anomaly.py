"""cellforge's anomaly detector against a matrix-profile discord detector (stumpy), in one run.

    ray-slot --alone .venv/bin/python benchmarks/anomaly.py          # a few minutes on 2 cores
    ray-slot --alone .venv/bin/python benchmarks/anomaly.py --only-streams --streams 1000

The data: the UCR anomaly archive's InternalBleeding16 (``cellforge.data.anomalies``), 1,200 normal
training steps and 7,501 test steps with one labelled anomaly. cellforge trains a forecast detector
(GRU, 64-step window) on the training steps with Ray Train (one worker) and scores the test steps;
stumpy computes the test series' matrix profile with the same subsequence length (a self-join, the
usual discord baseline of the UCR archive) and an AB-join against the training steps (each test
subsequence's distance to its nearest normal one). Every score is aligned with the step that ends
its window, so both are causal.

Streams (``--streams``, default 1,000): the trained detector deployed twice on the embedded Ray (one
replica, the in-memory session store), with dynamic batching (the default) and without; each of the
streams is a session stepped one point at a time, all at once (one HTTP client each, asyncio). Figures:
points scored per second over the timed steps, each step's p50 / p99 latency, the mean batch (steps
per forward pass, from the endpoint's metrics), and the largest gap between a stream's scores and
``model.score`` on the same points (the two must agree).

Quality: the UCR rule (top score within 100 steps of the anomaly), AUROC and average precision
(threshold-free), and the best point-wise and point-adjusted F1 over thresholds; cellforge's F1 at
its own calibrated threshold too. Time: seconds per 1,000 points scored, after a warm-up (numba's
compilation, the network's first call), median of ``--repeats``. The machine may be shared: note
``uptime``'s load average next to the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import numpy as np
from _timing import median_s


def quality(scores: np.ndarray, labels: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    from cellforge import metrics

    best = metrics.best_f1_threshold(scores, labels)
    m = metrics.detection(scores, labels, best)
    out = {"ucr": m["ucr"], "auroc": m["auroc"], "ap": m["average_precision"], "best_f1": m["f1"],
           "best_pa_f1": m["pa_f1"]}
    if threshold is not None:
        own = metrics.detection(scores, labels, threshold)
        out.update(f1_own=own["f1"], pa_f1_own=own["pa_f1"])
    return out


def causal(profile: np.ndarray, m: int, n: int) -> np.ndarray:
    """A subsequence score (one per start) as a per-step score at the step ending it; NaN before."""
    out = np.full(n, np.nan)
    out[m - 1:] = profile
    return out


async def _streams(base: str, name: str, x: np.ndarray, window: int, n: int, points: int) -> dict:
    """``n`` sessions: each sends a window of its own slice of ``x`` (warm-up, timed apart), then its next
    ``points`` points one step each, all streams at once; the scores and every step's latency."""
    import aiohttp

    url = f"{base}/v1/models/{name}/sessions"
    starts = np.linspace(0, len(x) - window - points - 1, n).astype(int)
    lat: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n),
                                     timeout=aiohttp.ClientTimeout(total=600)) as http:
        async def post(path: str, body: dict | None = None) -> dict:
            async with http.post(path, json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"{name}: HTTP {r.status} {await r.text()}")
                return await r.json()

        sids = [(await post(url))["session_id"] for _ in range(n)]
        await asyncio.gather(*(post(f"{url}/{sid}/step", {"inputs": x[a: a + window].tolist()})
                               for sid, a in zip(sids, starts)))

        async def stream(sid: str, a: int) -> list:
            scores = []
            for t in range(a + window, a + window + points):
                t0 = time.perf_counter()
                scores += (await post(f"{url}/{sid}/step", {"inputs": [float(x[t])]}))["scores"]
                lat.append(time.perf_counter() - t0)
            return scores

        t0 = time.perf_counter()
        scores = await asyncio.gather(*(stream(sid, a) for sid, a in zip(sids, starts)))
        wall = time.perf_counter() - t0
        await asyncio.gather(*(http.delete(f"{url}/{sid}") for sid in sids))
    ms = np.asarray(lat) * 1000
    return {"points_per_s": n * points / wall, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "scores": scores, "starts": starts}


def streams(bundle, x: np.ndarray, window: int, n: int, points: int) -> None:
    """Points per second for ``n`` concurrent streams through one endpoint, with and without batching."""
    import cellforge as cf
    from cellforge.serving import undeploy

    model = cf.load(bundle)
    want = model.score(x)
    rows = {}
    for name, batching in (("streams-batched", {"max_batch_size": min(n, 256)}), ("streams-unbatched", {"enabled": False})):
        ep = cf.deploy(bundle, name, num_replicas=1, max_ongoing_requests=n, batching=batching)
        try:
            r = asyncio.run(_streams(ep.base_url, name, x, window, n, points))
            stats = cf.Client(ep.base_url).metrics(name)
        finally:
            undeploy(name)
        gap = max(float(np.max(np.abs(np.asarray(s, float) - want[a + window: a + window + points])))
                  for s, a in zip(r["scores"], r["starts"]))
        rows[name] = {**{k: r[k] for k in ("points_per_s", "p50", "p99")}, "gap": gap,
                      "mean_batch": stats["requests"] / max(stats["batches"], 1)}
    print(f"\n{n} concurrent streams, {points} points each, one replica (load average {os.getloadavg()[0]:.1f})")
    print(f"{'endpoint':20s} {'points/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'mean batch':>10s} {'max |score - model.score|':>26s}")
    for name, row in rows.items():
        print(f"{name:20s} {row['points_per_s']:9.0f} {row['p50']:7.1f} {row['p99']:7.1f} {row['mean_batch']:10.1f} "
              f"{row['gap']:26.2e}")
    b, u = rows["streams-batched"], rows["streams-unbatched"]
    print(f"batching: x{b['points_per_s'] / u['points_per_s']:.2f} points/s")
    print(json.dumps({k: {m: round(v, 4) for m, v in row.items()} for k, row in rows.items()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--streams", type=int, default=1000, help="concurrent streams through one endpoint (0: skip)")
    ap.add_argument("--points", type=int, default=20, help="points each stream steps after its warm-up")
    ap.add_argument("--only-streams", action="store_true", help="train, then measure the streams only")
    args = ap.parse_args()
    import stumpy

    import cellforge as cf
    from cellforge.data.anomalies import internal_bleeding

    train, test = internal_bleeding("train"), internal_bleeding("test")
    x, labels, m = test.values[:, 0], test.labels, args.window
    print(f"InternalBleeding16: {len(train.values)} training steps, {len(x)} test steps, anomaly at "
          f"{np.flatnonzero(labels)[[0, -1]].tolist()}; load average {os.getloadavg()[0]:.1f}")

    spec = cf.ModelSpec(task="anomaly", cell="gru", hidden_size=24, input={"window": m},
                        anomaly={"method": "forecast"},
                        training={"epochs": args.epochs, "batch_size": 32, "lr": 3e-3, "val_fraction": 0.2,
                                  "test_fraction": 0.1})
    t = time.perf_counter()
    result = cf.fit(spec, train, workers=1, verbose=False)
    print(f"cellforge: trained in {time.perf_counter() - t:.0f} s (Ray Train, 1 worker, {args.epochs} epochs)")
    if args.only_streams:
        return streams(result.bundle, x, m, args.streams, args.points)
    rows = []
    for runtime in ("torch", "numpy"):
        model = cf.load(result.bundle, framework=runtime)
        s = model.score(x)
        secs = median_s(lambda model=model: model.score(x), args.repeats)
        threshold = model.anomaly_state()["anomaly"]["threshold"]
        rows.append((f"cellforge forecast ({runtime})", secs, quality(s, labels, threshold)))
    self_join = causal(stumpy.stump(x, m)[:, 0].astype(np.float64), m, len(x))
    secs = median_s(lambda: stumpy.stump(x, m), args.repeats)
    rows.append(("stumpy discords (self-join)", secs, quality(self_join, labels)))
    ab = causal(stumpy.stump(x, m, train.values[:, 0], ignore_trivial=False)[:, 0].astype(np.float64), m, len(x))
    secs = median_s(lambda: stumpy.stump(x, m, train.values[:, 0], ignore_trivial=False), args.repeats)
    rows.append(("stumpy AB-join vs normal", secs, quality(ab, labels)))

    print(f"\n{'detector':32s} {'ms/1k pts':>10s} {'UCR':>4s} {'AUROC':>6s} {'AP':>6s} {'bestF1':>7s} "
          f"{'bestPA-F1':>9s} {'F1@own':>7s}")
    base = rows[2][1]
    for name, secs, q in rows:
        print(f"{name:32s} {secs / len(x) * 1e6:10.2f} {q['ucr']:4.0f} {q['auroc']:6.3f} {q['ap']:6.3f} "
              f"{q['best_f1']:7.3f} {q['best_pa_f1']:9.3f} {q.get('f1_own', float('nan')):7.3f}"
              f"   time x{secs / base:.2f} of stumpy's self-join")
    print(f"load average {os.getloadavg()[0]:.1f}")
    if args.streams:
        streams(result.bundle, x, m, args.streams, args.points)


if __name__ == "__main__":
    main()
