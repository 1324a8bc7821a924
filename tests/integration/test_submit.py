"""`cellforge submit` against a real two-node Ray cluster (`ray start`) with token authentication
on: a job file and a notebook run as Ray jobs, their logs are followed to the end, their results
checked; the cluster's own processes are ended afterwards, nothing else."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from _ray_cluster import Cluster

import cellforge as cf

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


def cellforge(*args, env, timeout=420):
    return subprocess.run([sys.executable, "-m", "cellforge.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


def test_job_file_runs_on_the_cluster_and_its_logs_are_followed(cluster, tmp_path):
    runs = tmp_path / "runs"
    job = tmp_path / "job.yaml"  # outside any project: the job carries its own directory
    job.write_text(textwrap.dedent("""
        name: submitted
        steps:
          - train:
              id: fit
              name: submitted
              data: {dataset: digits}
              spec: {task: classify, cell: gru, hidden_size: 16, training: {lr: 0.01, epochs: 3}}
              workers: 2
          - evaluate: {bundle: "${fit.bundle}", data: {dataset: digits}}
    """))
    out = cellforge("submit", str(job), "--address", cluster.address, "-e", f"CELLFORGE_RUNS={runs}", "--wait",
                    env=cluster.cli_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sid = re.search(r"submitted (\S+) to", out.stdout).group(1)
    assert f"{sid}: SUCCEEDED" in out.stdout
    # the followed logs carry the whole run: both steps and their outputs
    outputs = json.loads(re.search(r"\[cellforge\] outputs (\{.*\})", out.stdout).group(1))
    bundle = Path(outputs["fit"]["bundle"])
    assert bundle == runs / "submitted" / "bundle" and bundle.is_dir()
    model = cf.load(bundle)  # verifies the checksums
    acc = outputs["evaluate"]["metrics"]["test_accuracy"]
    assert acc == pytest.approx(outputs["fit"]["metrics"]["test_accuracy"], abs=1e-6)
    assert acc > 0.5  # 3 epochs of a small GRU: far above chance (0.1)
    digits = cf.datasets.load("digits")
    assert (model.predict(digits.x[:200]) == digits.y[:200]).mean() > 0.5
    # the job is listed, and its status and logs are there after the fact
    listed = cellforge("jobs", "list", "--address", cluster.address, env=cluster.cli_env())
    assert sid in listed.stdout and "SUCCEEDED" in listed.stdout
    status = cellforge("jobs", "status", sid, "--address", cluster.address, env=cluster.cli_env())
    assert status.stdout.startswith(f"{sid}: SUCCEEDED")
    logs = cellforge("jobs", "logs", sid, "--address", cluster.address, env=cluster.cli_env())
    assert "[cellforge] step evaluate (evaluate)" in logs.stdout


def test_without_the_token_the_cluster_refuses(cluster, tmp_path):
    env = cluster.cli_env(HOME=str(tmp_path))  # no ~/.ray/auth_token there
    env.pop("RAY_AUTH_TOKEN")
    out = cellforge("jobs", "list", "--address", cluster.address, env=env)
    assert out.returncode == 2, out.stderr
    assert "Authentication required" in out.stderr and "No Ray auth token was found" in out.stderr
    assert "Traceback" not in out.stderr
    env["RAY_AUTH_TOKEN"] = "not-the-token"
    out = cellforge("jobs", "list", "--address", cluster.address, env=env)
    assert out.returncode == 2 and "Authentication failed" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow  # make test-all: a notebook as a Ray job (make test submits a job file)
def test_a_notebook_runs_as_a_job_and_the_executed_notebook_is_kept(cluster, tmp_path):
    out_dir = tmp_path / "executed"
    out = cellforge("submit", "notebooks/01_quickstart.ipynb", "--address", cluster.address, "-p", "epochs=1",
                    "-p", "hidden=16", "-p", "workers=2", "--output", str(out_dir), "-e",
                    f"CELLFORGE_RUNS={tmp_path / 'runs'}", "--wait", env=cluster.cli_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    executed = list(out_dir.glob("01_quickstart-*.ipynb"))
    assert len(executed) == 1 and f"executed notebook: {executed[0]}" in out.stdout
    nb = nbformat.read(executed[0], as_version=4)
    assert nb.metadata.papermill.parameters == {"epochs": 1, "hidden": 16, "workers": 2}
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "epochs = 1" in injected[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)  # every cell ran
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in code for o in c.outputs)  # the plots are in it



@pytest.mark.slow  # make test-all: a notebook run end to end; make test runs 01 through the Jupyter server and checks every notebook is committed clean
def test_notebook_05_submits_a_job_file_and_follows_it(cluster, tmp_path, monkeypatch):
    import papermill

    job = tmp_path / "job.yaml"
    job.write_text(textwrap.dedent("""
        name: from-notebook
        steps:
          - train:
              name: from-notebook
              data: {dataset: digits}
              spec: {task: classify, cell: gru, hidden_size: 8, training: {epochs: 1}}
    """))
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)  # the kernel's client finds the token here
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runs = tmp_path / "runs"
    out = tmp_path / "05.ipynb"
    papermill.execute_notebook(str(REPO / "notebooks" / "05_submit_to_cluster.ipynb"), str(out), kernel_name="python3",
                               parameters={"address": cluster.address, "job": str(job),
                                           "env": {"CELLFORGE_RUNS": str(runs)}},
                               cwd=str(REPO / "notebooks"), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for c in nb.cells for o in c.get("outputs", []))
    assert "status: SUCCEEDED" in text and "test_accuracy" in text  # followed to the end, results read back
    cf.load(runs / "from-notebook" / "bundle")
