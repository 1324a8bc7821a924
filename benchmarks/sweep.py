"""ASHA vs FIFO on the same space and trial budget: wall time, trial-epochs and the best score.

    .venv/bin/python benchmarks/sweep.py                   # 12 trials x 6 epochs on digits
    .venv/bin/python benchmarks/sweep.py --trials 8 --epochs 4 --workers 2

Both sweeps use the same seed, so they sample the same 12 configurations; FIFO runs every one
for every epoch, ASHA stops the weak ones at its rungs. Target: ASHA reaches FIFO's best
validation accuracy within TOLERANCE with at most half of FIFO's trial-epochs. Timings are
noisy on a shared machine; the two sweeps run back to back in one process.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import cellforge as cf
from cellforge.runtime import ensure_ray

TOLERANCE = 0.02  # absolute validation accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--workers", type=int, default=1, help="Train workers per trial")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ensure_ray()
    data = cf.datasets.load("digits")
    spec = cf.ModelSpec(task="classify", training={"epochs": args.epochs})
    space = {"cell": cf.choice(["lstm", "gru"]), "hidden_size": cf.choice([16, 32, 64]),
             "training.lr": cf.loguniform(3e-4, 3e-2)}
    storage = tempfile.mkdtemp(prefix="cellforge-bench-sweep-")
    rows = {}
    for scheduler in ("fifo", "asha"):
        start = time.perf_counter()
        s = cf.sweep(spec, data, space, trials=args.trials, scheduler=scheduler, workers_per_trial=args.workers,
                     name=f"bench-{scheduler}", storage_path=storage, seed=args.seed, verbose=False)
        wall = time.perf_counter() - start
        board = s.leaderboard()
        if s.best is None:
            raise SystemExit(f"{scheduler}: no trial reported {s.metric}:\n{board.to_string()}")
        rows[scheduler] = {"wall_s": wall, "trial_epochs": s.trial_epochs, "best": s.best["metrics"][s.metric],
                           "stopped": int((board.status == "early-stopped").sum()),
                           "errors": int((board.status == "error").sum()),
                           "not_run": int((board.status == "not run").sum())}
    f, a = rows["fifo"], rows["asha"]
    print(f"\nsweep benchmark: digits, {args.trials} trials x {args.epochs} epochs, {args.workers} worker(s)/trial, "
          f"seed {args.seed}")
    print(f"{'':>22}{'FIFO':>12}{'ASHA':>12}{'ASHA/FIFO':>12}")
    print(f"{'wall time (s)':>22}{f['wall_s']:>12.1f}{a['wall_s']:>12.1f}{a['wall_s'] / f['wall_s']:>12.2f}")
    print(f"{'trial-epochs':>22}{f['trial_epochs']:>12d}{a['trial_epochs']:>12d}"
          f"{a['trial_epochs'] / f['trial_epochs']:>12.2f}")
    print(f"{'best val_accuracy':>22}{f['best']:>12.4f}{a['best']:>12.4f}{a['best'] - f['best']:>+12.4f}")
    print(f"{'trials stopped early':>22}{f['stopped']:>12d}{a['stopped']:>12d}")
    print(f"{'trials failed':>22}{f['errors']:>12d}{a['errors']:>12d}")
    if f["not_run"] or a["not_run"]:
        print(f"INCOMPLETE (interrupted?): trials not run: FIFO {f['not_run']}, ASHA {a['not_run']}; no verdict")
        return
    ok = a["best"] >= f["best"] - TOLERANCE and a["trial_epochs"] <= 0.5 * f["trial_epochs"]
    print(f"target (ASHA best within {TOLERANCE} of FIFO's, <= 50% of its trial-epochs): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
