"""`cellforge submit` before anything reaches a cluster: where the token and the address come
from, what travels with a job, and inputs refused with a clear message (nothing submitted)."""

import subprocess
import sys
from pathlib import Path

import pytest

import cellforge
from cellforge.errors import SpecError
from cellforge.submit import (
    auth_token,
    dashboard_address,
    parse_pairs,
    project_root,
    runtime_env,
    submit,
)

REPO = Path(__file__).resolve().parents[2]


def test_token_is_found_where_rays_cli_looks(tmp_path, monkeypatch):
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert auth_token() == "from-home"
    (tmp_path / "t").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_token() == "from-env"


def test_address_defaults(monkeypatch):
    for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    assert dashboard_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a Ray Client address is not the job server
    assert dashboard_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert dashboard_address() == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert dashboard_address() == "http://api:8265"
    assert dashboard_address("http://given:1") == "http://given:1"


def test_the_job_carries_the_project_and_the_installed_package():
    root = project_root(REPO / "jobs" / "quickstart.yaml")
    assert root == REPO
    env = runtime_env(root, {"CELLFORGE_RUNS": "/shared"})
    assert env["working_dir"] == str(REPO)
    assert env["py_modules"] == [str(Path(cellforge.__file__).parent)]
    assert {".venv/", "runs/", ".git/"} <= set(env["excludes"])
    assert env["env_vars"] == {"CELLFORGE_RUNS": "/shared"}


def test_parameters_read_as_yaml():
    assert parse_pairs(["epochs=3", "lr=0.01", "cell=gru", "sizes=[16, 32]", "name=a=b"], "params", True) == {
        "epochs": 3, "lr": 0.01, "cell": "gru", "sizes": [16, 32], "name": "a=b"}
    with pytest.raises(SpecError, match="expected NAME=VALUE, got 'epochs'"):
        parse_pairs(["epochs"], "params", True)


@pytest.mark.parametrize("target, params, message", [
    ("missing.yaml", None, "target: file not found"),
    ("README.md", None, "expected a job file (.yaml) or a notebook (.ipynb)"),
    ("jobs/quickstart.yaml", {"epochs": 3}, "-p applies to notebooks"),
    ("notebooks/01_quickstart.ipynb", {"epoch": 3}, "params.epoch: not a parameter of 01_quickstart.ipynb"),
])
def test_bad_submissions_are_refused_before_contacting_a_cluster(target, params, message, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SpecError) as e:
        submit(target, "http://127.0.0.1:1", params=params)  # nothing listens there: never reached
    assert message in str(e.value)


def test_a_broken_job_file_is_never_submitted(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("steps:\n  - train: {data: {dataset: digits}, spec: {hidden_size: 0}}\n")
    out = subprocess.run([sys.executable, "-m", "cellforge.cli", "submit", str(job), "--address", "http://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "steps.0.train.spec.hidden_size" in out.stderr and "Traceback" not in out.stderr


def test_an_unreachable_cluster_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    out = subprocess.run([sys.executable, "-m", "cellforge.cli", "jobs", "list", "--address", "http://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "cannot reach the Ray job server at http://127.0.0.1:1" in out.stderr and "Traceback" not in out.stderr
