"""The registry round trip on the session's Serve: register -> alias -> deploy models:/NAME@ALIAS ->
GET /v1/models shows the version and the run that made it; moving the alias and deploying again
switches versions with no failed request; a verify key refuses an unsigned registered bundle."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

import cellforge as cf
from cellforge import bundle, registry, signing, tracking
from cellforge.backends import numpy as ref
from cellforge.data import prepare

pytestmark = pytest.mark.tracking  # the default MLflow store is on here (tests/conftest.py)


def _bundle_of_a_run(root, seed):
    """A digits classifier bundle (untrained weights: serving is what is tested) made by a tracked run."""
    spec, prepared = prepare(cf.ModelSpec(task="classify", hidden_size=8), cf.datasets.load("digits"))
    run = tracking.start(None, root, run_name=f"fit-{seed}", params={"seed": seed},
                         tags={"cellforge.kind": "fit"}, id_file=root / f"fit-{seed}" / "tracking.json")
    path = bundle.save(root / f"fit-{seed}" / "bundle", spec, ref.init_params(spec, seed=seed),
                       prepared.preprocessor.state, {"test": {}}, provenance=tracking.provenance(run.run_id, "fp"))
    run.finish([], {}, path)
    return path, run.run_id


def _served(base, name):
    models = httpx.get(f"{base}/v1/models", timeout=30).json()["models"]
    return next(m for m in models if m["name"] == name)


def test_deploy_by_alias_shows_the_run_and_moving_the_alias_switches_without_a_failed_request(
        ray_session, serve_module, runs, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(signing.VERIFY_KEY_ENV, raising=False)
    runs.mkdir(parents=True)
    (b1, r1), (b2, r2) = _bundle_of_a_run(runs, 1), _bundle_of_a_run(runs, 2)
    assert main_ok(["register", str(b1), "--name", "reg-digits", "--alias", "production"])
    registry.register(b2, "reg-digits")
    ep = cf.deploy("models:/reg-digits@production", "reg-digits", num_replicas=1, num_cpus=0.25)
    info = _served(ep.base_url, "reg-digits")
    assert (info["version"], info["run_id"], info["source"]) == ("1", r1, "models:/reg-digits/1")

    images = cf.datasets.load("digits").x[:2].astype(np.float64).tolist()
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(base_url=ep.base_url, timeout=60) as http:
            while not stop.is_set():
                r = http.post("/v1/models/reg-digits/predict", json={"inputs": images})
                seen.append((r.status_code, r.json().get("version") if r.status_code == 200 else r.text[:200]))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        _wait(lambda: len(seen) > 10, "requests before the switch")
        registry.set_alias("reg-digits", "production", 2)
        from cellforge.jobs import run_job  # a job file's deploy step takes the reference too

        run_job({"steps": [{"deploy": {"bundle": "models:/reg-digits@production", "name": "reg-digits",
                                       "num_replicas": 1, "num_cpus": 0.25, "block": False,
                                       "port": int(ep.base_url.rsplit(":", 1)[1])}}]})
        _wait(lambda: seen[-1][1] == "2", "the new version to answer")
        n = len(seen)
        _wait(lambda: len(seen) > n + 10, "requests after the switch")
    finally:
        stop.set()
        thread.join()
    assert {s for s, _ in seen} == {200}, [v for s, v in seen if s != 200][:3]
    assert [v for _, v in seen][0] == "1" and seen[-1][1] == "2"
    info = _served(ep.base_url, "reg-digits")
    assert (info["version"], info["run_id"]) == ("2", r2)
    np.testing.assert_allclose(cf.Client(ep.base_url).predict("reg-digits", images)["probabilities"],
                               cf.load(b2).predict_proba(images), atol=1e-5)

    # a deployment with a verify key refuses the (unsigned) registered bundle, before any replica starts
    key, pub = signing.keygen(runs / "keys" / "team.pem")
    with pytest.raises(cf.BundleError, match="is not signed"):
        cf.deploy("models:/reg-digits@production", "reg-digits-signed", verify_key=str(pub))


def main_ok(argv) -> bool:
    from cellforge.cli import main

    return main(argv) == 0


def _wait(cond, what, timeout=120):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
