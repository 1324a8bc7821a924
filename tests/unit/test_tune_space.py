"""Sweep search spaces and arguments: every problem is reported before any trial (and before Ray starts)."""

from __future__ import annotations

import importlib.util
import os

import pytest

import cellforge as cf
from cellforge.jobs import parse_job
from cellforge.jobs.steps import SweepStep
from cellforge.tune.space import Dim, affects_data, as_space, check_space

DIGITS_SPEC = cf.ModelSpec(task="classify", training={"epochs": 2})


def problems(excinfo) -> dict[str, str]:
    return dict(excinfo.value.problems)


def test_space_forms_normalise():
    dims, bad = as_space({"cell": cf.choice(["lstm", "gru"]), "hidden_size": {"choice": [16, 32]},
                          "training.lr": {"loguniform": [1e-4, 1e-2]}, "dropout": [0.0, 0.2],
                          "num_layers": 2, "training.batch_size": cf.randint(16, 65)})
    assert bad == []
    assert dims["hidden_size"] == Dim("choice", (16, 32))
    assert dims["training.lr"] == cf.loguniform(1e-4, 1e-2)
    assert dims["dropout"] == cf.choice([0.0, 0.2])
    assert dims["num_layers"] == Dim("choice", (2,))  # a plain value fixes the field
    assert dims["training.batch_size"].probes() == [16, 64]  # randint's high is excluded


@pytest.mark.parametrize("dim, fragment", [
    (cf.choice([]), "at least one value"),
    (cf.uniform(1.0, 1.0), "low < high"),
    (cf.loguniform(0.0, 1.0), "low > 0"),
    (cf.randint(1.5, 4), "integers"),
    ({"normal": [0, 1]}, "expected one of"),
    ({"uniform": [0]}, "two numbers"),
])
def test_malformed_dimensions_are_named(dim, fragment):
    _, bad = as_space({"training.lr": dim})
    assert len(bad) == 1 and bad[0][0] == "space.training.lr" and fragment in bad[0][1]


def test_invalid_values_give_one_error_naming_each_dimension():
    space = {"hidden_size": cf.choice([0, 32]), "cell": cf.choice(["lstm", "nope"]),
             "training.lr": cf.loguniform(1e-4, 50.0), "training.colour": cf.choice(["red"])}
    with pytest.raises(cf.SpecError) as e:
        cf.sweep(DIGITS_SPEC, cf.datasets.load("digits"), space, trials=4, storage_path="/nonexistent")
    p = problems(e)
    assert set(p) == {"space.hidden_size", "space.cell", "space.training.lr", "space.training.colour"}
    assert "value 0" in p["space.hidden_size"] and "greater than 0" in p["space.hidden_size"]
    assert "'nope'" in p["space.cell"] and "known cells" in p["space.cell"]
    assert "value 50.0" in p["space.training.lr"]
    assert "unknown field" in p["space.training.colour"]
    assert not os.path.exists("/nonexistent")  # rejected before any trial wrote anything


def test_combinations_of_a_small_space_are_checked():
    dims, _ = as_space({"training.val_fraction": [0.1, 0.5], "training.test_fraction": [0.1, 0.45]})
    bad = check_space(DIGITS_SPEC, dims)
    assert len(bad) == 1 and bad[0][0] == "space" and "val_fraction + test_fraction" in bad[0][1]


def test_argument_errors_are_collected():
    space = {"hidden_size": cf.grid([16, 32, 64]), "training.lr": cf.loguniform(1e-3, 1e-2)}
    with pytest.raises(cf.SpecError) as e:
        cf.sweep(DIGITS_SPEC, cf.datasets.load("digits"), space, trials=4, metric="val_rmse", scheduler="hyperband",
                 workers_per_trial=0)
    p = problems(e)
    assert set(p) == {"trials", "metric", "scheduler", "workers_per_trial"}
    assert "multiple of 3" in p["trials"]
    assert "val_accuracy" in p["metric"]  # lists what the classify loop reports


def test_grid_search_needs_finite_dimensions_and_pbt_needs_lr_or_dropout():
    with pytest.raises(cf.SpecError) as e:
        cf.sweep(DIGITS_SPEC, cf.datasets.load("digits"), {"training.lr": cf.uniform(1e-3, 1e-2)}, search="grid")
    assert "training.lr" in problems(e)["search"]
    with pytest.raises(cf.SpecError) as e:
        cf.sweep(DIGITS_SPEC, cf.datasets.load("digits"), {"hidden_size": [16, 32]}, scheduler="pbt")
    assert "training.lr" in problems(e)["scheduler"]


def test_framework_dimension():
    dims, _ = as_space({"framework": cf.choice(["torch", "tensorflow"])})
    bad = check_space(DIGITS_SPEC, dims)
    has_keras = importlib.util.find_spec("cellforge.backends.keras") is not None
    assert bad == [] if has_keras else bad[0][0] == "space.framework"
    dims, _ = as_space({"framework": cf.choice(["torch", "jax"])})
    assert check_space(DIGITS_SPEC, dims)[0][0] == "space.framework"


def test_data_dimensions_are_detected():
    assert affects_data(as_space({"input.window": [12, 24]})[0])
    assert affects_data(as_space({"training.val_fraction": [0.1, 0.2]})[0])
    assert not affects_data(as_space({"training.lr": [0.1, 0.2], "hidden_size": [8]})[0])


def test_job_file_sweep_step(tmp_path):
    job, steps, _ = parse_job("jobs/sweep_and_deploy.yaml")
    kind, step = steps[0]
    assert kind == "sweep" and isinstance(step, SweepStep) and step.workers_per_trial == 2
    bad = {"steps": [{"sweep": {"data": {"dataset": "digitz"}, "spec": {"task": "classify"}, "trials": 4,
                                "space": {"hidden_size": {"choice": [0, 32]}, "training.lr": {"loguniform": [0, 1]}},
                                "scheduler": "asha"}}]}
    with pytest.raises(cf.SpecError) as e:
        parse_job(bad)
    problems = dict(e.value.problems)  # every problem at once, each under its own field
    assert "unknown data set 'digitz'" in problems["steps.0.sweep.data"]
    assert {"steps.0.sweep.space.hidden_size", "steps.0.sweep.space.training.lr"} <= set(problems)


def test_trials_are_numbered_and_errors_shown_by_their_own_line():
    from cellforge.tune.progress import error_line, trial_number

    assert trial_number("8cef6_00003") == 4  # random/grid search: '<experiment>_<0-based count>'
    assert trial_number("b1520a00", 2) == 2  # a searcher's random id: its place in creation order
    wrapped = ("ray.exceptions.RayTaskError(FloatingPointError): ray::ResourceTrainable.train()\n"
               '  File "loop.py", line 145, in worker_loop\n    raise FloatingPointError(...)\n'
               "FloatingPointError: training loss became nan at epoch 1; lower training.lr")
    assert error_line(wrapped) == "FloatingPointError: training loss became nan at epoch 1; lower training.lr"
