"""One sweep trial: a Ray Tune trainable that runs one Ray Train run and relays its epochs.

Tune calls ``step()`` once per epoch. A trial of one CPU worker on a local Ray trains in the trial
actor's own process (Ray Train's local mode; ``cellforge.train.fit.in_process`` calls the loop itself):
the loop runs in a thread, hands each epoch to ``step()`` through a plain queue and stops within a
batch when Tune stops the trial; the actor is reused by the sweep's next trial (``reset_config``),
so the framework is imported once per concurrent trial, not once per trial. Otherwise the Train run
(controller + data-parallel workers) runs in a thread of the trial actor; two Train callbacks pass
each epoch's metrics and checkpoint path, and the controller's handle, back through a Ray queue. A class trainable (not a
function) because Tune calls its ``cleanup()`` before the actor exits: a trial that ASHA or
PBT stops aborts its Train run there, which shuts its workers down and removes their
placement group without relying on Train's dashboard-based cleaner (that cleaner cannot find
its cluster when several Ray instances share one machine).

Tune checkpoints are copies of the Train run's latest checkpoint. A trial that starts from
one — a PBT exploit, or a sweep resumed after an interruption — starts a new Train run whose
workers resume from it.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train.v2.api.callback import UserCallback

from cellforge import _ray, tracking
from cellforge.cells import load_cells
from cellforge.data import prepare
from cellforge.spec import ModelSpec
from cellforge.train.fit import trainer, worker_config

# Train keeps this many checkpoints per run: Tune copies the newest reported one a moment after
# it is reported, and the run may have moved on by one or two epochs by then
TRAIN_CHECKPOINTS_KEPT = 4


class _Relay(UserCallback):
    """Runs in the Train controller: every epoch's metrics (rank 0) and checkpoint path go to the trial."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put({"metrics": dict(metrics[0]), "checkpoint": checkpoint.path if checkpoint else None})


class _ControllerHandle(_ray.controller_callback_class()):
    """Runs in the Train controller: hands the trial the controller's handle, so it can abort the run."""

    def __init__(self, queue):
        self.queue = queue

    def after_controller_start(self, train_run_context):
        self.queue.put({"controller": ray.get_runtime_context().current_actor})


class Trial(tune.Trainable):
    """A Tune trainable over one Train run. ``ctx`` (from ``tune.with_parameters``) holds the base
    spec, the prepared data (or raw data when a dimension changes preprocessing), workers, GPU use
    and where Train runs are stored."""

    def setup(self, config: dict[str, Any], ctx: dict[str, Any] | None = None):
        for name in ("ray.tune", "ray.train"):  # not a line per checkpoint saved
            logging.getLogger(name).setLevel(logging.WARNING)
        self.ctx = ctx
        load_cells(ctx["cells"])
        self._new(config)

    def _new(self, config: dict[str, Any]) -> None:
        self.params = dict(config)
        self.init_checkpoint: str | None = None
        self.last: dict[str, Any] = {}
        self.thread: threading.Thread | None = None
        self.track = tracking.Run.off()
        self.stop_run = threading.Event()  # in process: ends the loop before its next batch
        self.controller = None

    def _start(self) -> None:
        ctx = self.ctx
        here = ctx.get("in_process", False)
        spec = ModelSpec.parse(ctx["spec"]).updated(**self.params)
        prepared = ctx["prepared"]
        if prepared is None:  # a dimension changes preprocessing: prepare this trial's own data
            spec, prepared = prepare(spec, *ctx["data"])  # (data, validation, test)
        self.spec, self.epochs = spec, spec.training.epochs
        self.track = self._tracking(spec)
        # the sweep's progress shows epochs, not each trial's workers
        events = ctx.get("tensorboard")  # one directory per trial, beside the others: TensorBoard compares them
        name = f"{self.trial_id}-{time.time_ns()}"  # a fresh run per start; it resumes from init_checkpoint
        config = worker_config(spec, prepared, ctx["use_gpu"], init_checkpoint=self.init_checkpoint, verbose=False,
                               tracking_run=self.track.ref(),
                               tensorboard=None if events is None else Path(events) / self.trial_id,
                               keep_checkpoints=Path(ctx["train_storage"]) / name if here else None)
        if here:  # the loop runs in this process: it hands over its epochs through a plain queue
            self.queue = queue.Queue()
            config.update(stop=self.stop_run, checkpoints_kept=TRAIN_CHECKPOINTS_KEPT,
                          relay=lambda m, path: self.queue.put({"metrics": dict(m), "checkpoint": path}))
            callbacks = None
        else:
            from ray.util.queue import Queue

            self.queue = Queue(actor_options={"num_cpus": 0})  # unbounded: the controller never blocks on it
            callbacks = [_Relay(self.queue), _ControllerHandle(self.queue)]
        run_config = ray.train.RunConfig(
            name=name, storage_path=ctx["train_storage"], callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=TRAIN_CHECKPOINTS_KEPT),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"))
        run = trainer(spec, config, 0 if here else ctx["workers"], ctx["use_gpu"], run_config)
        self.error: BaseException | None = None

        def target():
            try:
                run.fit()
            except BaseException as e:  # noqa: BLE001 - handed to step(), which raises it in Tune
                self.error = e

        self.thread = threading.Thread(target=target, name="cellforge-train-run", daemon=True)
        self.thread.start()

    def _tracking(self, spec: ModelSpec) -> tracking.Run:
        """The trial's MLflow run, a child of the sweep's: found by its tags when the trial starts again
        (a resumed sweep, a PBT exploit), so each trial has one run however often it restarts."""
        parent = self.ctx.get("tracking")
        if not parent:
            return tracking.Run.off()
        return tracking.start(parent["uri"], Path(self.ctx["train_storage"]).parent.parent,
                              run_name=f"{parent['sweep']}/{self.trial_id}",
                              params=tracking.flatten(spec.model_dump(mode="json")),
                              tags={"mlflow.parentRunId": parent["run_id"], "cellforge.kind": "trial",
                                    "cellforge.sweep": parent["sweep"], **parent["tags"]},
                              find={"cellforge.parent": parent["run_id"], "cellforge.trial_id": self.trial_id})

    def step(self) -> dict[str, Any]:
        if self.thread is None:
            self._start()
        while True:
            try:
                item = self.queue.get(timeout=0.5)
            except queue.Empty:  # ray.util.queue's Empty too
                if not self.thread.is_alive() and self.queue.empty():
                    raise (_unwrap(self.error) if self.error else RuntimeError(
                        "the Train run ended without reporting its last epoch")) from None
                continue
            if "controller" in item:
                self.controller = item["controller"]
                continue
            m = item["metrics"]
            self.last = {"checkpoint": item["checkpoint"], "epoch": m["epoch"]}
            # 'complete': the run ended by itself (every epoch, or the spec's own early stopping), as
            # opposed to a scheduler stopping it (Tune marks both 'done')
            done = bool(m.get("stopped_early")) or m["epoch"] >= self.epochs
            return {**m, "complete": done, "done": done}

    def save_checkpoint(self, checkpoint_dir: str) -> dict | None:
        src = self.last.get("checkpoint")
        if src and Path(src).is_dir():
            shutil.copytree(src, checkpoint_dir, dirs_exist_ok=True)
        return None

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Start the next Train run from this checkpoint, at this trial's own learning rate (PBT
        may have perturbed it, and the loop would otherwise restore the old one)."""
        d = Path(checkpoint_dir)
        if not (d / "state.json").exists():
            return
        copy = Path(tempfile.mkdtemp(prefix="cellforge-init-"))
        shutil.copytree(d, copy, dirs_exist_ok=True)
        state = json.loads((copy / "state.json").read_text())
        lr = ModelSpec.parse(self.ctx["spec"]).updated(**self.params).training.lr
        if "lr" in state and self.params.get("training.lr") is not None:
            state["lr"].update(value=lr, best=None, bad=0)
        (copy / "state.json").write_text(json.dumps(state))
        self.init_checkpoint = str(copy)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """The sweep's next trial in this actor (``sweep`` reuses actors for trials in process; a sweep
        resumed with other settings may reuse them for Train runs on workers too)."""
        self.cleanup()
        self._new(new_config)
        return True

    def cleanup(self) -> None:
        """Stop a run that is still going (Tune stopped this trial); wait for one that is ending."""
        self.track.finish([])
        if self.thread is None or not self.thread.is_alive():
            return
        if self.ctx.get("in_process", False):
            self.stop_run.set()
            self.thread.join(timeout=60)
            return
        if self.controller is None:  # the run may still be starting: wait a little for its handle
            deadline = time.monotonic() + 30
            while self.controller is None and self.thread.is_alive() and time.monotonic() < deadline:
                try:
                    item = self.queue.get(timeout=0.5)
                    self.controller = item.get("controller", self.controller)
                except Exception:  # noqa: BLE001 - queue empty: keep waiting
                    pass
        if self.controller is not None:
            try:
                ray.get(self.controller.abort.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - abort ends the controller's process, which ray.get sees as an error
                pass
        self.thread.join(timeout=30)


def _unwrap(err: BaseException) -> BaseException:
    """The worker's own exception (e.g. FloatingPointError) rather than Train's wrapper around it."""
    for attr in ("worker_failures", "_worker_failures"):
        failures = getattr(err, attr, None)
        if isinstance(failures, dict) and failures:
            inner = next(iter(failures.values()))
            return inner if isinstance(inner, BaseException) else err
    return err
