"""``sweep``: search a spec's hyperparameters with Ray Tune; each trial is a Ray Train run.

    >>> import cellforge as cf
    >>> space = {"cell": cf.choice(["lstm", "gru"]), "hidden_size": cf.choice([32, 64]),
    ...          "training.lr": cf.loguniform(1e-3, 2e-2)}
    >>> s = cf.sweep(cf.ModelSpec(task="classify", training={"epochs": 4}), cf.datasets.load("digits"),
    ...              space, trials=12, name="digits-sweep")                  # doctest: +SKIP
    >>> s.leaderboard()                                                       # doctest: +SKIP
    >>> cf.load(s.best_bundle).predict(images)                                # doctest: +SKIP

Layout under ``<storage>/<name>/``: Tune's experiment (one folder per trial), ``train/`` (the
trials' Train runs), ``sweep.json`` (what was asked, to resume safely) and ``best/bundle``.
Running ``sweep`` again under the same name resumes: finished trials are kept, unfinished
ones continue from their last checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellforge import metrics as _metrics
from cellforge import tracking as _tracking
from cellforge.cells import custom_cells
from cellforge.data import prepare
from cellforge.errors import SpecError
from cellforge.log import log
from cellforge.runtime import ensure_ray, own_sigint
from cellforge.spec import ModelSpec
from cellforge.train.events import enabled as tensorboard_on
from cellforge.train.events import logdir as events_dir
from cellforge.train.fit import check_name, check_trainable, in_process, runs_dir
from cellforge.tune.space import Dim, affects_data, as_space, check_space

if TYPE_CHECKING:  # importing it pulls in Ray Tune; job-file validation stays light without it
    from cellforge.tune.result import Sweep

SCHEDULERS = ("asha", "pbt", "fifo")
SEARCHES = ("random", "grid", "optuna")
PBT_FIELDS = ("training.lr", "dropout")  # what PBT perturbs, when the space has them


def sweep(spec: ModelSpec | dict, data: Any, space: dict[str, Any], *, trials: int | None = None,
          metric: str | None = None, scheduler: str = "asha", search: str = "random", workers_per_trial: int = 1,
          use_gpu: bool = False, epochs: int | None = None, name: str | None = None,
          storage_path: str | Path | None = None, address: str | None = None, max_concurrent: int | None = None,
          grace_period: int = 1, reduction_factor: int = 3, seed: int = 0, verbose: bool = True,
          tracking: str | None = None, tensorboard: bool | None = None, validation: Any = None,
          test: Any = None) -> Sweep:
    """Run (or resume) a hyperparameter sweep; every trial is a Ray Train run of ``workers_per_trial`` workers.

    Args:
        spec: the base ModelSpec (or a dict of its fields); the space's fields override it per trial.
        data: anything ``fit`` takes (with ``validation`` or ``test``: the training data).
        space: spec field (dotted path, e.g. ``"training.lr"``) -> ``choice``/``grid``/``uniform``/
            ``loguniform``/``randint``, a job-file mapping such as ``{"choice": [32, 64]}``, or a fixed value.
        trials: how many trials (default 16; with ``search="grid"`` every combination once).
        metric: what ranks trials, reported every epoch (default ``val_accuracy`` for classify/tag,
            ``val_rmse`` otherwise); min or max is known per metric.
        scheduler: ``asha`` (stops weak trials early), ``pbt`` (perturbs ``training.lr``/``dropout``,
            carrying checkpoints over) or ``fifo`` (every trial runs all its epochs).
        search: ``random``, ``grid`` (every combination of the finite dimensions) or ``optuna``.
        workers_per_trial: Ray Train workers per trial (one CPU each, or one GPU with ``use_gpu``).
        epochs: overrides ``spec.training.epochs``.
        name: the sweep's name; a second call with the same name resumes it.
        max_concurrent: trials at once (default: as many as the cluster's CPUs/GPUs hold).
        grace_period: epochs every trial runs before ASHA may stop it.
        reduction_factor: ASHA keeps the best 1/reduction_factor of the trials at each rung.
        seed: seeds the search.
        tracking: an MLflow tracking URI or ``"none"`` (as ``fit``): the sweep is a parent run, each trial
            a child run (one per trial, also after a resume).
        tensorboard: TensorBoard event files per trial in ``<storage>/<name>/tensorboard/<trial id>``
            (as ``fit``; default ``$CELLFORGE_TENSORBOARD``): ``tensorboard --logdir`` there compares them.
        validation, test: official splits, as ``fit`` takes them: every trial ranks by the same validation
            split (early stopping and ASHA read it) and reports test metrics on the same test split.

    Returns:
        Sweep: ``leaderboard()``, ``plot()``, ``best`` and ``best_bundle`` (a verified bundle).

    Raises:
        SpecError: the spec, the space, the data or an argument is invalid — before any trial starts.
    """
    # Ray Tune is imported here, not at the top: it takes seconds, and job files are validated without it
    import ray
    from ray import tune

    from cellforge.tune.progress import Progress, Quiet, Relay, live
    from cellforge.tune.result import Sweep, trial_record
    from cellforge.tune.trial import Trial

    spec = ModelSpec.of(spec, epochs)
    check_trainable(spec)
    dims, problems = as_space(space)
    problems += sweep_problems(spec, dims, trials, metric, scheduler, search, workers_per_trial, grace_period,
                               reduction_factor)
    if problems:
        raise SpecError(problems, what="sweep")
    metric = metric or default_metric(spec.task)
    mode = _metrics.mode_of(metric)
    n_trials = _n_trials(dims, trials, search)
    name = check_name(name or f"sweep-{spec.task}-{time.strftime('%Y%m%d-%H%M%S')}")
    storage = Path(storage_path).resolve() if storage_path else runs_dir()
    raw = (data, validation, test)
    spec, prepared = prepare(spec, *raw)  # the data's problems surface here, before any trial
    max_epochs = max([spec.training.epochs, *dims["training.epochs"].probes()] if "training.epochs" in dims
                     else [spec.training.epochs])
    progress = Progress(name, list(dims), metric, mode, n_trials, max_epochs, verbose=verbose)
    if not ray.is_initialized():
        progress.say("connecting to Ray (the first use on this machine starts the local one)")
    ensure_ray(address)
    # a trial of one CPU worker trains in its own actor (cellforge.tune.trial): one CPU, no Train actors
    here = in_process(workers_per_trial, use_gpu, 0)
    workers_cpu = 0 if here else workers_per_trial  # one CPU per Train worker (see cellforge.train.fit.trainer)
    if max_concurrent is None:
        res = ray.cluster_resources()
        max_concurrent = max(1, int(res.get("CPU", 1)) // (1 + workers_cpu))  # a trial's own slot + its workers
        if here:  # trials training in their own processes: one per core of this machine (the local Ray has
            # more logical CPUs than cores, cellforge.runtime.MIN_LOGICAL_CPUS); 8 trials on 2 cores each
            # imported the framework at once and took 27-35 s to their first epoch, against 0.4 s reused
            max_concurrent = max(1, min(max_concurrent, os.cpu_count() or 1))
        if use_gpu and res.get("GPU"):
            max_concurrent = max(1, min(max_concurrent, int(res["GPU"]) // workers_per_trial))
    # a loaded machine can take more than Train's default 60 s to start a trial's workers
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    # Tune warns when trials checkpoint often; each epoch is a checkpoint here, by design
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune saves the experiment's state (what a resume starts from) at most every 10 s by default, and less
    # often when a save is slow; trials take tens of seconds here, so save often and lose little on a kill
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's newer output prints a box even at verbose=0
    exp = storage / name
    asked = {"spec": spec.model_dump(mode="json"), "space": {k: [d.kind, list(d.values)] for k, d in dims.items()},
             "trials": n_trials, "metric": metric, "scheduler": scheduler, "search": search, "seed": seed}
    _check_same(exp, asked)
    per_trial_data = affects_data(dims)
    track = _tracking.start(
        tracking, storage, run_name=name, id_file=exp / "tracking.json",
        params={**_tracking.flatten(spec.model_dump(mode="json")),
                **{f"space.{k}": json.dumps([d.kind, list(d.values)], default=str) for k, d in dims.items()},
                "trials": n_trials, "metric": metric, "scheduler": scheduler, "search": search, "seed": seed},
        tags={"cellforge.kind": "sweep", **_data_tags(data, prepared),
              **_tracking.system_facts(spec.framework, workers_per_trial, use_gpu)})
    ctx = {"spec": spec.model_dump(), "prepared": None if per_trial_data else prepared,
           "data": raw if per_trial_data else None, "workers": workers_per_trial, "use_gpu": use_gpu,
           "train_storage": str(exp / "train"), "cells": custom_cells(), "in_process": here,
           "tracking": track.ref() and {**track.ref(), "sweep": name, "tags": _data_tags(data, prepared)},
           "tensorboard": str(events_dir(exp)) if tensorboard_on(tensorboard) else None}
    progress.say("sending the data to Ray")
    trainable = tune.with_resources(tune.with_parameters(Trial, ctx=ctx), {"cpu": 1})
    run_config = tune.RunConfig(
        name=name, storage_path=str(storage), verbose=0, callbacks=[Relay(name)], progress_reporter=Quiet(),
        # PBT restores a trial from another's checkpoint some time after choosing it, by when the other
        # may have moved on: keep them all (a few KB each); otherwise the last two suffice to resume
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if scheduler == "pbt" else 2,
                                                checkpoint_frequency=1),
        failure_config=tune.FailureConfig(max_failures=0))  # a failing trial is reported, not retried
    if tune.Tuner.can_restore(str(exp)):
        if verbose:
            log.info("resuming sweep %s from %s", name, exp)
        # the restored experiment brings its own Relay(name) back, which finds this call's Progress
        tuner = tune.Tuner.restore(str(exp), trainable, resume_unfinished=True, resume_errored=False)
        try:  # the earlier run's trials: their rows, and 'best so far' over the whole sweep
            progress.earlier([trial_record(r, list(dims), metric, i + 1) for i, r in enumerate(tuner.get_results())])
        except RuntimeError:  # nothing was recorded before the interruption
            pass
        progress.say("resuming: starting the unfinished trials, if any")
    else:
        exp.mkdir(parents=True, exist_ok=True)
        (exp / "sweep.json").write_text(json.dumps(asked, indent=1))
        tuner = tune.Tuner(trainable, param_space=_param_space(dims, search), run_config=run_config,
                           tune_config=tune.TuneConfig(
                               metric=metric, mode=mode, num_samples=n_trials // _grid_size(dims, search),
                               reuse_actors=here,  # the next trial starts in a warm actor (Trial.reset_config)
                               # the random/grid generator takes the limit itself (see _search)
                               max_concurrent_trials=max_concurrent if search == "optuna" else None,
                               scheduler=_scheduler(scheduler, dims, max_epochs, grace_period, reduction_factor),
                               search_alg=_search(search, seed, max_concurrent), trial_dirname_creator=lambda t: t.trial_id))
        if verbose:
            log.info("sweep %s: %d trials x %d worker(s), %s on %s (%s), %d at a time; results in %s", name,
                     n_trials, workers_per_trial, scheduler, metric, mode, max_concurrent, exp)
        progress.say(f"starting trials ({max_concurrent} at a time)" +
                     (", each training in its own process" if here else ", each with its Train workers"))
    try:
        with live(name, progress), own_sigint():
            grid_ = tuner.fit()
    except BaseException:
        track.finish([], status="KILLED")
        raise
    result = Sweep(name, exp, list(dims), metric, mode, grid_, spec, prepared, raw if per_trial_data else None,
                   tracking=track)
    best = result.best
    track.finish([], {f"best_{metric}": best["metrics"].get(metric)} if best else {})
    if verbose:
        log.info(result.summary())
    return result


def _data_tags(data, prepared) -> dict[str, str]:
    if prepared.fingerprint is None:
        prepared.fingerprint = _tracking.fingerprint_of(prepared.splits, prepared.preprocessor.state)
    return {"cellforge.data": _tracking.data_name(data), "cellforge.data_fingerprint": prepared.fingerprint}


def default_metric(task: str) -> str:
    # seq2seq: chrF rather than BLEU, which stays 0 while no output shares a 4-gram with its reference
    return {"classify": "val_accuracy", "tag": "val_accuracy", "seq2seq": "val_chrf"}.get(task, "val_rmse")


def reported_metrics(task: str) -> list[str]:
    """What the training loop reports every epoch (see loop.worker_loop)."""
    per_task = (["accuracy", "macro_f1"] if task in ("classify", "tag")
                else ["token_accuracy", "exact_match", "bleu", "chrf", "rouge_l"] if task == "seq2seq"
                else ["mae", "rmse", "mape"])
    return ["loss", "val_loss", *[f"val_{m}" for m in per_task]]


def sweep_problems(spec: ModelSpec, dims: dict[str, Dim], trials, metric, scheduler, search, workers, grace,
                   rf) -> list[tuple[str, str]]:
    """Every problem of a sweep's space and arguments, for ``spec`` (what ``sweep`` and the job
    file's sweep step check before any trial starts)."""
    p = check_space(spec, dims)
    if scheduler not in SCHEDULERS:
        p.append(("scheduler", f"expected one of {list(SCHEDULERS)}, got {scheduler!r}"))
    if search not in SEARCHES:
        p.append(("search", f"expected one of {list(SEARCHES)}, got {search!r}"))
    if metric is not None and metric not in reported_metrics(spec.task):
        p.append(("metric", f"{metric!r} is not reported for task {spec.task!r}; reported: "
                            f"{reported_metrics(spec.task)}"))
    if (metric or default_metric(spec.task)).startswith("val_") and spec.training.val_fraction == 0:
        p.append(("metric", "validation metrics need training.val_fraction > 0"))
    for field, v in (("workers_per_trial", workers), ("grace_period", grace)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            p.append((field, f"expected a positive integer, got {v!r}"))
    if not isinstance(rf, int) or rf < 2:
        p.append(("reduction_factor", f"expected an integer >= 2, got {rf!r}"))
    if trials is not None and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
        p.append(("trials", f"expected a positive integer, got {trials!r}"))
    elif dims and search in SEARCHES:
        p += _check_counts(dims, trials, search)
    if scheduler == "pbt" and not any(f in dims for f in PBT_FIELDS):
        p.append(("scheduler", f"pbt perturbs {list(PBT_FIELDS)}: put at least one of them in the space"))
    if search == "optuna":
        if any(d.kind == "grid" for d in dims.values()):
            p.append(("space", "optuna search does not take grid dimensions; use choice"))
        try:
            import optuna  # noqa: F401
        except ImportError:
            p.append(("search", "optuna is not installed: pip install 'cellforge[optuna]'"))
    return p


def _grid_size(dims: dict[str, Dim], search: str) -> int:
    size = 1
    for d in dims.values():
        if d.kind == "grid" or (search == "grid" and d.kind == "choice"):
            size *= len(d.values)
    return size


def _check_counts(dims, trials, search) -> list[tuple[str, str]]:
    if search == "grid":
        continuous = [k for k, d in dims.items() if not d.finite]
        if continuous:
            return [("search", f"grid search needs finite dimensions (choice/grid); continuous: {continuous}")]
    g = _grid_size(dims, search)
    if trials is not None and trials % g:
        return [("trials", f"the grid has {g} combinations, so trials must be a multiple of {g}, got {trials}")]
    return []


def _n_trials(dims, trials, search) -> int:
    return trials if trials is not None else (_grid_size(dims, search) if search == "grid" else 16)


def _param_space(dims: dict[str, Dim], search: str) -> dict[str, Any]:
    return {k: d.to_tune(as_grid=search == "grid") for k, d in dims.items()}


def _scheduler(kind, dims, max_epochs, grace, rf):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if kind == "asha":  # rungs at grace, grace*rf, ... epochs, ranked on the validation metric
        return ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=min(grace, max_epochs),
                             reduction_factor=rf)
    if kind == "pbt":
        return PopulationBasedTraining(
            time_attr="epoch", perturbation_interval=max(1, grace),
            hyperparam_mutations={k: dims[k].to_tune() for k in PBT_FIELDS if k in dims})
    return FIFOScheduler()


def _search(kind, seed, max_concurrent):
    if kind == "optuna":  # Tune wraps a Searcher in a ConcurrencyLimiter of max_concurrent_trials
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=seed)
    from ray.tune.search import BasicVariantGenerator

    # Tune ignores max_concurrent_trials for a generator passed in: it takes its own limit
    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def _check_same(exp: Path, asked: dict) -> None:
    f = exp / "sweep.json"
    if not f.exists():
        return
    before = json.loads(f.read_text())
    diff = sorted(k for k in asked if before.get(k) != json.loads(json.dumps(asked[k])))
    if diff:
        raise SpecError([("name", f"a sweep named {exp.name!r} already exists at {exp} with different {diff}; "
                                  "use another name to start a new sweep, or the same arguments to resume it")],
                        what="sweep")
