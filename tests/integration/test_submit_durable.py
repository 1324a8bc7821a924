"""Durable by default: a job file submitted with no storage configured, to a real two-node Ray
cluster, writes its bundle (a relative path in the job file) to the head node's stable directory
(~/cellforge/runs), not to Ray's temporary working directory; `cellforge submit` says where before
it starts, `cellforge jobs status` shows the bundle's location, and the bundle still loads and
reproduces the job's metrics after the cluster and its temp dirs are gone."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _ray_cluster import Cluster

import cellforge as cf
from cellforge.evaluate import evaluate

REPO = Path(__file__).resolve().parents[2]
# the default MLflow store is on: the tracking data must land durably too; make test-all: a second,
# two-node Ray cluster started and stopped (~90 s)
pytestmark = [pytest.mark.tracking, pytest.mark.slow]

JOB = """\
name: durable
steps:
  - train:
      id: fit
      data: {dataset: digits}
      spec: {task: classify, cell: gru, hidden_size: 16, training: {lr: 0.01, epochs: 2}}
      workers: 2
      bundle: ../runs/durable/bundle
  - evaluate: {bundle: ../runs/durable/bundle, data: {dataset: digits}}
"""


@pytest.fixture(scope="module")
def head_home(tmp_path_factory):
    return tmp_path_factory.mktemp("head-home")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, head_home):
    # the nodes' (and so the job's) home is a temp dir, and nothing configures CELLFORGE_RUNS on the
    # cluster (the test session sets one): the job must fall back to the head node's default
    saved = {k: os.environ.get(k) for k in ("HOME", "CELLFORGE_RUNS")}
    os.environ["HOME"] = str(head_home)
    os.environ.pop("CELLFORGE_RUNS", None)
    try:
        c = Cluster(tmp_path_factory.mktemp("cluster"))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield c
    c.stop()


def cellforge(*args, env, timeout=420):
    return subprocess.run([sys.executable, "-m", "cellforge.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


def test_a_submitted_jobs_bundle_outlives_the_job_and_the_cluster(cluster, head_home, tmp_path):
    project = tmp_path / "project"  # a project of its own: the job file in jobs/, as in this repo
    (project / "jobs").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (project / "jobs" / "durable.yaml").write_text(JOB)
    env = cluster.cli_env()
    env.pop("CELLFORGE_RUNS", None)  # nothing configured where the user submits either
    out = cellforge("submit", str(project / "jobs" / "durable.yaml"), "--address", cluster.address, "--wait", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    said = out.stdout + out.stderr
    announce = said.find("runs, bundles and tracking data go to ~/cellforge/runs on the head node")
    assert 0 <= announce < said.find(" submitted "), said[:2000]  # said before the job starts
    sid = re.search(r"submitted (\S+) to", said).group(1)
    assert f"{sid}: SUCCEEDED" in said

    root = head_home / "cellforge" / "runs"
    bundle = root / "durable" / "bundle"  # ../runs/durable/bundle, with the project's runs/ the durable root
    record = json.loads((root / "jobs" / f"{sid}.json").read_text())
    assert record["status"] == "SUCCEEDED" and record["root"] == str(root)
    assert record["bundles"] == {"fit": str(bundle)}
    # the evaluate step read the bundle the train step wrote there (not a copy in the working dir)
    metrics = record["outputs"]["fit"]["metrics"]
    assert record["outputs"]["evaluate"]["metrics"]["test_accuracy"] == pytest.approx(metrics["test_accuracy"])

    status = cellforge("jobs", "status", sid, "--address", cluster.address, env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"{sid}: SUCCEEDED")
    assert f"bundle (fit): {bundle}\n" in status.stdout  # read back from the job's logs (the root is remote)
    assert f"runs, bundles and tracking data: {root}\n" in status.stdout
    run_id = json.loads((bundle / "manifest.json").read_text())["provenance"]["run_id"]
    assert record["tracked"] == {"fit": f"runs:/{run_id}/bundle"}
    assert f"tracked (fit): runs:/{run_id}/bundle in sqlite:///{root}/mlflow.db\n" in status.stdout

    ray_tmp = [cluster.ray_tmp, cluster.worker_tmp]
    assert not any(str(bundle).startswith(str(t)) for t in ray_tmp)
    cluster.stop()  # the job, its working directory and Ray's temp dirs: all gone
    assert not any(t.exists() for t in ray_tmp)
    model = cf.load(bundle)  # verifies the checksums
    digits = cf.datasets.load("digits")
    assert model.predict(digits.x[:5]).shape == (5,)
    # the kept bundle reproduces the job's own test metrics, here without Ray
    assert evaluate(bundle, digits)["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    # the tracking store is there too, with the bundle among the run's artifacts
    from mlflow import MlflowClient

    tracked = MlflowClient(f"sqlite:///{root}/mlflow.db")
    assert tracked.get_run(run_id).info.status == "FINISHED"
    assert {a.path for a in tracked.list_artifacts(run_id, "bundle")} >= {"bundle/manifest.json"}
