"""Runtimes side by side: numpy (reference), torch, ONNX Runtime float32 and int8, on one CPU thread each.

    ray-slot --alone .venv/bin/python benchmarks/runtimes.py                       # trains the digits LSTM first
    ray-slot --alone .venv/bin/python benchmarks/runtimes.py --bundle runs/quickstart/bundle

Two models: the digits LSTM (h=64, 8 steps; test accuracy on its own test split) and a larger LSTM
(h=256, 100 steps, random weights; "accuracy" there is agreement of each runtime's argmax with numpy
float32's, and the largest output difference). Per runtime: p50 latency of one sequence (batch 1) and
throughput at batch 64 (sequences/s), with ratios against torch measured in the same run (the machine
may be shared: compare ratios, and note ``uptime``'s load average printed at the start and end).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn, x, lengths, reps: int) -> list[float]:
    fn(x, lengths)  # warm-up (ORT sessions, torch's first call)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(x, lengths)
        out.append(time.perf_counter() - t)
    return out


def runtimes(spec, weights, int8_graph: Path, threads: int) -> dict[str, object]:
    """name -> predict(x, lengths)."""
    import torch
    from threadpoolctl import threadpool_limits

    from cellforge.backends import numpy as ref
    from cellforge.backends import onnx as ox
    from cellforge.backends import torch as tb

    torch.set_num_threads(threads)
    threadpool_limits(threads)  # numpy's BLAS too (a busy machine made its batch-64 matmuls 300x slower)
    tnet = tb.build(spec, weights)
    f32, i8 = ox.build(spec, weights), ox.build(spec, weights)
    f32.threads = i8.threads = threads
    i8.graph_file = int8_graph
    rnet = ref.build(spec, weights)
    return {"numpy": lambda x, n: ref.predict(rnet, x, n), "torch": lambda x, n: tb.predict(tnet, x, n),
            "onnx-f32": lambda x, n: ox.predict(f32, x, n), "onnx-int8": lambda x, n: ox.predict(i8, x, n)}


def measure(name: str, spec, weights, x, lengths, score, threads: int, reps: int) -> list[dict]:
    from cellforge.backends.onnx.graph import sequence_graph
    from cellforge.export.compress import quantize_int8

    with tempfile.TemporaryDirectory() as d:
        int8 = Path(d) / "model.onnx"
        int8.write_bytes(quantize_int8(sequence_graph(spec, weights)))
        rows = []
        for rt, fn in runtimes(spec, weights, int8, threads).items():
            one = timed(fn, x[:1], lengths[:1], reps)
            big = timed(fn, x[:64], lengths[:64], max(3, reps // 10))
            rows.append({"model": name, "runtime": rt, "p50_ms": 1e3 * float(np.median(one)),
                         "seq_per_s": 64 / float(np.median(big)), **score(fn(x, lengths))})
    base = next(r for r in rows if r["runtime"] == "torch")
    for r in rows:
        r["x_torch_b1"] = base["p50_ms"] / r["p50_ms"]
        r["x_torch_b64"] = r["seq_per_s"] / base["seq_per_s"]
    return rows


def digits_model(bundle: str | None):
    import cellforge as cf
    from cellforge.data import split_indices

    if bundle is None:  # the digits LSTM of the tests (tests/conftest.py DIGITS), trained now
        spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=64,
                            training={"lr": 0.005, "batch_size": 64, "epochs": 15, "lr_schedule": "cosine", "seed": 0})
        bundle = cf.fit(spec, cf.datasets.load("digits"), name="bench-digits",
                        storage_path=tempfile.mkdtemp(prefix="bench-")).bundle
    model = cf.load(bundle, framework="numpy")
    data = cf.datasets.load("digits")
    t = model.spec.training  # the bundle's own test split, as cellforge.evaluate re-creates it
    idx = split_indices(len(data.x), t.val_fraction, t.test_fraction, t.seed, True)["test"]
    x, lengths = model.preprocessor.transform([data.x[i] for i in idx])
    y = np.asarray(model.preprocessor.encode_y([data.y[i] for i in idx], lengths))
    return model.spec, model.weights, x, lengths, lambda out: {"accuracy": float((out.argmax(-1) == y).mean())}


def large_model():
    import cellforge as cf
    from cellforge.backends import numpy as ref

    spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=256, num_classes=10, input={"num_features": 8})
    weights = ref.init_params(spec, 0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 100, 8)).astype(np.float32)
    lengths = np.full(256, 100)
    want = ref.forward(spec, weights, x, lengths)

    def score(out):
        return {"accuracy": float((out.argmax(-1) == want.argmax(-1)).mean()), "max_diff": float(np.abs(out - want).max())}

    return spec, weights, x, lengths, score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="a digits bundle (default: train the digits LSTM now, ~1 min)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per runtime (a serving replica's share)")
    p.add_argument("--reps", type=int, default=200)
    args = p.parse_args()
    print("load average at start:", os.getloadavg())
    rows = measure("digits h64 T8", *digits_model(args.bundle), args.threads, args.reps)
    rows += measure("lstm h256 T100", *large_model(), args.threads, max(20, args.reps // 5))
    print(f"\n{'model':16} {'runtime':10} {'p50 b1 ms':>10} {'x torch':>8} {'seq/s b64':>10} {'x torch':>8} {'accuracy':>9}")
    for r in rows:
        print(f"{r['model']:16} {r['runtime']:10} {r['p50_ms']:10.3f} {r['x_torch_b1']:8.2f} {r['seq_per_s']:10.0f} "
              f"{r['x_torch_b64']:8.2f} {r['accuracy']:9.4f}" + (f"  max|diff| {r['max_diff']:.2g}" if "max_diff" in r else ""))
    for model in dict.fromkeys(r["model"] for r in rows):
        f32, i8 = (next(r for r in rows if r["model"] == model and r["runtime"] == n) for n in ("onnx-f32", "onnx-int8"))
        print(f"{model}: int8 / float32 ONNX throughput at batch 64: {i8['seq_per_s'] / f32['seq_per_s']:.2f}x")
    print("load average at end:", os.getloadavg())


if __name__ == "__main__":
    main()
