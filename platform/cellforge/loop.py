"""The per-worker training loop, framework-neutral: every Ray Train worker runs ``worker_loop``.

A backend supplies ``Fitter(spec, info)`` with ``train_epoch``, ``predict``, ``allreduce``,
``get_weights``/``set_weights`` (canonical names) and ``save_state``/``load_state``; this
module owns sharding, metrics over all ranks, the LR schedule, early stopping, per-epoch
checkpoints and resuming from the last one.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellforge import metrics
from cellforge.spec import ModelSpec


@dataclass(frozen=True)
class WorkerInfo:
    rank: int
    world: int
    local_world: int
    use_gpu: bool


class LRSchedule:
    """Per-epoch learning rate, framework-neutral: step, exponential, cosine, plateau."""

    def __init__(self, spec: ModelSpec):
        self.t = spec.training
        self.value, self.best, self.bad, self.epoch = self.t.lr, float("inf"), 0, 0

    def end_epoch(self, val_loss: float | None) -> None:
        t = self.t
        self.epoch += 1
        if t.lr_schedule == "step":
            self.value = t.lr * t.lr_gamma ** (self.epoch // t.lr_step_size)
        elif t.lr_schedule == "exponential":
            self.value = t.lr * t.lr_gamma ** self.epoch
        elif t.lr_schedule == "cosine":
            self.value = 0.5 * t.lr * (1 + np.cos(np.pi * min(self.epoch, t.epochs) / t.epochs))
        elif t.lr_schedule == "plateau" and val_loss is not None:
            if val_loss < self.best - 1e-12:
                self.best, self.bad = val_loss, 0
            else:
                self.bad += 1
                if self.bad >= t.lr_patience:
                    self.value, self.bad = self.value * t.lr_gamma, 0

    def state(self) -> dict:
        return {"value": self.value, "best": self.best if np.isfinite(self.best) else None,
                "bad": self.bad, "epoch": self.epoch}

    def load(self, s: dict) -> None:
        self.value, self.bad, self.epoch = s["value"], s["bad"], s["epoch"]
        self.best = float("inf") if s["best"] is None else s["best"]


def batches(split: dict[str, np.ndarray], idx: np.ndarray, batch_size: int):
    """Mini-batches over ``idx``, each trimmed to its longest sequence."""
    for s in range(0, len(idx), batch_size):
        b = idx[s: s + batch_size]
        lengths = split["lengths"][b]
        steps = int(lengths.max())
        y = split["y"][b]
        yield split["x"][b][:, :steps], lengths, (y[:, :steps] if y.ndim == 2 and y.dtype == np.int64 else y)


def shard_eval(fitter, spec: ModelSpec, split: dict[str, np.ndarray], info: WorkerInfo, scaler) -> dict[str, float]:
    """Metrics of a whole split: each rank takes every world-th example, stats are summed."""
    idx = np.arange(info.rank, len(split["y"]), info.world)
    if len(idx):
        outs = [fitter.predict(xb, lb) for xb, lb, _ in batches(split, idx, 1024)]
        ys = [yb for _, _, yb in batches(split, idx, 1024)]
        if spec.task == "tag":
            width = max(o.shape[1] for o in outs)
            outs = [np.pad(o, ((0, 0), (0, width - o.shape[1]), (0, 0))) for o in outs]
            ys = [np.pad(y, ((0, 0), (0, width - y.shape[1])), constant_values=-100) for y in ys]
        s = metrics.stats(spec.task, np.concatenate(outs), np.concatenate(ys), spec.num_classes, scaler)
    else:
        s = metrics.stats(spec.task, *_empty(spec), spec.num_classes, scaler)
    return metrics.finalize(spec.task, fitter.allreduce(s), spec.num_classes)


def _empty(spec):
    if spec.task in ("classify", "tag"):
        return np.zeros((0, spec.num_classes)), np.zeros((0,), np.int64)
    return np.zeros((0, spec.output_size)), np.zeros((0, spec.output_size))


def worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: train, report metrics and a checkpoint each epoch."""
    import ray
    import ray.train

    # Train logs "Reporting training result ..." per report (its logger is named by file path);
    # our own epoch line says it all
    from ray.train.v2._internal.execution import context as _train_ctx

    from cellforge.backends import get_backend
    from cellforge.cells import load_cells

    logging.getLogger(_train_ctx.__file__).setLevel(logging.WARNING)
    load_cells(config.get("cells", {}))
    spec = ModelSpec.parse(config["spec"])
    data = config["data"]
    splits = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    scaler = config.get("target_scaler")
    ctx = ray.train.get_context()
    info = WorkerInfo(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_world_size(), config["use_gpu"])
    fitter = get_backend(spec.framework).Fitter(spec, info)
    t = spec.training
    es = t.early_stopping
    state = {"epoch": -1, "history": [], "best": None, "bad": 0, "best_epoch": None}
    best_weights = None
    # a run resumes from its own last checkpoint; a new run may start from another's (Tune: PBT, restore)
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("init_checkpoint"):
        ckpt = ray.train.Checkpoint.from_directory(config["init_checkpoint"])
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state, best_weights = _restore(fitter, Path(d))
        if info.rank == 0:
            print(f"[cellforge] resuming after epoch {state['epoch'] + 1} from {ckpt.path}", flush=True)

    state.setdefault("starts", []).append(state["epoch"] + 1)  # epochs each (re)start began at
    train = splits["train"]
    n_local = len(train["y"]) // info.world  # equal shards: DDP needs the same number of steps per rank
    local_bs = max(1, t.batch_size // info.world)
    for epoch in range(state["epoch"] + 1, t.epochs):
        start = time.perf_counter()
        order = np.random.default_rng(t.seed + epoch).permutation(len(train["y"]))
        idx = order[info.rank:: info.world][:n_local]
        loss_sum, count = fitter.train_epoch(epoch, batches(train, idx, local_bs))
        loss_sum, count = fitter.allreduce(np.array([loss_sum, count], np.float64))
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": loss_sum / max(count, 1), "lr": fitter.lr.value}
        if not np.isfinite(row["loss"]):
            raise FloatingPointError(f"training loss became {row['loss']} at epoch {epoch + 1}; lower training.lr "
                                     "or set training.clip_norm")
        if len(splits["val"]["y"]):
            row.update({f"val_{k}": v for k, v in shard_eval(fitter, spec, splits["val"], info, scaler).items()})
        row["time_s"] = time.perf_counter() - start
        fitter.lr.end_epoch(row.get("val_loss"))
        state["history"].append(row)
        state["epoch"] = epoch
        improved = False
        if es is not None:
            value = row.get(es.metric)
            if value is None:
                raise ValueError(f"training.early_stopping.metric: {es.metric!r} is not reported; "
                                 f"reported: {sorted(row)}")
            better = state["best"] is None or (
                value < state["best"] - es.min_delta if es.mode == "min" else value > state["best"] + es.min_delta)
            if better:
                state.update(best=value, bad=0, best_epoch=epoch + 1)
                improved = True
            else:
                state["bad"] += 1
        # every rank projects its own weights onto one fixed random vector; after DDP they must agree
        row["rank_weight_spread"] = _rank_spread(fitter, info)
        weights = fitter.get_weights() if info.rank == 0 else None
        if improved:
            best_weights = weights
        stop = es is not None and state["bad"] >= es.patience
        if info.rank == 0:
            print("[cellforge] epoch " + f"{epoch + 1}/{t.epochs} " + "  ".join(
                f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch",)), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if info.rank == 0:
                _save(fitter, Path(tmp), weights, best_weights, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({k: v for k, v in row.items()} | {"stopped_early": stop}, checkpoint=checkpoint)
        if stop:
            break


def _rank_spread(fitter, info: WorkerInfo) -> float:
    if info.world == 1:
        return 0.0
    w = fitter.get_weights()
    rng = np.random.default_rng(12345)
    digest = sum(float(rng.standard_normal(v.size) @ v.ravel().astype(np.float64)) for _, v in sorted(w.items()))
    slots = np.zeros(info.world)
    slots[info.rank] = digest
    slots = fitter.allreduce(slots)
    return float(slots.max() - slots.min())


def _save(fitter, d: Path, weights, best_weights, state) -> None:
    from safetensors.numpy import save_file

    save_file(weights, str(d / "weights.safetensors"))
    if best_weights is not None:
        save_file(best_weights, str(d / "best.safetensors"))
    fitter.save_state(d)
    (d / "state.json").write_text(json.dumps(state | {"lr": fitter.lr.state()}))


def _restore(fitter, d: Path):
    from safetensors.numpy import load_file

    state = json.loads((d / "state.json").read_text())
    fitter.set_weights(load_file(str(d / "weights.safetensors")))
    fitter.load_state(d)
    fitter.lr.load(state.pop("lr"))
    best = load_file(str(d / "best.safetensors")) if (d / "best.safetensors").exists() else None
    return state, best


def final_weights(checkpoint_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The weights a finished run keeps (the best epoch's under early stopping) and its state."""
    from safetensors.numpy import load_file

    state = json.loads((checkpoint_dir / "state.json").read_text())
    best = checkpoint_dir / "best.safetensors"
    return load_file(str(best if best.exists() else checkpoint_dir / "weights.safetensors")), state
