"""``fit``: a spec and data in; metrics, history and a verified bundle out — on Ray Train.

    >>> import cellforge as cf
    >>> spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=64)
    >>> result = cf.fit(spec, cf.datasets.load("digits"), workers=2, epochs=10)   # doctest: +SKIP
    >>> result.metrics["test_accuracy"]                                            # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellforge import _ray, tracking
from cellforge import bundle as _bundle
from cellforge import metrics as _metrics
from cellforge.anomaly import scores as anomaly_scores
from cellforge.backends import get_backend
from cellforge.cells import custom_cells
from cellforge.data import Prepared, prepare
from cellforge.errors import SpecError
from cellforge.log import log
from cellforge.runtime import ensure_ray, own_sigint
from cellforge.spec import TASKS, ModelSpec
from cellforge.train import seq2seq_eval
from cellforge.train.checkpoint import final_weights, latest
from cellforge.train.events import enabled as tensorboard_on
from cellforge.train.events import logdir as events_dir
from cellforge.train.loop import LocalSession, worker_loop


def runs_dir() -> Path:
    """Where runs and checkpoints go: $CELLFORGE_RUNS, or ./runs."""
    return Path(os.environ.get("CELLFORGE_RUNS", "runs")).resolve()


@dataclass
class FitResult:
    """What ``fit`` returns: the completed spec, test metrics, per-epoch history and the bundle path."""

    spec: ModelSpec
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    bundle: Path
    run_dir: Path
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few test predictions next to the truth
    starts: list[int] = field(default_factory=list)  # epochs each (re)start began at: [0, 3] = resumed after 3
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase of this call: see Stopwatch

    def history_frame(self):
        import pandas as pd

        return pd.DataFrame(self.history).set_index("epoch")


class Stopwatch:
    """Where a ``fit`` call's seconds went, phase by phase, in the order they ran (``FitResult.timings``):

    - ``prepare``: checking and preparing the data; ``ray``: connecting to (or starting) Ray;
      ``tracking``: opening and closing the MLflow run;
    - ``imports``: the framework (and Ray Train, for a run on its actors), imported by the first fit
      in a process only;
    - ``workers``: the data handed to Ray's object store, and from the Ray Train run's start until
      the training loop runs (Ray Train's actors starting: none for a fit in this process, ``in_process``);
    - ``setup``: in the loop, before its first epoch: the data, the model and optimizer, a checkpoint
      to resume from (and what a framework imports on first use: torch's first optimizer imports
      ``torch._dynamo``, ~2 s here, as it does in a hand-written loop);
    - ``epochs``: the epochs this call ran (``history``'s ``time_s``, validation included);
    - ``checkpoints``: everything else in the Ray Train run: each epoch's checkpoint and report, and
      the run's end;
    - ``test``: the test split's metrics; ``bundle``: writing the bundle and its checksummed manifest.

    Everything but ``epochs`` is the fit's time outside its epochs (``outside``)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """The time since the last lap goes to ``phase``."""
        now = time.perf_counter()
        self.add(phase, now - self._last)
        self._last = now

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + max(0.0, seconds)

    def train_run(self, state: dict[str, Any], began: float) -> None:
        """The Ray Train run's seconds, from ``began`` (wall clock) until now, split by what its loop
        stamped in ``state`` (``timing``: when it started, seconds to its first epoch) and by the
        ``time_s`` of the epochs this start ran."""
        wall = time.time() - began
        timing = state.get("timing") or {}
        workers = max(0.0, timing.get("loop_start", began) - began)
        setup = timing.get("setup_s", 0.0)
        epochs = sum(row["time_s"] for row in state["history"][(state.get("starts") or [0])[-1]:])
        for phase, seconds in (("workers", workers), ("setup", setup), ("epochs", epochs),
                               ("checkpoints", wall - workers - setup - epochs)):
            self.add(phase, seconds)
        self._last = time.perf_counter()

    def outside(self) -> float:
        return sum(v for k, v in self.phases.items() if k != "epochs")

    def line(self) -> str:
        """``outside epochs 1.2 s: prepare 0.1, ...`` (each phase of at least 0.05 s)."""
        return f"outside epochs {self.outside():.1f} s: " + ", ".join(
            f"{k} {v:.1f}" for k, v in self.phases.items() if k != "epochs" and v >= 0.05)


def worker_config(spec: ModelSpec, prepared: Prepared, use_gpu: bool, *, init_checkpoint: str | None = None,
                  verbose: bool = True, init_weights: dict[str, np.ndarray] | None = None,
                  tracking_run: dict[str, Any] | None = None, tensorboard: Path | None = None,
                  keep_checkpoints: Path | None = None) -> dict[str, Any]:
    """What every Train worker of a run gets (``train_loop_config``): the spec, the prepared splits in
    Ray's object store, custom cells, where to start from, and how much to log (the driver's level of
    the ``cellforge`` logger: a notebook that quiets it quiets its workers too). ``keep_checkpoints``: the
    run trains in this process (``in_process``), so the splits stay here rather than going through the
    object store, and the loop keeps its checkpoints in that folder (no Ray Train run persists them)."""
    import ray

    here = keep_checkpoints is not None
    return {"spec": spec.model_dump(), "data": prepared.splits if here else ray.put(prepared.splits),
            "keep_checkpoints": str(keep_checkpoints) if here else None, "use_gpu": use_gpu,
            "target_scaler": prepared.preprocessor.state.get("target_scaler"), "cells": custom_cells(),
            "target": prepared.preprocessor.state.get("target"),  # seq2seq's vocabulary: val texts
            "init_checkpoint": init_checkpoint, "verbose": verbose, "log_level": log.getEffectiveLevel(),
            "init_weights": None if init_weights is None else ray.put(init_weights),
            "tracking": tracking_run,  # rank 0 logs each epoch into this MLflow run (cellforge.tracking)
            "tensorboard": None if tensorboard is None else str(tensorboard)}  # and its event files here


def trainer(spec: ModelSpec, config: dict[str, Any], workers: int, use_gpu: bool, run_config):
    """The backend's Ray Train trainer running ``worker_loop`` on ``workers`` workers (one CPU each);
    with ``workers=0``, in this process (Ray Train's local mode: a sweep trial's, ``cellforge.tune.trial``;
    a fit in this process calls the loop itself, see ``in_process``)."""
    import ray.train

    if not workers:
        _ray.quiet_train_reports()
    scaling = ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                      resources_per_worker={"CPU": 1} if workers else None)
    t = get_backend(spec.framework).make_trainer(worker_loop, config, scaling, run_config)
    if workers and _local_node():
        _ray.lean_trainer(t)  # two helper processes fewer per run: see there
    return t


def in_process(workers: int, use_gpu: bool, max_failures: int) -> bool:
    """Whether a fit trains in this process, calling the loop itself (``loop.LocalSession``), instead of
    in Ray Train's actors: one CPU worker, no failures to recover from, on a local Ray — unless
    ``CELLFORGE_TRAIN_IN_PROCESS=0``.

    A Ray Train run starts a process per actor (controller, placement-group cleaner, synchronization
    actor, worker) and imports the framework in each; on 2 cores that was 20-60 s of a small fit
    outside its epochs (``benchmarks/fit_overhead.py``). In this process the framework stays imported
    and nothing starts, so a notebook's second fit begins at once; and Ray Train is not imported either
    (Ray Train's local mode, used here until 12-01, imported it: ~1.8 s of a first fit, and torch for a
    Keras one). The loop, its checkpoints (kept in the run's folder: ``train.checkpoint.keep``),
    resuming, tracking and the bundle are the same. More workers, a GPU, ``max_failures`` or a remote
    cluster use Ray Train's actors as before."""
    if os.environ.get("CELLFORGE_TRAIN_IN_PROCESS", "") in ("0", "false", "no"):
        return False
    return workers == 1 and not use_gpu and max_failures == 0 and _local_node()


def _local_node() -> bool:
    """Whether this Ray is a local one on 127.0.0.1 (embedded or the machine's shared one): one fixed node."""
    import ray

    return ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def fit(spec: ModelSpec | dict, data: Any, *, workers: int = 1, use_gpu: bool = False, epochs: int | None = None,
        name: str | None = None, storage_path: str | Path | None = None, bundle_path: str | Path | None = None,
        address: str | None = None, max_failures: int = 0, verbose: bool = True,
        init_weights: dict[str, np.ndarray] | None = None, tracking: str | None = None,
        tensorboard: bool | None = None, validation: Any = None, test: Any = None) -> FitResult:
    """Train ``spec`` on ``data`` with ``workers`` Ray Train workers and save a bundle.

    Args:
        spec: a ModelSpec or a dict of its fields.
        data: (X, y), a built-in data set, a DataFrame, a CSV/Parquet path or a Ray Dataset (with
            ``validation`` or ``test``: the training data).
        workers: data-parallel Ray Train workers; the global batch is split between them.
        use_gpu: one GPU per worker (CUDA), when the cluster has them.
        epochs: overrides ``spec.training.epochs``.
        name: the run's name; running again under the same name resumes from its last checkpoint.
        storage_path: where runs live (default ``$CELLFORGE_RUNS`` or ``./runs``).
        bundle_path: where to save the bundle (default ``<storage>/<name>/bundle``).
        address: a Ray cluster; default ``$RAY_ADDRESS`` or an embedded local Ray.
        max_failures: worker failures to recover from (from the last checkpoint).
        init_weights: canonical weights to start from (a warm start: ``cellforge compress`` fine-tunes so).
        tracking: an MLflow tracking URI, or ``"none"``; default ``$MLFLOW_TRACKING_URI``, else a SQLite
            store under the runs directory (see ``cellforge.tracking``). A resumed run logs into its own run.
        tensorboard: write TensorBoard event files to ``<storage>/<name>/tensorboard`` (scalars, weight
            and gradient histograms; :mod:`cellforge.train.events`); default ``$CELLFORGE_TENSORBOARD``.
        validation, test: official splits, in any form ``data`` takes: kept exactly (early stopping reads
            ``validation``, the test metrics ``test``); one not given is carved from ``data`` at the spec's
            fraction. A table's split column (``input.split``) does the same from one table.

    Returns:
        FitResult with ``metrics`` (``test_*``), ``history`` and ``bundle``.

    Raises:
        SpecError: the spec or the data is invalid (every problem listed, field paths included).
    """
    clock = Stopwatch()
    spec = ModelSpec.of(spec, epochs)
    check_trainable(spec)
    check_workers(workers)
    spec, prepared = prepare(spec, data, validation, test)
    name = check_name(name or f"{spec.task}-{spec.cell}-{time.strftime('%Y%m%d-%H%M%S')}")
    storage = Path(storage_path).resolve() if storage_path else runs_dir()
    clock.lap("prepare")
    ensure_ray(address)
    use_gpu = _gpu_or_cpu(use_gpu, address)
    clock.lap("ray")
    track = start_tracking(tracking, storage, name, spec, prepared, data, workers, use_gpu)
    events = events_dir(storage / name) if tensorboard_on(tensorboard) else None
    if events is not None and verbose:
        log.info("TensorBoard event files: tensorboard --logdir %s", events)
    clock.lap("tracking")
    try:
        weights, state = run(spec, prepared, workers=workers, use_gpu=use_gpu, name=name, storage=storage,
                             max_failures=max_failures, verbose=verbose, init_weights=init_weights,
                             tracking_run=track.ref(), tensorboard=events, clock=clock)
    except BaseException:
        track.finish([], status="FAILED")
        raise
    result = finish(spec, prepared, weights, state, bundle_path or storage / name / "bundle", storage / name,
                    verbose, run_id=track.run_id, clock=clock)
    track.finish(result.history, result.metrics, result.bundle)
    clock.lap("tracking")
    result.timings = clock.phases
    log.debug("fit %s: %s", name, clock.line())
    return result


def start_tracking(setting: str | None, storage: Path, name: str, spec: ModelSpec, prepared: Prepared, data: Any,
                   workers: int, use_gpu: bool) -> tracking.Run:
    """Open the fit's MLflow run (or reopen it: its id is kept in the run's folder, beside the checkpoints)."""
    fp = tracking.fingerprint_of(prepared.splits, prepared.preprocessor.state)
    prepared.fingerprint = fp
    return tracking.start(setting, storage, run_name=name, id_file=storage / name / "tracking.json",
                          params=tracking.flatten(spec.model_dump(mode="json")),
                          tags={"cellforge.kind": "fit", "cellforge.data": tracking.data_name(data),
                                "cellforge.data_fingerprint": fp, "cellforge.run_dir": str(storage / name),
                                **tracking.system_facts(spec.framework, workers, use_gpu)})


def _gpu_or_cpu(use_gpu: bool, address: str | None) -> bool:
    """CUDA when asked for and present. On the embedded Ray, no GPU means CPU (with a warning);
    on a cluster the autoscaler may still add GPU nodes, so the request stands."""
    import ray

    if use_gpu and not (address or os.environ.get("RAY_ADDRESS")) and not ray.cluster_resources().get("GPU"):
        warnings.warn("use_gpu=True but this machine's Ray has no GPU: training on CPU", stacklevel=3)
        return False
    return use_gpu


def check_trainable(spec: ModelSpec) -> None:
    """Refuse, before anything starts, a spec this cellforge can declare but not train (none today:
    every task in TASKS trains; the hook stays for the next one)."""
    if spec.task not in TASKS:
        raise SpecError([("task", f"expected one of {list(TASKS)}, got {spec.task!r}")], what="fit arguments")


def check_workers(workers: Any) -> None:
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise SpecError([("workers", f"expected a positive integer, got {workers!r}")], what="fit arguments")


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SpecError([("name", f"use letters, digits, '.', '_' or '-', got {name!r}")], what="fit arguments")
    return name


def run(spec: ModelSpec, prepared: Prepared, *, workers: int, use_gpu: bool, name: str, storage: Path,
        max_failures: int = 0, callbacks: list | None = None, verbose: bool = True,
        init_weights: dict[str, np.ndarray] | None = None,
        tracking_run: dict[str, Any] | None = None, tensorboard: Path | None = None,
        clock: Stopwatch | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run the Ray Train job for prepared data (or the loop itself, in this process: ``in_process``);
    returns the final weights and the loop's state (history, best epoch). Resumes from the last
    checkpoint of a run with the same name and storage. ``clock`` gets the run's phases: imports,
    workers, setup, epochs, checkpoints."""
    here = in_process(workers, use_gpu, max_failures)
    if not here:
        import ray.train
        import ray.train.torch  # noqa: F401  (both backends' trainer class: the import is timed as "imports")
    get_backend(spec.framework)  # the framework's import, timed on its own (the first fit in a process)
    clock = clock or Stopwatch()
    clock.lap("imports")
    last = latest(storage / name) if here else None
    config = worker_config(spec, prepared, use_gpu, verbose=verbose, init_weights=init_weights,
                           tracking_run=tracking_run, tensorboard=tensorboard,
                           init_checkpoint=None if last is None else str(last),
                           keep_checkpoints=storage / name if here else None)
    if verbose:  # a status while Train starts its workers (the first epoch line follows)
        log.info("training in this process (1 worker)" if here else
                 f"starting {workers} Ray Train worker{'s' * (workers != 1)}")
    clock.lap("workers")  # the data handed to Ray's object store for the workers (none in process)
    began = time.time()  # wall clock: the loop stamps its own start with it, in whichever process it runs
    if here:  # the loop itself: its checkpoints are kept in the run's folder, the last one is the result
        session = LocalSession()
        worker_loop(config | {"session": session})
        if session.checkpoint is None and last is not None:  # rerun of a finished run: nothing left to train
            clock.lap("checkpoints")
            return final_weights(last)
        weights, state = final_weights(Path(session.checkpoint))
        clock.train_run(state, began)
        return weights, state
    run_config = ray.train.RunConfig(
        name=name, storage_path=str(storage), callbacks=callbacks,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        logging_config=ray.train.LoggingConfig(log_level="WARNING"))  # our epoch line says it all
    with own_sigint():
        result = trainer(spec, config, workers, use_gpu, run_config).fit()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        weights, state = final_weights(Path(d))
    clock.train_run(state, began)
    return weights, state


def finish(spec: ModelSpec, prepared, weights, state, bundle_path: str | Path, run_dir: Path,
           verbose: bool = True, run_id: str | None = None, clock: Stopwatch | None = None) -> FitResult:
    """Evaluate the final weights on the test split and save the bundle (with its provenance; an anomaly
    detector's with its threshold and score scaling, calibrated on the validation split)."""
    clock = clock or Stopwatch()
    if spec.task == "anomaly":
        prepared.preprocessor.state["anomaly"] = _calibrate(spec, weights, prepared.splits["val"])
    test_metrics, examples = _test(spec, weights, prepared)
    summary = {**test_metrics, **prepared.baseline}
    clock.lap("test")
    fp = prepared.fingerprint or tracking.fingerprint_of(prepared.splits, prepared.preprocessor.state)
    path = _bundle.save(bundle_path, spec, weights, prepared.preprocessor.state,
                        {"test": summary, "history": state["history"], "best_epoch": state.get("best_epoch"),
                         "starts": state.get("starts", [])},
                        provenance=tracking.provenance(run_id, fp))
    clock.lap("bundle")
    if verbose:
        log.info("test  %s", "  ".join(f"{k} {v:.4g}" for k, v in summary.items()))
        log.info("bundle saved to %s", path)
    return FitResult(spec, summary, state["history"], path, run_dir, examples, state.get("starts", []))


def _test(spec: ModelSpec, weights, prepared) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Test-split metrics with the final weights, plus a few predictions beside the truth."""
    if spec.task == "seq2seq":  # decoded texts, scored by sacrebleu and rouge-score
        return seq2seq_eval.test(spec, weights, prepared)
    test = prepared.splits["test"]
    if not len(test["y"]):
        return {}, []
    backend = get_backend(spec.framework)
    out = backend.predict(backend.build(spec, weights), test["x"], test["lengths"])
    if spec.task == "transcribe":
        return _transcribe_test(prepared.preprocessor.state["target"], out, test)
    m = _metrics.score(spec, out, test["y"], prepared.preprocessor.state.get("target_scaler"))
    if spec.task == "anomaly":
        m.update(_anomaly_test(spec, out, test["y"], prepared.preprocessor.state["anomaly"]))
    pre = prepared.preprocessor
    shown = pre.decode(out[:5], test["lengths"][:5])
    truth = pre.decode(_one_hot_or_values(spec, test["y"][:5]), test["lengths"][:5])
    key = "values" if "values" in shown else "labels"
    examples = [{"prediction": np.asarray(p).tolist(), "truth": np.asarray(t).tolist()}
                for p, t in zip(shown[key], truth[key])]
    return {f"test_{k}": v for k, v in m.items()}, examples


def _transcribe_test(target: dict, out: np.ndarray, test: dict) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from cellforge import ctc

    m = _metrics.transcribe_finalize(_metrics.transcribe_stats(target, out, test["lengths"], test["y"]))
    shown = ctc.transcripts(target, out[:5], test["lengths"][:5])
    truth = [ctc.text(target, [int(c) for c in row if c >= 0]) for row in test["y"][:5]]
    return {f"test_{k}": v for k, v in m.items()}, [{"prediction": p, "truth": t} for p, t in zip(shown, truth)]


def _calibrate(spec: ModelSpec, weights, val: dict[str, np.ndarray]) -> dict[str, Any]:
    backend = get_backend(spec.framework)
    out = backend.predict(backend.build(spec, weights), val["x"], val["lengths"])
    calibration = anomaly_scores.calibrate(spec, out, val["y"], val.get("labels"))
    log.info("anomaly threshold %.4g (%s) from %d held-out normal windows", calibration["threshold"],
             calibration["rule"], len(val["y"]))
    return calibration


def _anomaly_test(spec: ModelSpec, out, y, calibration: dict[str, Any]) -> dict[str, float]:
    """On the (normal) test split: the share of steps flagged, a false-positive rate."""
    _, s = anomaly_scores.standardise(anomaly_scores.errors(spec.reconstructs, out, y), calibration["error_scale"])
    return {"flag_rate": float(np.mean(s > calibration["threshold"]))}


def _one_hot_or_values(spec, y):
    if spec.task in ("classify", "tag"):
        return np.eye(spec.num_classes)[np.where(y < 0, 0, y)]
    return y
