"""seq2seq: training throughput against a hand-written PyTorch encoder-decoder, and serving with
batching against without, in one run.

    ray-slot --alone .venv/bin/python benchmarks/seq2seq.py               # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/seq2seq.py --skip-train --requests 64     # serving only

Training: numbers in English words -> French words (chars, integers below 2,000), a GRU encoder and
decoder of hidden 128 with additive attention and input feeding, batch 64, teacher forcing:
  (a) a hand-written PyTorch loop of the same network      (b) cellforge torch, 1 Ray Train worker
Sequences/second of the median epoch after the first; cellforge's from its history's ``time_s``
with no validation split (so that it times training only).

Serving: the trained bundle deployed twice (numpy runtime, one replica of one CPU): with batching and
without; greedy decoding, one input per request, at concurrency 1 and 32; requests/second.
Compare the ratios (measured in the same run): the machine may be shared. Say ``uptime`` beside them.

Measured 2026-11-30 on the 2-core machine alone (``--epochs 3 --requests 128``, load average 2.1 / 1.6),
after the decoder's vocabulary projection ran once over all steps and torch's own GRU/LSTM cell
kernels ran the built-in decoder cells: training (b)/(a) 1.08x (360 vs 333 sequences/s; before them
0.84x, 222 vs 265, at load ~2.4); serving with batching / without 1.08x at concurrency 1 (119 vs 110
req/s), 6.3x at concurrency 32 (501 vs 79 req/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time

import numpy as np

H, E, BATCH, NUMBERS = 128, 32, 64, 2000
CONCURRENCY = (1, 32)


def spec_and_data():
    import cellforge as cf

    spec = cf.ModelSpec(task="seq2seq", framework="torch", cell="gru", hidden_size=H, attention="additive",
                        input={"type": "text", "tokenizer": "char", "embedding_dim": E},
                        target={"tokenizer": "char", "max_length": 64, "embedding_dim": E},
                        training={"batch_size": BATCH, "lr": 3e-3, "val_fraction": 0.0, "test_fraction": 0.0,
                                  "seed": 0})
    return spec, cf.datasets.load("numbers", high=NUMBERS)


def hand_torch(spec, data, epochs: int) -> float:
    """(a) the encoder-decoder a PyTorch user would write, on the same arrays as cellforge's."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from cellforge.data import prepare, targets

    torch.manual_seed(0)
    spec, prepared = prepare(spec, data)
    train = prepared.splits["train"]
    vin, vout = spec.input.vocab_size, spec.target.vocab_size

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb_in, self.enc = nn.Embedding(vin, E), nn.GRU(E, H, batch_first=True)
            self.bridge = nn.Linear(H, H)
            self.emb_out, self.dec = nn.Embedding(vout, E), nn.GRUCell(E + H, H)  # input feeding
            self.wk, self.wq, self.v = nn.Linear(H, H, bias=False), nn.Linear(H, H), nn.Linear(H, 1, bias=False)
            self.combine, self.out = nn.Linear(2 * H, H, bias=False), nn.Linear(H, vout)

        def forward(self, x, lengths, y_in):
            packed = pack_padded_sequence(self.emb_in(x), lengths, batch_first=True, enforce_sorted=False)
            memory, h = self.enc(packed)
            memory, _ = pad_packed_sequence(memory, batch_first=True)
            mask = torch.arange(memory.shape[1])[None] < lengths[:, None]
            keys, s = self.wk(memory), torch.tanh(self.bridge(h[-1]))
            feed, logits = torch.zeros_like(s), []
            for t in range(y_in.shape[1]):
                s = self.dec(torch.cat([self.emb_out(y_in[:, t]), feed], 1), s)
                scores = self.v(torch.tanh(keys + self.wq(s)[:, None])).squeeze(-1).masked_fill(~mask, -1e9)
                context = (torch.softmax(scores, -1)[:, :, None] * memory).sum(1)
                feed = torch.tanh(self.combine(torch.cat([s, context], 1)))
                logits.append(self.out(feed))
            return torch.stack(logits, 1)

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=targets.IGNORE)
    n, times = len(train["y"]), []
    for epoch in range(epochs):
        start = time.perf_counter()
        order = np.random.default_rng(epoch).permutation(n)
        for b in range(0, n, BATCH):
            idx = order[b: b + BATCH]
            lengths = train["lengths"][idx]
            y = train["y"][idx]
            y = y[:, : int((y != targets.IGNORE).sum(1).max())]
            x = torch.from_numpy(train["x"][idx][:, : int(lengths.max())])
            logits = net(x, torch.from_numpy(lengths), torch.from_numpy(targets.teacher_inputs(y)))
            loss = loss_fn(logits.reshape(-1, vout), torch.from_numpy(y).reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return n / float(np.median(times[1:]))


def cellforge_fit(spec, data, epochs: int, storage: str):
    """(b) cellforge torch on 1 Ray Train worker: (sequences/s, the bundle)."""
    import cellforge as cf
    from cellforge.data import prepare

    n = len(prepare(spec, data)[1].splits["train"]["y"])
    result = cf.fit(spec, data, workers=1, epochs=epochs, storage_path=storage, verbose=False)
    times = [row["time_s"] for row in result.history]
    return n / float(np.median(times[1:])), result.bundle


async def load(url: str, concurrency: int, n: int, body: str) -> float:
    """Requests/second of ``concurrency`` clients sending ``n`` requests in all (after a warm-up)."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async def client(k: int):
            for _ in range(k):
                async with http.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: HTTP {r.status} {await r.text()}")

        await asyncio.gather(*(client(2) for _ in range(concurrency)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(max(1, n // concurrency)) for _ in range(concurrency)))
        return concurrency * max(1, n // concurrency) / (time.perf_counter() - t0)


def serving(bundle, requests: int) -> dict[str, dict[int, float]]:
    import cellforge as cf
    from cellforge.serving.deploy import undeploy

    body = json.dumps({"inputs": ["four thousand three hundred and twelve"], "strategy": "greedy"})
    out = {}
    for label, batching in (("batching", {"max_batch_size": 32, "batch_wait_timeout_s": 0.005}),
                            ("no batching", {"enabled": False})):
        name = "bench-s2s-" + label.replace(" ", "-")
        ep = cf.deploy(bundle, name, num_replicas=1, num_cpus=1, batching=batching)
        out[label] = {c: asyncio.run(load(f"{ep.url}/predict", c, max(requests, 4 * c), body)) for c in CONCURRENCY}
        undeploy(name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--requests", type=int, default=192)
    ap.add_argument("--skip-train", action="store_true", help="serving only (trains 1 epoch for a bundle)")
    args = ap.parse_args()
    os.environ.setdefault("CELLFORGE_NUM_CPUS", "4")
    # a Ray of its own (stopped at the end), not the machine's shared local one
    os.environ["CELLFORGE_HOME"] = tempfile.mkdtemp(prefix="cf-bench-s2s-")
    spec, data = spec_and_data()
    load_avg = lambda: " ".join(f"{v:.2f}" for v in os.getloadavg())  # noqa: E731
    with tempfile.TemporaryDirectory() as storage:
        if args.skip_train:
            _, bundle = cellforge_fit(spec, data, 2, storage)
        else:
            hand = hand_torch(spec, data, args.epochs)
            ours, bundle = cellforge_fit(spec, data, args.epochs, storage)
            print(f"training, sequences/s (load average {load_avg()}):")
            print(f"  (a) hand-written PyTorch encoder-decoder   {hand:8.1f}")
            print(f"  (b) cellforge torch, 1 Ray Train worker    {ours:8.1f}   {ours / hand:.2f}x (a)   target >= 0.9x")
        rows = serving(bundle, args.requests)
        print(f"serving greedy decoding, requests/s (load average {load_avg()}):")
        for c in CONCURRENCY:
            on, off = rows["batching"][c], rows["no batching"][c]
            print(f"  concurrency {c:3d}: batching {on:7.1f}   no batching {off:7.1f}   {on / off:.2f}x"
                  + ("   target >= 3x" if c == 32 else ""))
    import ray

    ray.shutdown()
    from cellforge import local_ray

    local_ray.stop()


if __name__ == "__main__":
    main()
