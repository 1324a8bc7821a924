"""The cluster configs pass the tools that will read them: ray-cluster.yaml through Ray's own
cluster-launcher schema, the KubeRay manifests' Serve config through Ray Serve's schema, and every
path, import and job file they name exists in this repository."""

import copy
import importlib
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cellforge.jobs import parse_job

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "deploy" / "kuberay"


@pytest.fixture(scope="module")
def launcher():
    return yaml.safe_load((REPO / "ray-cluster.yaml").read_text())


def test_ray_cluster_yaml_passes_rays_schema(launcher):
    prepared = prepare_config(copy.deepcopy(launcher))
    validate_config(prepared)  # Ray's ray-schema.json plus its own checks
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert "GPU" not in head["resources"]  # a CPU head
    gpu = [t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 < gpu[0]["max_workers"]  # autoscales from zero


def test_ray_cluster_yaml_installs_cellforge_from_this_repo_with_token_auth(launcher):
    mounts = launcher["file_mounts"]
    target = next(remote for remote, local in mounts.items() if local == ".")
    assert any("pip install" in c and target.replace("~", "$HOME") in c for c in launcher["setup_commands"])
    # and without the grammars every Ray process would build on import (local_ray.slow_import_hint)
    assert any("pip uninstall" in c and "rfc3987-syntax" in c for c in launcher["setup_commands"])
    assert "~/.ray/auth_token" in mounts  # every node gets the token your laptop uses
    for cmd in launcher["head_start_ray_commands"][1:] + launcher["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in cmd
    assert ".venv" in launcher["rsync_exclude"] and "runs" in launcher["rsync_exclude"]


def test_a_broken_launcher_config_is_refused(launcher):
    bad = copy.deepcopy(launcher)
    bad["available_node_types"]["gpu_worker"]["min_wokers"] = 0
    with pytest.raises(Exception, match="min_wokers"):
        validate_config(prepare_config(bad))


def manifests():
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(KUBERAY.glob("*.yaml"))}


def cluster_specs():
    docs = manifests()
    return {"rayjob.yaml": docs["rayjob.yaml"]["spec"]["rayClusterSpec"],
            "rayservice.yaml": docs["rayservice.yaml"]["spec"]["rayClusterConfig"]}


def test_kuberay_manifests_have_their_kinds():
    docs = manifests()
    assert {n: (d["apiVersion"], d["kind"]) for n, d in docs.items()} == {
        "rayjob.yaml": ("ray.io/v1", "RayJob"), "rayservice.yaml": ("ray.io/v1", "RayService")}
    assert all(d["metadata"]["name"] for d in docs.values())


@pytest.mark.parametrize("name", ["rayjob.yaml", "rayservice.yaml"])
def test_kuberay_cluster_specs_are_complete(name):
    spec = cluster_specs()[name]
    assert spec["rayVersion"] == ray.__version__  # the Ray these tests run
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert head and all(c["name"] and c["image"] for c in head)
    assert {p["containerPort"] for p in head[0]["ports"]} >= {6379, 8265}
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for c in group["template"]["spec"]["containers"]:
            assert c["image"] and c["resources"]["limits"]


@pytest.mark.parametrize("name", ["rayjob.yaml", "rayservice.yaml"])
def test_kuberay_nodes_get_the_local_rays_serving_environment(name):
    """Every container of the cluster gets what fast_ingress_env gives the local Ray (the launcher's path
    is the image's: the Dockerfile writes it)."""
    from cellforge import runtime

    want = {"RAY_SERVE_ENABLE_HA_PROXY": "1", runtime.DRAIN_ENV: "5", **runtime.SERVE_THROUGHPUT}
    spec = cluster_specs()[name]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for c in (c for g in groups for c in g["template"]["spec"]["containers"]):
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        assert want.items() <= env.items(), (c["name"], env)


def test_kuberay_rayjob_runs_a_valid_job_file_and_scales_gpus_from_zero():
    job = manifests()["rayjob.yaml"]["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:4] == ["python", "-m", "cellforge.cli", "run"]
    parse_job(REPO / argv[4])  # the job file exists in the image's checkout and validates
    env = yaml.safe_load(job["runtimeEnvYAML"])
    ray.runtime_env.RuntimeEnv(**env)  # Ray's own runtime_env validation
    gpu = [g for g in job["rayClusterSpec"]["workerGroupSpecs"]
           if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu and gpu[0]["minReplicas"] == 0 and gpu[0]["maxReplicas"] > 0


def test_kuberay_rayservice_serve_config_passes_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    from cellforge.serving.config import DeployConfig

    config = yaml.safe_load(manifests()["rayservice.yaml"]["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    assert {a.name for a in schema.applications} >= {"cellforge", "digits"}
    for app in config["applications"]:
        module, attr = app["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        if "args" in app:
            DeployConfig.model_validate(app["args"])


def test_dockerfile_installs_this_repo_on_the_same_ray():
    text = (KUBERAY / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-" in text and "pip install" in text and "COPY" in text
    assert "pip uninstall -y -q rfc3987-syntax" in text  # local_ray.slow_import_hint: ~3 s per Ray process
