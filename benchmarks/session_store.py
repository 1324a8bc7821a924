"""The Redis session store's units, one Redis against a Redis Cluster of three primaries (both started
here on 127.0.0.1, append-only file fsynced every second), no Ray: a step's store calls (get + advance,
one Lua script each), steps per Redis core-second, and the cost of counting a model's live sessions (one
bucket in one Redis, 4096 buckets summed over the cluster) as client latency and server CPU, and the
memory a stepped session takes (its hash and its live-set entry: used_memory over all nodes).

    .venv/bin/python benchmarks/session_store.py                  # 2,000 live sessions, 4,000 steps
    .venv/bin/python benchmarks/session_store.py --sessions 20000 --steps 20000 --concurrency 64

Both stores run in the same process and the same run, so compare the ratios: the machine may be busy.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
from _redis_cluster import RedisClusterServers  # noqa: E402
from _redis_server import RedisServer  # noqa: E402

from cellforge.serving.redis_store import RedisSessions  # noqa: E402


def server_memory(clients) -> int:
    return sum(int(c.info("memory")["used_memory"]) for c in clients)


def server_cpu(clients) -> float:
    """CPU seconds the redis-servers have used (user + system, all of them)."""
    return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in (c.info("cpu") for c in clients))


async def measure(url: str, clients, sessions: int, steps: int, concurrency: int) -> dict[str, float]:
    st = RedisSessions(url)
    # a digits LSTM's state (h=64, two layers of h and c): the same bytes as a real session's
    state = [(np.zeros((1, 64), np.float32), np.zeros((1, 64), np.float32))] * 2
    sem = asyncio.Semaphore(concurrency)

    async def create():
        async with sem:
            return await st.create("bench", "v", 600)

    mem0 = server_memory(clients)
    sids = await asyncio.gather(*(create() for _ in range(sessions)))
    lat: list[float] = []

    async def step(sid: str):
        async with sem:
            t0 = time.perf_counter()
            s = await st.get(sid, "bench")
            assert await st.advance(sid, s["steps"], state, s["steps"] + 1, "bench") == "ok"
            lat.append(time.perf_counter() - t0)

    cpu0, t0 = server_cpu(clients), time.perf_counter()
    await asyncio.gather(*(step(sids[i % sessions]) for i in range(steps)))
    wall, cpu = time.perf_counter() - t0, server_cpu(clients) - cpu0
    # every session has stepped (steps >= sessions): its hash holds a state, its id is in a live set
    per_session = (server_memory(clients) - mem0) / sessions
    counts, cpu0 = [], server_cpu(clients)
    for _ in range(20):
        t0 = time.perf_counter()
        assert await st.count("bench") == sessions
        counts.append(time.perf_counter() - t0)
    count_cpu = (server_cpu(clients) - cpu0) / 20
    await st.close()
    return {"step p50 ms": 1e3 * statistics.median(lat), "steps/s": steps / wall,
            "steps per Redis core-second": steps / cpu, "count p50 ms": 1e3 * statistics.median(counts),
            "count Redis CPU ms": 1e3 * count_cpu, "bytes per session": per_session}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cf-bench-store-"))
    single = RedisServer(root / "single", fsync="everysec").start()
    try:
        with RedisClusterServers(root / "cluster", primaries=3) as cluster:
            rows = {"one Redis": asyncio.run(measure(single.url, [cluster.client(single)], a.sessions, a.steps,
                                                     a.concurrency)),
                    "Redis Cluster (3 primaries)": asyncio.run(measure(cluster.url, [cluster.client(n) for n in
                                                                                     cluster.nodes],
                                                                       a.sessions, a.steps, a.concurrency))}
    finally:
        single.stop()
        shutil.rmtree(root, ignore_errors=True)
    keys = list(next(iter(rows.values())))
    print(f"{a.sessions} live sessions, {a.steps} steps (get + advance) at concurrency {a.concurrency}")
    for k in keys:
        print(f"{k:30}" + "".join(f"{row[k]:>16.2f}  [{name}]" for name, row in rows.items()))
    one, cl = rows.values()
    print(f"cluster / one Redis: step p50 {cl['step p50 ms'] / one['step p50 ms']:.2f}x, steps per Redis "
          f"core-second {cl['steps per Redis core-second'] / one['steps per Redis core-second']:.2f}x, count p50 "
          f"{cl['count p50 ms'] / one['count p50 ms']:.0f}x")
    print(f"a count in the cluster costs as much Redis CPU as {cl['count Redis CPU ms'] * cl['steps per Redis core-second'] / 1e3:.0f} steps")


if __name__ == "__main__":
    main()
