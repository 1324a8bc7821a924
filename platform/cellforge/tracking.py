"""Experiment tracking with MLflow: every fit, sweep and trial on record, without ever stopping training.

    >>> resolve("none") is None                              # tracking off: nothing imported, nothing logged
    True
    >>> resolve(None, storage=Path("/data/runs"))            # the embedded default: SQLite under the runs
    'sqlite:////data/runs/mlflow.db'
    >>> resolve("http://mlflow.internal:5000")               # a team's server
    'http://mlflow.internal:5000'
    >>> flatten({"task": "classify", "training": {"lr": 0.01, "epochs": 3}})
    {'task': 'classify', 'training.lr': 0.01, 'training.epochs': 3}

Where runs go: ``tracking=`` (fit, sweep, job steps), else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///<runs>/mlflow.db`` with artifacts in ``<runs>/mlartifacts`` — nothing to start.
``tracking="none"`` (or ``CELLFORGE_TRACKING=none``) turns it off.

Who logs what: the driver opens the run (params, data set name + fingerprint, system facts) and, at
the end, the test metrics and the bundle as artifacts; rank 0 of the Ray Train workers logs each
epoch's metrics (already aggregated over ranks) as the epoch ends — Ray Train V2 takes no Tune logger
callbacks. A run's id is kept beside its checkpoints (``<run dir>/tracking.json``) and a trial's is
found by its tags, so a resumed fit or sweep goes on logging into the same runs instead of new ones.

A tracking server that is down costs one warning per process; training goes on without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellforge.log import log

EXPERIMENT = "cellforge"  # one experiment for fits and sweeps; $CELLFORGE_EXPERIMENT names another
SKIP_METRICS = ("epoch", "stopped_early")  # the step itself, and a flag
PARAM_MAX = 6000  # MLflow's limit on a param value's length (mlflow.utils.validation)
# MLflow retries a failed request 7 times with exponential backoff (about 4 minutes against a server that
# is down) and waits 120 s per request: a dead server must cost seconds, not an epoch's worth of minutes
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow draws a tqdm bar for each artifact download ("Downloading artifacts: 0%|..." was a notebook
# cell's output when it deployed models:/NAME@ALIAS): users see cellforge's lines, not MLflow's
QUIET_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def resolve(setting: str | None, storage: Path | None = None) -> str | None:
    """The tracking URI for a ``tracking`` setting (None: the environment, then the local default)."""
    setting = setting or os.environ.get("CELLFORGE_TRACKING") or os.environ.get("MLFLOW_TRACKING_URI")
    if setting and setting.strip().lower() in ("none", "off", "false"):
        return None
    if setting:
        return setting
    storage = Path(storage) if storage is not None else Path(os.environ.get("CELLFORGE_RUNS", "runs")).resolve()
    return f"sqlite:///{storage}/mlflow.db"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested fields as dotted names (``training.lr``): MLflow params are flat."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def fingerprint_of(splits: dict[str, dict[str, np.ndarray]], preprocessing: dict[str, Any]) -> str:
    """sha256 over the prepared splits and the preprocessing fitted on them: the same data, split and
    preprocessed the same way, has the same fingerprint (first 16 hex digits)."""
    h = hashlib.sha256()
    for split in sorted(splits):
        for key in sorted(splits[split]):
            a = np.ascontiguousarray(splits[split][key])
            h.update(f"{split}/{key}/{a.dtype}/{a.shape}".encode())
            h.update(a.tobytes() if a.dtype != object else repr(a.tolist()).encode())
    h.update(json.dumps(preprocessing, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def cellforge_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellforge")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "unknown"


def code_version(cwd: str | Path | None = None) -> str | None:
    """The code that ran: ``git describe --always --dirty`` of the working directory, or None outside git."""
    import subprocess

    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(run_id: str | None, data_fingerprint: str | None) -> dict[str, Any]:
    """Where a bundle came from, recorded in its manifest (and so covered by a signature)."""
    return {"run_id": run_id, "data_fingerprint": data_fingerprint, "code_version": code_version(),
            "cellforge_version": cellforge_version()}


def system_facts(framework: str, workers: int, use_gpu: bool) -> dict[str, str]:
    return {"cellforge.framework": framework, "cellforge.workers": str(workers), "cellforge.gpu": str(use_gpu),
            "cellforge.version": cellforge_version(), "python": platform.python_version(), "host": platform.node()}


_warned: set[str] = set()  # URIs this process has warned about: one warning each


@dataclass
class Run:
    """One MLflow run, as a driver or a worker sees it (picklable: a Train worker gets it in its config).
    Every call swallows tracking errors after one warning; ``Run.off()`` does nothing at no cost."""

    uri: str | None
    run_id: str | None
    broken: bool = field(default=False, compare=False)

    @classmethod
    def off(cls) -> Run:
        return cls(None, None)

    @property
    def active(self) -> bool:
        return bool(self.uri and self.run_id and not self.broken)

    def client(self):
        for k, v in {**HTTP_ENV, **QUIET_ENV}.items():  # a user's own settings win
            os.environ.setdefault(k, v)
        from mlflow.tracking import MlflowClient

        # a user sees cellforge's lines, not MLflow's: it logs "Creating initial MLflow database
        # tables..." and "Updating database tables" at INFO when the embedded store is first opened
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        return MlflowClient(tracking_uri=self.uri)

    def failed(self, what: str, err: BaseException) -> None:
        self.broken = True
        if self.uri not in _warned:
            _warned.add(self.uri)
            log.warning("tracking: %s failed at %s (%s: %s); training goes on without tracking", what,
                        redact(self.uri), type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")

    def log_epoch(self, row: dict[str, Any], step: int) -> None:
        """One epoch's metrics (rank 0, after the epoch's checkpoint is reported)."""
        if not self.active:
            return
        try:
            self.client().log_batch(self.run_id, metrics=_metrics(row, step))
        except Exception as e:  # noqa: BLE001 - tracking never stops training
            self.failed("logging an epoch", e)

    def finish(self, history: list[dict[str, Any]], metrics: dict[str, float] | None = None,
               bundle: Path | None = None, status: str = "FINISHED") -> None:
        """Fill in epochs the workers could not log (a kill between an epoch's checkpoint and its log
        line), log the test metrics and the bundle, and close the run."""
        if not self.active:
            return
        try:
            c = self.client()
            logged = {m.step for m in c.get_metric_history(self.run_id, "loss")}
            missing = [m for r in history if r.get("epoch") not in logged for m in _metrics(r, r["epoch"])]
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            extra = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if _number(v)]
            for i in range(0, len(missing + extra), 900):  # log_batch takes at most 1000 metrics
                c.log_batch(self.run_id, metrics=(missing + extra)[i: i + 900])
            if bundle is not None:
                c.log_artifacts(self.run_id, str(bundle), "bundle")
            c.set_terminated(self.run_id, status)
        except Exception as e:  # noqa: BLE001
            self.failed("closing the run", e)

    def log_bundle(self, bundle: Path, tags: dict[str, str] | None = None) -> None:
        """A bundle made after the run closed (a sweep's best), as the run's ``bundle`` artifact."""
        if self.active:
            try:
                c = self.client()
                c.log_artifacts(self.run_id, str(bundle), "bundle")
                for k, v in (tags or {}).items():
                    c.set_tag(self.run_id, k, v)
            except Exception as e:  # noqa: BLE001
                self.failed("logging the bundle", e)

    def child(self, trial_id: str) -> str | None:
        """The run id of this sweep's trial ``trial_id`` (None when not found or tracking is off)."""
        if not self.active:
            return None
        try:
            c = self.client()
            exp = c.get_run(self.run_id).info.experiment_id
            found = c.search_runs([exp], f"tags.`cellforge.parent` = '{self.run_id}' and "
                                         f"tags.`cellforge.trial_id` = '{trial_id}'", max_results=1)
            return found[0].info.run_id if found else None
        except Exception as e:  # noqa: BLE001
            self.failed("finding a trial's run", e)
            return None

    def ref(self) -> dict[str, Any] | None:
        """What a worker's config carries (None when there is nothing to log)."""
        return {"uri": self.uri, "run_id": self.run_id} if self.active else None

    @classmethod
    def of(cls, ref: dict[str, Any] | None) -> Run:
        return cls(ref["uri"], ref["run_id"]) if ref else cls.off()


class EpochLog:
    """Rank 0's epoch logging off the training thread: a thread imports MLflow and opens the store
    while the first epoch trains (1.5-3.5 s on 2 cores, which the first ``log_epoch`` used to wait
    for), then logs each epoch it is handed in order; ``close`` waits for the last. An epoch still
    queued when a worker dies is filled in by the driver (``Run.finish``), as one never logged."""

    def __init__(self, run: Run):
        self.run, self.queue = run, queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, name="cellforge-tracking", daemon=True) \
            if run.active else None
        if self.thread is not None:
            self.thread.start()

    def _work(self) -> None:
        try:
            self.run.client()
        except Exception as e:  # noqa: BLE001 - tracking never stops training
            self.run.failed("opening the store", e)
        while (item := self.queue.get()) is not None:
            self.run.log_epoch(*item)

    def log_epoch(self, row: dict[str, Any], step: int) -> None:
        if self.thread is not None:
            self.queue.put((dict(row), step))

    def close(self, timeout_s: float = 120.0) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join(timeout_s)


def start(setting: str | None, storage: Path, *, run_name: str, params: dict[str, Any], tags: dict[str, str],
          id_file: Path | None = None, find: dict[str, str] | None = None) -> Run:
    """Open (or reopen) a run: the id in ``id_file``, else the run whose tags match ``find``, else a new
    one with ``params`` and ``tags``. Returns ``Run.off()`` when tracking is off or unreachable."""
    uri = resolve(setting, storage)
    if uri is None:
        return Run.off()
    run = Run(uri, None)
    try:
        c = run.client()
        if id_file is not None and id_file.exists():
            kept = json.loads(id_file.read_text())
            if kept.get("uri") == redact(uri) and _reopen(c, kept["run_id"]):
                run.run_id = kept["run_id"]
                return run
            # the run was deleted, or tracking now goes elsewhere: a new run there (this file then names it)
        exp = _experiment(c, uri, storage)
        if find:
            query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in find.items())
            found = c.search_runs([exp], query, max_results=1)
            if found:
                run.run_id = found[0].info.run_id
                c.update_run(run.run_id, status="RUNNING")
                return run
        r = c.create_run(exp, run_name=run_name, tags={**tags, **(find or {})})
        run.run_id = r.info.run_id
        _log_params(c, run.run_id, params)
        if id_file is not None:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(json.dumps({"run_id": run.run_id, "uri": redact(uri)}))
    except Exception as e:  # noqa: BLE001
        run.failed("opening a run", e)
    return run


def experiment_name() -> str:
    return os.environ.get("CELLFORGE_EXPERIMENT", EXPERIMENT)


def _reopen(c, run_id: str) -> bool:
    """Mark a kept run as running again; False when the store does not have it (any more)."""
    from mlflow.exceptions import MlflowException

    try:
        if c.get_run(run_id).info.lifecycle_stage != "active":
            return False
    except MlflowException as e:
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    c.update_run(run_id, status="RUNNING")
    return True


def _experiment(c, uri: str, storage: Path) -> str:
    name = experiment_name()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # a local store keeps its artifacts next to it, not in ./mlruns of wherever Python was started
    location = (Path(storage) / "mlartifacts").resolve().as_uri() if uri.startswith(("sqlite:", "file:")) else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - another process created it first
        return c.get_experiment_by_name(name).experiment_id


def _log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    # MLflow refuses a value over 6000 characters (a long class list, a vocabulary): keep its start
    items = [Param(k, (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:PARAM_MAX])
             for k, v in params.items()]
    for i in range(0, len(items), 90):  # log_batch takes at most 100 params
        c.log_batch(run_id, params=items[i: i + 90])


def _metrics(row: dict[str, Any], step: int) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, int(step)) for k, v in row.items() if k not in SKIP_METRICS and _number(v)]


def _number(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and np.isfinite(v)


def forget_warnings() -> None:
    """Warn again about URIs already warned about (tests; a long-lived process after a server is back)."""
    _warned.clear()


def redact(uri: str | None) -> str:
    """A URI without a password in it (``https://user:secret@host`` -> ``https://user:***@host``)."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", uri or "")


def data_name(data: Any) -> str:
    """A data set's name as the user knows it: a built-in's name, a file's path, else its type."""
    if isinstance(data, (str, Path)):
        return str(data)
    return getattr(data, "name", None) or type(data).__name__

