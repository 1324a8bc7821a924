"""Time a small ``fit`` spends outside its epochs on a running Ray, and where it goes.

    .venv/bin/python benchmarks/fit_overhead.py [--framework torch|tensorflow] [--repeats 2]

Fits a tiny LSTM (512 sequences, 2 epochs) several times on one embedded Ray, taking turns between
three ways of running it, after one warm-up fit of each that is not counted:

- in process: the default for one CPU worker on a local Ray (``cellforge.train.fit.in_process``, the
  loop called without Ray Train): nothing starts;
- lean actors: Ray Train's actors with cellforge's lean trainer (``_ray.lean_trainer``: no
  DatasetManager actor, no autoscaler requests on a local node), ``CELLFORGE_TRAIN_IN_PROCESS=0``;
- Ray Train's defaults.

For the last fit of each actor kind it prints when each Ray Train actor was created, started running
and finished ``__init__`` (Ray's state API, seconds since ``fit`` was called): every actor is a process
of its own, and starting processes is most of the cost on a small machine. The machine may be shared:
compare the kinds, measured in the same run, and give the load average (printed) next to any figure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import tempfile
import time

import numpy as np

KINDS = ("in process", "lean actors", "Ray Train defaults")


def fit_once(cf, spec, data, kind: str, storage: str, i: int) -> tuple[float, float, float]:
    """(wall seconds, seconds in epochs, start time) of one fit of ``kind``."""
    fit_module = importlib.import_module("cellforge.train.fit")  # the module: cellforge.train.fit is the function

    os.environ["CELLFORGE_TRAIN_IN_PROCESS"] = "1" if kind == "in process" else "0"
    fit_module._local_node = (lambda: True) if kind != "Ray Train defaults" else (lambda: False)
    t0 = time.time()
    r = cf.fit(spec, data, epochs=2, name=f"overhead-{i}", storage_path=storage, verbose=False)
    return time.time() - t0, sum(h["time_s"] for h in r.history), t0


def actor_starts(since: float, wall: float) -> list[str]:
    """One line per actor constructor created in [since, since + wall]: created / running / done, in seconds."""
    import ray
    from ray.util.state import list_tasks

    rows = []
    for t in list_tasks(address=ray.get_runtime_context().gcs_address, detail=True, limit=10000,
                        raise_on_missing_output=False):
        events = {e["state"]: (e["created_ms"] / 1000 - since) for e in (t.get("events") or [])}
        if not t["name"].endswith(".__init__") or not events or not 0 <= min(events.values()) <= wall:
            continue
        created = min(events.values())
        rows.append((created, f"  {t['name'][:-9]:34} created {created:6.1f}  running "
                              f"{events.get('RUNNING', float('nan')):6.1f}  ready {events.get('FINISHED', float('nan')):6.1f}"))
    return [line for _, line in sorted(rows)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="torch", choices=["torch", "tensorflow"])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import cellforge as cf
    from cellforge.runtime import ensure_ray

    ensure_ray()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 20, 4)).astype(np.float32)
    data = (x, x[:, :, 0].mean(1, keepdims=True))
    spec = cf.ModelSpec(task="regress", cell="lstm", hidden_size=16, framework=args.framework)
    storage = tempfile.mkdtemp(prefix="cf-overhead-")
    runs = iter(range(10**6))
    for kind in KINDS:  # warm-up: Ray's first actors, imports, caches
        fit_once(cf, spec, data, kind, storage, next(runs))
    outside: dict[str, list[float]] = {k: [] for k in KINDS}
    last: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeats):
        for kind in KINDS:
            wall, epochs, t0 = fit_once(cf, spec, data, kind, storage, next(runs))
            outside[kind].append(wall - epochs)
            last[kind] = t0, wall
            print(f"fit {kind:20} wall {wall:5.1f} s  epochs {epochs:4.1f} s  "
                  f"outside {wall - epochs:5.1f} s   (load {os.getloadavg()[0]:.1f})", flush=True)
        time.sleep(1)
    for kind in KINDS[1:]:
        print(f"\nactors of the last fit with {kind} (s since fit was called):")
        print("\n".join(actor_starts(*last[kind])))
    median = {k: statistics.median(v) for k, v in outside.items()}
    print("\nmedian time outside epochs: " + ", ".join(f"{k} {v:.1f} s" for k, v in median.items())
          + f"; in process / lean actors {median['in process'] / median['lean actors']:.3f}"
          + f" (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
