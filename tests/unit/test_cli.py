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
