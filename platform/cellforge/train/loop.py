"""The per-worker training loop, framework-neutral: every Ray Train worker runs ``worker_loop``, and
so does a fit in the caller's own process (``cellforge.train.fit.in_process``), without Ray Train.

A backend (``cellforge.backends``) supplies ``Fitter(spec, info)`` with ``train_epoch``, ``predict``, ``allreduce``,
``get_weights``/``set_weights`` (canonical names) and ``save_state``/``load_state``; this
module owns sharding, metrics over all ranks, the LR schedule, early stopping, per-epoch
checkpoints and resuming from the last one.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cellforge import _ray, metrics, tracking
from cellforge.anomaly import scores as anomaly_scores
from cellforge.backends import get_backend
from cellforge.cells import load_cells
from cellforge.log import log
from cellforge.spec import ModelSpec
from cellforge.train import checkpoint, seq2seq_eval
from cellforge.train.events import EventLog
from cellforge.train.worker import WorkerInfo


def batches(split: dict[str, np.ndarray], idx: np.ndarray, batch_size: int, task: str | None = None):
    """Mini-batches over ``idx``, each trimmed to its longest sequence (a tagger's targets with it;
    seq2seq targets, of their own length, to their own longest)."""
    for s in range(0, len(idx), batch_size):
        b = idx[s: s + batch_size]
        lengths = split["lengths"][b]
        steps = int(lengths.max())
        y = split["y"][b]
        if task == "seq2seq":
            y = seq2seq_eval.trim(y)
        elif task == "transcribe":  # CTC targets, of their own length: to the longest (PAD is -1)
            y = y[:, : max(1, int((y >= 0).sum(1).max()))]
        elif y.ndim == 2 and y.dtype == np.int64:
            y = y[:, :steps]
        yield split["x"][b][:, :steps], lengths, y


BUCKET_POOL = 50  # batches sorted by length together: wide enough to group lengths, narrow enough to stay random


def bucketed(idx: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """``idx`` reordered so that consecutive ``batch_size`` runs hold sequences of similar length: pools of
    BUCKET_POOL batches sorted by length, cut into batches, the full batches' order shuffled (a short last
    batch stays last, so ``batches`` cuts the same runs). The same examples, each once.

    >>> lengths = np.array([5, 1, 9, 2, 8, 3, 7, 4])
    >>> out = bucketed(np.arange(8), lengths, 2, np.random.default_rng(0))
    >>> sorted(out.tolist()), [sorted(lengths[out[i:i + 2]].tolist()) for i in range(0, 8, 2)]
    ([0, 1, 2, 3, 4, 5, 6, 7], [[5, 7], [1, 2], [3, 4], [8, 9]])
    """
    runs = []
    for s in range(0, len(idx), batch_size * BUCKET_POOL):
        pool = idx[s: s + batch_size * BUCKET_POOL]
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        runs += [pool[i: i + batch_size] for i in range(0, len(pool), batch_size)]
    full = [r for r in runs if len(r) == batch_size]
    short = [r for r in runs if len(r) < batch_size]
    return np.concatenate([full[i] for i in rng.permutation(len(full))] + short) if runs else idx


def shard_eval(fitter, spec: ModelSpec, split: dict[str, np.ndarray], info: WorkerInfo, scaler,
               target: dict | None = None) -> dict[str, float]:
    """Metrics of a whole split: each rank takes every world-th example, stats are summed."""
    if spec.task == "seq2seq":
        return seq2seq_eval.evaluate(fitter, spec, split, info, target)
    if spec.task == "anomaly" and "labels" in split:  # AUROC is no sum over ranks: each scores it all
        whole = np.arange(len(split["y"]))
        out = np.concatenate([fitter.predict(xb, lb) for xb, lb, _ in batches(split, whole, 1024)])
        found = anomaly_scores.validation_metrics(spec.reconstructs, out, split["y"], split["labels"])
        plain = {k: v for k, v in split.items() if k != "labels"}
        return {**shard_eval(fitter, spec, plain, info, scaler, target), **found}
    idx = np.arange(info.rank, len(split["y"]), info.world)
    if spec.task == "transcribe":  # greedy transcripts against the truth: CER and WER (jiwer)
        s = sum((metrics.transcribe_stats(target, fitter.predict(xb, lb), lb, yb)
                 for xb, lb, yb in batches(split, idx, 256, spec.task)), np.zeros(6))
        return metrics.transcribe_finalize(fitter.allreduce(s))
    if len(idx):
        outs = [fitter.predict(xb, lb) for xb, lb, _ in batches(split, idx, 1024)]
        ys = [yb for _, _, yb in batches(split, idx, 1024)]
        if spec.task == "tag":  # batches are trimmed to their own longest sequence: pad to one width
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


def until(stop, items):
    """``items`` until the event ``stop`` is set (checked before each): a stopped sweep trial that trains in
    its trial's process ends within a batch (a Keras one within the few its Fitter converts at a time),
    not at the end of its epoch.

        >>> import threading
        >>> stop = threading.Event()
        >>> got = []
        >>> for i in until(stop, range(5)):
        ...     got.append(i)
        ...     if i == 1:
        ...         stop.set()
        >>> got
        [0, 1]
    """
    for item in items:
        if stop is not None and stop.is_set():
            return
        yield item


class LocalSession:
    """The loop's link to its run when it trains in the caller's process without Ray Train
    (``cellforge.train.fit.in_process``): rank 0 of one worker, no checkpoint handed in (the loop's
    ``init_checkpoint`` resumes the run), and the last reported checkpoint folder kept for the caller.
    Ray Train is not imported at all: its import (ray.data and Train V2's state machinery) was ~1.8 s
    of a process's first fit, and a Keras fit's only reason to import torch."""

    rank, world, local_world = 0, 1, 1

    def __init__(self) -> None:
        self.checkpoint: str | None = None

    @contextlib.contextmanager
    def restored(self):
        yield None

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        if folder is not None:
            self.checkpoint = folder


class TrainSession:
    """The loop's link to a Ray Train run (in a Train worker, or in Ray Train's local mode, as a sweep
    trial in its actor's process runs): the worker's rank, the checkpoint Train restarts it from, and
    ``ray.train.report``."""

    def __init__(self) -> None:
        import ray.train

        _ray.quiet_train_reports()
        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world, self.local_world = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_world_size()

    @contextlib.contextmanager
    def restored(self):
        """The folder of the checkpoint Ray Train restarts this run from (after a failure), or None."""
        ckpt = self._train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield Path(d)

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        self._train.report(metrics, checkpoint=None if folder is None else self._train.Checkpoint.from_directory(folder))


def worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: train, report metrics and a checkpoint each epoch.

    ``config`` is what ``cellforge.train.fit.worker_config`` builds; with ``verbose`` false (sweep
    trials, ``fit(verbose=False)``) rank 0 logs no epoch lines. A run in the caller's own process may
    also carry ``session``, a ``LocalSession`` (a fit called without Ray Train; default: Ray Train's
    ``TrainSession``), ``relay``, called with each epoch's metrics and checkpoint folder (a sweep
    trial's: ``cellforge.tune.trial``), ``stop``, an event that ends the run before its next batch, and
    ``checkpoints_kept`` (default 2).
    """
    import ray

    began = time.time()  # the driver's fit splits its time with this (train.fit.Stopwatch)
    session = config.get("session") or TrainSession()
    log.setLevel(config.get("log_level", log.level))
    load_cells(config.get("cells", {}))
    spec = ModelSpec.parse(config["spec"])
    info = WorkerInfo(session.rank, session.world, session.local_world, config["use_gpu"])
    # rank 0 logs the epochs (metrics are already aggregated over ranks); the driver opened the run.
    # Started first: its thread opens the store while the data arrives and the model is built
    track = tracking.EpochLog(tracking.Run.of(config.get("tracking") if info.rank == 0 else None))
    data = config["data"]
    splits = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    scaler = config.get("target_scaler")
    fitter = fitter_class(spec)(spec, info)
    events = EventLog(config.get("tensorboard") if info.rank == 0 else None)
    t = spec.training
    es = t.early_stopping
    state = {"epoch": -1, "history": [], "best": None, "bad": 0, "best_epoch": None}
    best_weights = None
    # a run resumes from its own last checkpoint; a new run may start from another's (Tune: PBT, restore)
    with session.restored() as d:
        if d is None and config.get("init_checkpoint"):
            d = Path(config["init_checkpoint"])
        if d is None and config.get("init_weights") is not None:  # a warm start from given weights
            fitter.set_weights(ray.get(config["init_weights"]))
        if d is not None:
            state, best_weights = checkpoint.restore(fitter, d)
            if info.rank == 0 and config.get("verbose", True):
                log.info("resuming after epoch %d from %s", state["epoch"] + 1, d)

    state.setdefault("starts", []).append(state["epoch"] + 1)  # epochs each (re)start began at
    state["timing"] = {"loop_start": began, "setup_s": time.time() - began}  # this start's (fit.Stopwatch)
    train = splits["train"]
    n_local = len(train["y"]) // info.world  # equal shards: DDP needs the same number of steps per rank
    local_bs = max(1, t.batch_size // info.world)
    stop_run, relay = config.get("stop"), config.get("relay")
    for epoch in range(state["epoch"] + 1, t.epochs):
        start = time.perf_counter()
        order = np.random.default_rng(t.seed + epoch).permutation(len(train["y"]))
        idx = order[info.rank:: info.world][:n_local]
        if t.bucket_by_length:  # per rank, so every rank still runs the same number of batches
            idx = bucketed(idx, train["lengths"], local_bs, np.random.default_rng([t.seed, epoch, info.rank]))
        loss_sum, count = fitter.train_epoch(epoch, until(stop_run, batches(train, idx, local_bs, spec.task)))
        if stop_run is not None and stop_run.is_set():
            break
        loss_sum, count = fitter.allreduce(np.array([loss_sum, count], np.float64))
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": loss_sum / max(count, 1), "lr": fitter.lr.value}
        if not np.isfinite(row["loss"]):
            raise FloatingPointError(f"training loss became {row['loss']} at epoch {epoch + 1}; lower training.lr "
                                     "or set training.clip_norm")
        if len(splits["val"]["y"]):
            row.update({f"val_{k}": v for k, v in shard_eval(fitter, spec, splits["val"], info, scaler,
                                                                          config.get("target")).items()})
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
        if info.rank == 0 and config.get("verbose", True):
            log.info("epoch %d/%d  %s", epoch + 1, t.epochs, "  ".join(
                f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and not (k == "rank_weight_spread" and v == 0)))
        with tempfile.TemporaryDirectory() as tmp:
            folder = None
            if info.rank == 0:
                if config.get("keep_checkpoints"):  # in the driver's process: nobody else persists them
                    folder = str(checkpoint.keep(Path(config["keep_checkpoints"]), fitter, weights, best_weights,
                                                 state, config.get("checkpoints_kept", 2)))
                else:
                    checkpoint.save(fitter, Path(tmp), weights, best_weights, state)
                    folder = tmp
            session.report(row | {"stopped_early": stop}, folder)
            if relay is not None:
                relay(row | {"stopped_early": stop}, folder)
        # after the report: an epoch is logged once its checkpoint is kept, so a resumed run never logs
        # an epoch twice (the driver fills in one that a kill left out: tracking.Run.finish)
        track.log_epoch(row, epoch + 1)
        if info.rank == 0:
            events.epoch(row, epoch + 1, weights, fitter.gradients())
        if stop:
            break
    events.close()
    track.close()


def fitter_class(spec: ModelSpec):
    """The backend's Fitter; an encoder-decoder's lives beside its network (backends/<name>/seq2seq.py)."""
    backend = get_backend(spec.framework)
    if spec.task == "seq2seq":
        return importlib.import_module(f"{backend.__name__}.seq2seq").Fitter
    return backend.Fitter


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


