"""Sweeps on the session's Ray: ASHA on digits, resume after a kill, a failing trial, no leaks."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import cellforge as cf
from cellforge.jobs import run_job

SWEEP_ACTORS = {"Trial", "TrainController", "RayTrainWorker", "_QueueActor", "PlacementGroupCleaner"}


def _alive(ray, classes=SWEEP_ACTORS):
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")], limit=1000)
    return sorted(a.class_name for a in actors if a.class_name in classes)


def _created_pgs(ray):
    return {k for k, v in ray.util.placement_group_table().items() if v["state"] == "CREATED"}


def _eventually(fn, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if not value or time.monotonic() > deadline:
            return value
        time.sleep(1)


@pytest.mark.slow  # ~20 min on the shared 2-core machine; not yet seen passing end to end (make test-all)
def test_asha_sweep_on_digits_beats_the_default_and_stops_half_early(ray_session, runs):
    """12 trials x 2 Train workers each; ASHA must stop at least half, and the best trial's bundle must
    test at least as well as the default spec trained for the same epochs.

    4 epochs put ASHA's rungs at epochs 1 and 3 (reduction factor 3): a trial that got past the first can
    still be stopped at the second. One trial at a time, so the order in which trials reach a rung is fixed
    by the seed and so are ASHA's decisions (with several at a time they depend on which gets there first)."""
    data = cf.datasets.load("digits")
    base = cf.ModelSpec(task="classify", training={"epochs": 4})
    pgs_before = _created_pgs(ray_session)
    space = {"cell": cf.choice(["lstm", "gru"]), "hidden_size": cf.choice([16, 32, 64]),
             "training.lr": cf.loguniform(1e-3, 3e-2)}
    start = time.monotonic()
    s = cf.sweep(base, data, space, trials=12, scheduler="asha", metric="val_accuracy", workers_per_trial=2,
                 name="digits-asha", seed=3, max_concurrent=1)
    sweep_s = time.monotonic() - start
    board = s.leaderboard()
    print(board.to_string())
    assert len(board) == 12 and set(board.status) <= {"completed", "early-stopped"}, board
    stopped = board[board.status == "early-stopped"]
    assert len(stopped) >= 6 and stopped.epochs.isin([1, 3]).all(), board
    assert (board[board.status == "completed"].epochs == 4).all(), board
    assert s.trial_epochs == board.epochs.sum() < 12 * 4
    assert s.best_bundle == runs / "digits-asha" / "best" / "bundle"
    best_test = json.loads((s.best_bundle / "metrics.json").read_text())["test"]["test_accuracy"]
    start = time.monotonic()
    default = cf.fit(base, data, workers=1, name="default", verbose=False)
    print(f"best trial test accuracy {best_test:.4f}, default spec {default.metrics['test_accuracy']:.4f} "
          f"(its fit took {time.monotonic() - start:.1f} s; the sweep {sweep_s:.1f} s)")
    assert best_test >= default.metrics["test_accuracy"]
    model = cf.load(s.best_bundle)  # verified on load
    assert model.spec.cell == s.best["params"]["cell"] and model.spec.hidden_size == s.best["params"]["hidden_size"]
    fig = s.plot()
    assert len(fig.axes) == 4
    # stopped trials tore their Train runs down: no trial, controller or worker left, no placement group
    assert _eventually(lambda: _alive(ray_session)) == []
    assert _eventually(lambda: _created_pgs(ray_session) - pgs_before) == set()


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    import cellforge as cf
    from cellforge.runtime import ensure_ray
    from resume_args import ARGS
    ensure_ray(sys.argv[1])
    cf.sweep(cf.ModelSpec(task="classify", training={"epochs": 2}), cf.datasets.load("digits"),
             storage_path=sys.argv[2], **ARGS)
""")
# 8 trials: one trial trains in its own process in a few seconds, so with 4 the sweep could end before the kill
RESUME_ARGS = dict(space={"hidden_size": [16, 24, 32], "training.lr": {"loguniform": [3e-3, 3e-2]}}, trials=8,
                   scheduler="fifo", name="resumable", max_concurrent=2, seed=5)


def _finished(exp: Path) -> set[str]:
    states = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    if not states:
        return set()
    try:
        trials = json.loads(Path(states[-1]).read_text())["trial_data"]
    except (json.JSONDecodeError, KeyError):
        return set()  # being written
    return {s["trial_id"] for s in (json.loads(t[0]) for t in trials) if s["status"] == "TERMINATED"}


@pytest.mark.slow  # make test-all: a sweep killed and resumed (make test runs test_failing_trial's sweep)
def test_killed_sweep_resumes_without_rerunning_finished_trials(ray_session, runs, tmp_path):
    exp = runs / "resumable"
    (tmp_path / "resume_args.py").write_text(f"ARGS = {RESUME_ARGS!r}\n")
    (tmp_path / "run_sweep.py").write_text(RESUME_SCRIPT)
    log = open(tmp_path / "sweep.log", "w")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run_sweep.py"),
                             ray_session.get_runtime_context().gcs_address, str(runs)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 400
    while len(_finished(exp)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = _finished(exp)
    assert 2 <= len(finished) < 8, (tmp_path / "sweep.log").read_text()[-3000:]
    runs_before = {t: sorted(p.name for p in (exp / "train").glob(f"{t}-*")) for t in finished}
    results_before = {t: (exp / t / "result.json").read_text() for t in finished}

    s = cf.sweep(cf.ModelSpec(task="classify", training={"epochs": 2}), cf.datasets.load("digits"), **RESUME_ARGS)
    board = s.leaderboard()
    assert len(board) == 8 and (board.status == "completed").all(), board
    for t in finished:  # no new Train run, no new result for a trial that had finished
        assert sorted(p.name for p in (exp / "train").glob(f"{t}-*")) == runs_before[t]
        assert (exp / t / "result.json").read_text() == results_before[t]
    assert s.best_bundle.is_dir()
    # the same name with a different space is refused rather than mixed in
    changed = {**RESUME_ARGS, "trials": 12}
    try:
        cf.sweep(cf.ModelSpec(task="classify", training={"epochs": 2}), cf.datasets.load("digits"), **changed)
    except cf.SpecError as e:
        assert e.problems[0][0] == "name"
    else:
        raise AssertionError("a changed sweep under an existing name was accepted")


def test_failing_trial_is_reported_and_the_sweep_goes_on(ray_session, runs):
    """From a job file: plain SGD at lr 10 on 8-example batches overflows the loss to NaN within the first
    epoch (the output layer's step grows the error a hundredfold per batch), so the loop raises
    FloatingPointError; that trial shows its error and the other one wins."""
    job = {"name": "failing", "steps": [{"sweep": {
        "id": "search", "name": "failing", "data": {"dataset": "adding", "args": {"n": 300, "length": 10}},
        "spec": {"task": "regress", "hidden_size": 16, "training": {"optimizer": "sgd", "batch_size": 8, "epochs": 2}},
        "space": {"training.lr": {"grid": [0.05, 10.0]}}, "trials": 2, "scheduler": "fifo", "metric": "val_rmse",
        "tensorboard": True}}]}
    handler = signal.getsignal(signal.SIGINT)
    out = run_job(job)["search"]
    assert signal.getsignal(signal.SIGINT) is handler  # Tune's Ctrl-C handler went with its run
    rows = {r["training.lr"]: r for r in out["leaderboard"]}
    assert rows[10.0]["status"] == "error" and rows[10.0]["epochs"] == 0, rows[10.0]
    assert rows[10.0]["error"].startswith("FloatingPointError: training loss became nan at epoch 1"), rows[10.0]
    assert rows[0.05]["status"] == "completed" and rows[0.05]["epochs"] == 2
    assert out["best"]["params"] == {"training.lr": 0.05}
    assert Path(out["bundle"]) == runs / "failing" / "best" / "bundle"
    assert cf.load(out["bundle"]).spec.training.lr == 0.05
    # TensorBoard: one directory per trial; the completed trial's two epochs are there, the failed one's none
    from test_tensorboard import read

    logged = {d.name: read(d).Tags()["scalars"] for d in (runs / "failing" / "tensorboard").iterdir()}
    assert len(logged) == 2 and sorted(map(bool, logged.values())) == [False, True], logged
    done = next(d for d, tags in logged.items() if tags)
    assert [s.step for s in read(runs / "failing" / "tensorboard" / done).Scalars("val_rmse")] == [1, 2]
    # running it again resumes the failed sweep: the same leaderboard, no trial retrained or retried
    train_runs = sorted(p.name for p in (runs / "failing" / "train").iterdir())
    again = run_job(job)["search"]
    assert again["leaderboard"] == out["leaderboard"] and again["best"] == out["best"]
    assert sorted(p.name for p in (runs / "failing" / "train").iterdir()) == train_runs
    # its trials trained in their own (reused) actors, in process: none is left, nor a Train actor
    assert _eventually(lambda: _alive(ray_session)) == []


@pytest.mark.slow
def test_pbt_exploits_and_perturbs_the_learning_rate(ray_session, runs):
    """4 trials, 4 epochs, a perturbation every epoch: PBT's bottom quarter (one trial) copies a top
    trial's checkpoint and continues with a perturbed lr, so some trial's lr changes mid-run (lr is
    constant in a trial otherwise: no schedule). The winner's bundle loads and is verified."""
    spec = cf.ModelSpec(task="classify", hidden_size=32, training={"epochs": 4})
    s = cf.sweep(spec, cf.datasets.load("digits"), {"training.lr": cf.loguniform(1e-4, 3e-2)}, trials=4,
                 scheduler="pbt", metric="val_accuracy", name="digits-pbt", seed=1)
    board = s.leaderboard()
    print(board.to_string())
    assert (board.status == "completed").all(), board
    changed = [t for t in s.trials if len({round(r["lr"], 12) for r in t["history"]}) > 1]
    assert changed, [[r["lr"] for r in t["history"]] for t in s.trials]
    assert cf.load(s.best_bundle).spec.cell == "lstm"


@pytest.mark.slow
def test_optuna_search(ray_session, runs):
    pytest.importorskip("optuna")
    space = {"hidden_size": cf.choice([16, 32]), "training.lr": cf.loguniform(1e-3, 3e-2)}
    s = cf.sweep(cf.ModelSpec(task="classify", training={"epochs": 2}), cf.datasets.load("digits"), space,
                 trials=4, scheduler="fifo", search="optuna", metric="val_accuracy", name="digits-optuna")
    board = s.leaderboard()
    print(board.to_string())
    assert len(board) == 4 and (board.status == "completed").all(), board
    assert board.hidden_size.isin([16, 32]).all() and board["training.lr"].between(1e-3, 3e-2).all(), board
    assert s.best["metrics"]["val_accuracy"] > 0.5 and cf.load(s.best_bundle).spec.hidden_size == s.best["params"]["hidden_size"]
