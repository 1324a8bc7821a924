"""cellforge's anomaly detector against a matrix-profile discord detector (stumpy), in one run.

    ray-slot --alone .venv/bin/python benchmarks/anomaly.py          # a few minutes on 2 cores

The data: the UCR anomaly archive's InternalBleeding16 (``cellforge.data.anomalies``), 1,200 normal
training steps and 7,501 test steps with one labelled anomaly. cellforge trains a forecast detector
(GRU, 64-step window) on the training steps with Ray Train (one worker) and scores the test steps;
stumpy computes the test series' matrix profile with the same subsequence length (a self-join, the
usual discord baseline of the UCR archive) and an AB-join against the training steps (each test
subsequence's distance to its nearest normal one). Every score is aligned with the step that ends
its window, so both are causal.

Quality: the UCR rule (top score within 100 steps of the anomaly), AUROC and average precision
(threshold-free), and the best point-wise and point-adjusted F1 over thresholds; cellforge's F1 at
its own calibrated threshold too. Time: seconds per 1,000 points scored, after a warm-up (numba's
compilation, the network's first call), median of ``--repeats``. The machine may be shared: note
``uptime``'s load average next to the figures.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
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


if __name__ == "__main__":
    main()
