"""Latency of one explained sequence against one plain prediction of it, in one run.

    .venv/bin/python benchmarks/explain.py            # about a minute on 2 cores; no Ray

Integrated gradients with 50 interpolation steps, computed by Captum as one batched forward and
one backward (``cellforge.interpret.explain``), against ``Model.outputs`` for the same single
sequence on the PyTorch runtime (the runtime attributions run on) and the numpy reference. Two
models: the digits LSTM (8 steps of 8 pixels, hidden 64, the size ``tests/conftest.py`` trains) and
a larger one (hidden 256, 100 steps, 8 features). Latency does not depend on the weights' values,
so both use random weights; the median of ``--repeats`` runs after a warm-up. The machine may be
shared: compare the ratios, measured in the same run, and note ``uptime``'s load average.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from _timing import median_s

MODELS = {"digits (lstm h64, 8 steps)": dict(hidden_size=64, steps=8, features=8, num_classes=10),
          "large (lstm h256, 100 steps)": dict(hidden_size=256, steps=100, features=8, num_classes=10)}


def measure(m: dict, n_steps: int, repeats: int) -> tuple[float, float, float]:
    """Median seconds: one prediction (torch runtime, numpy reference) and one explained sequence."""
    import cellforge as cf
    from cellforge.backends import get_backend
    from cellforge.backends import numpy as ref
    from cellforge.interpret import explain

    spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=m["hidden_size"], num_classes=m["num_classes"],
                        input={"num_features": m["features"]})
    params = ref.init_params(spec)
    x = np.random.default_rng(0).normal(size=(1, m["steps"], m["features"])).astype(np.float32)
    lengths = np.array([m["steps"]])
    torch_backend = get_backend("torch")
    net = torch_backend.build(spec, params)
    return (median_s(lambda: torch_backend.predict(net, x, lengths), repeats),
            median_s(lambda: ref.forward(spec, params, x, lengths), repeats),
            median_s(lambda: explain(spec, params, x, lengths, "integrated_gradients", n_steps=n_steps), repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--n-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (a serving replica's share)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at start; torch threads {args.threads}; "
          f"integrated gradients n_steps {args.n_steps}; median of {args.repeats}")
    rows = [(name, *measure(m, args.n_steps, args.repeats)) for name, m in MODELS.items()]
    print(f"{'model':30s} {'predict torch':>14s} {'predict numpy':>14s} {'explain (IG)':>13s} {'x torch':>8s} "
          f"{'x numpy':>8s}")
    for name, tp, npred, ig in rows:
        print(f"{name:30s} {tp * 1e3:11.2f} ms {npred * 1e3:11.2f} ms {ig * 1e3:10.2f} ms {ig / tp:7.1f}x "
              f"{ig / npred:7.1f}x")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at end")


if __name__ == "__main__":
    main()
