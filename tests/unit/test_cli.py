"""The CLI on bad job files: one clear message listing every problem, non-zero exit, nothing written."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

BAD = textwrap.dedent("""
    name: broken
    colour: blue
    steps:
      - train:
          data: {path: missing.csv}
          spec:
            task: classify
            hidden_size: 0
            cell: lstm
            num_layers: many
            training: {lr: -0.1, optimizer: adamw}
          workers: 0
      - train:
          data: {dataset: digits}
          spec: {task: forecast, horizon: 0}
""")


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cellforge.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_job_file_lists_every_problem_and_writes_nothing(tmp_path, command):
    job = tmp_path / "bad.yaml"
    job.write_text(BAD)
    out = cli(command, str(job), cwd=tmp_path)
    assert out.returncode != 0
    err = out.stderr
    # the top-level unknown key is reported first on its own (the steps are checked once the job parses)
    assert "colour: unknown field" in err
    job.write_text(BAD.replace("colour: blue\n", ""))
    out = cli(command, str(job), cwd=tmp_path)
    assert out.returncode != 0
    err = out.stderr
    for path in ["steps.0.train.workers", "steps.0.train.spec.hidden_size", "steps.0.train.spec.num_layers",
                 "steps.0.train.spec.training.lr", "steps.0.train.spec.training.optimizer",
                 "steps.0.train.data.path: file not found", "steps.1.train.spec.horizon"]:
        assert path in err, f"{path} missing from:\n{err}"
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no runs/, no half-written bundle


def test_unknown_step_and_bad_yaml(tmp_path):
    job = tmp_path / "j.yaml"
    job.write_text("steps:\n  - trian: {}\n")
    out = cli("validate", str(job), cwd=tmp_path)
    assert out.returncode == 1 and "steps.0.trian: unknown step kind" in out.stderr
    job.write_text("steps: [\n")
    out = cli("validate", str(job), cwd=tmp_path)
    assert out.returncode == 1 and "not valid YAML" in out.stderr
    out = cli("run", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert out.returncode == 2 and "job file not found" in out.stderr


def test_shipped_quickstart_validates():
    out = cli("validate", str(REPO / "jobs" / "quickstart.yaml"), cwd=REPO)
    assert out.returncode == 0, out.stderr


# the step commands, made from the job steps ------------------------------------------------------
@pytest.fixture(scope="module")
def forecast_bundle(tmp_path_factory):
    """An untrained (seeded) forecaster on the shipped sunspots CSV: the commands must answer as the
    Python API does."""
    import cellforge as cf
    from cellforge import bundle
    from cellforge.backends.numpy import init_params
    from cellforge.data import prepare

    spec = cf.ModelSpec(task="forecast", cell="gru", hidden_size=8, horizon=2,
                        input={"columns": ["SUNACTIVITY"], "target": "SUNACTIVITY", "window": 12})
    spec, prepared = prepare(spec, REPO / "jobs" / "data" / "sunspots.csv")
    return bundle.save(tmp_path_factory.mktemp("b") / "sun", spec, init_params(spec, 2), prepared.preprocessor.state, {})


def test_every_step_is_a_command_with_a_flag_per_field():
    from cellforge.cli import build_parser
    from cellforge.jobs import STEPS

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here only
    for kind, step in STEPS.items():
        flags = {o for a in commands[kind]._actions for o in a.option_strings} | {
            a.dest for a in commands[kind]._actions if not a.option_strings}
        for name in step.model_fields:
            if name == "id" or name in ("autoscaling", "batching"):  # nested configs: a flag per sub-field
                continue
            assert name in flags or "--" + name.replace("_", "-") in flags, f"cellforge {kind}: no flag for {name}"
    deploy = {o for a in commands["deploy"]._actions for o in a.option_strings}
    assert {"--min-replicas", "--max-replicas", "--max-batch-size", "--no-batching", "--batch-wait-ms",
            "--num-replicas", "--num-cpus", "--runtime", "--api-key", "--block", "--config"} <= deploy


def test_step_command_reports_every_problem_like_a_job_file(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("task: classify\nhidden_size: 0\ncell: lstmm\n")
    out = cli("train", str(spec), "--data", "digitz.csv", "--workers", "0", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    for path in ("steps.0.train.spec.hidden_size", "steps.0.train.spec.cell", "steps.0.train.workers",
                 "steps.0.train.data.path: file not found"):
        assert path in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_evaluate_and_predict_commands_answer_as_the_api(forecast_bundle, tmp_path):
    import json

    import cellforge as cf
    from cellforge.evaluate import evaluate

    csv = REPO / "jobs" / "data" / "sunspots.csv"
    out = cli("evaluate", str(forecast_bundle), "--data", str(csv), "--split", "all", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    want = evaluate(forecast_bundle, csv, "all")
    assert f"all_rmse {want['all_rmse']:.4g}" in out.stdout
    out = cli("predict", str(forecast_bundle), "--input", str(csv), cwd=tmp_path)  # no --output: printed
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)  # the predictions alone, ready for a pipe
    values = cf.load(forecast_bundle).predict([cf.datasets.load("sunspots").values[-12:, 0]])[0]
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["SUNACTIVITY"] for r in rows] == pytest.approx(list(values), abs=1e-4)
