"""Traffic control on the session's Serve, over real HTTP: a canary that fails every prediction and step
takes half the new traffic, and no client sees a failure (the live version answers what it failed, its
sessions move to the live version at their first step) until it rolls itself back; a healthy canary is
promoted under load, and a session started on the version it replaced is still answered by that version;
a canary rolled back by command ends its sessions that had stepped and moves those that had not."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

import cellforge as cf
from cellforge import bundle
from cellforge.backends import numpy as ref
from cellforge.cli import main
from cellforge.data import prepare
from cellforge.errors import SpecError
from cellforge.serving.config import canary_app

NAME = "canary-digits"


def _bundle(root, seed: int, broken: bool = False):
    """A digits classifier (untrained weights: routing is what is tested). ``broken``: its scaler has one
    value fewer than the data's 8 features, so every prediction and session step fails in the replica
    (numpy cannot broadcast it: a 500), while the bundle itself verifies and loads."""
    spec, prepared = prepare(cf.ModelSpec(task="classify", hidden_size=8), cf.datasets.load("digits"))
    state = prepared.preprocessor.state
    if broken:
        state = {**state, "scaler": {k: v[:-1] for k, v in state["scaler"].items()}}
    return bundle.save(root / f"v{seed}{'-broken' * broken}", spec, ref.init_params(spec, seed=seed), state,
                       {"test": {}})


def _wait(check, what: str, timeout: float = 30):
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


class Traffic:
    """Predictions and session steps over plain HTTP (no client retries: every failure is seen)."""

    def __init__(self, base: str):
        self.http = httpx.Client(base_url=f"{base}/v1/models/{NAME}", timeout=60)
        self.failed: list[tuple[int, str]] = []

    def _ok(self, r: httpx.Response, expected: int = 200) -> dict:
        if r.status_code != expected:
            self.failed.append((r.status_code, r.text[:300]))
        return r.json()

    def predict(self, x) -> dict:
        return self._ok(self.http.post("/predict", json={"inputs": x.tolist()}))

    def session(self) -> dict:
        return self._ok(self.http.post("/sessions"))

    def step(self, sid: str, steps, offset: int, expected: int = 200) -> dict:
        return self._ok(self.http.post(f"/sessions/{sid}/step", json={"inputs": steps.tolist(), "offset": offset}),
                        expected)

    def metrics(self) -> dict:
        return self._ok(self.http.get("/metrics"))


def test_a_failing_canary_rolls_back_with_no_failed_request_and_a_promote_keeps_old_sessions(
        ray_session, serve_module, tmp_path, capsys):
    images = cf.datasets.load("digits").x[:4].astype(np.float64)
    v1, v3 = _bundle(tmp_path, 1), _bundle(tmp_path, 3)
    ref1, ref3 = cf.load(v1), cf.load(v3)
    with pytest.raises(SpecError, match="no live version"):  # a canary needs a live version beside it
        cf.deploy(v3, NAME, canary=10)
    live = cf.deploy(v1, NAME, num_replicas=1, num_cpus=0.25)
    t = Traffic(live.base_url)

    # 1. a canary that fails everything, at 50%: rolled back by itself after 12 failures; no client sees one
    bad = cf.deploy(_bundle(tmp_path, 2, broken=True), NAME, canary=50, max_error_rate=0.2, min_requests=12,
                    num_replicas=1, num_cpus=0.25)
    assert bad.version != live.version  # deploy returned: the live replica sends it traffic
    answers, started = [t.predict(images[:2]) for _ in range(16)], []
    for _ in range(6):  # sessions: half start on the canary; its failed first step moves them to the live version
        s = t.session()
        started.append(s["version"])
        outs = [t.step(s["session_id"], images[0][:4], 0), t.step(s["session_id"], images[0][4:], 4)]
        assert [o["version"] for o in outs] == [live.version] * 2
        np.testing.assert_allclose(np.concatenate([o["probabilities"] for o in outs]),
                                   ref1.predict_proba([images[0][: k + 1] for k in range(8)]), atol=1e-5)
    answers += [t.predict(images[:2]) for _ in range(10)]
    assert t.failed == [], t.failed[:3]
    assert {a["version"] for a in answers} == {live.version}
    np.testing.assert_allclose(answers[-1]["probabilities"], ref1.predict_proba(images[:2]), atol=1e-5)
    assert started.count(bad.version) == 3  # sessions stay on the version that started them, unless it fails

    _wait(lambda: (t.metrics()["canary"] or {}).get("state") == "rolled_back", "the automatic rollback")
    _wait(lambda: canary_app(NAME) not in serve_module.status().applications, "the canary's app to go")
    m = t.metrics()
    assert "error rate 100.0%" in m["canary"]["reason"]
    assert m["versions"][bad.version]["errors"] == m["versions"][bad.version]["requests"] == 12
    assert m["versions"][live.version]["errors"] == 0 and m["versions"][live.version]["requests"] >= 20
    assert main(["canary", NAME, "--url", live.base_url]) == 0
    assert f"canary {bad.version}" in capsys.readouterr().out

    # 2. a healthy canary takes every other new session and prediction, then is promoted under load
    good = cf.deploy(v3, NAME, canary=50, num_replicas=1, num_cpus=0.25)
    sessions = {}
    while len(sessions) < 2:
        s = t.session()
        sessions.setdefault(s["version"], s["session_id"])
    first = {v: t.step(sid, images[1][:4], 0) for v, sid in sessions.items()}
    assert {v: o["version"] for v, o in first.items()} == {live.version: live.version, good.version: good.version}
    by_version = {a["version"]: a for a in (t.predict(images[:2]) for _ in range(4))}
    np.testing.assert_allclose(by_version[good.version]["probabilities"], ref3.predict_proba(images[:2]), atol=1e-5)
    main(["canary", NAME, "--url", live.base_url])
    report = capsys.readouterr().out
    assert f"canary {good.version} takes 50%" in report and "active" in report

    stop, during = threading.Event(), []

    def hammer():
        h = Traffic(live.base_url)
        while not stop.is_set():
            during.append(h.predict(images[:1]).get("version"))
        t.failed += h.failed

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        assert main(["promote", NAME]) == 0
        n = len(during)
        _wait(lambda: len(during) > n + 5, "predictions after the promote")
    finally:
        stop.set()
        thread.join()
    assert t.failed == [], t.failed[:3]
    assert during[-1] == good.version
    # the session started on the replaced version finishes on it; the canary's goes on as the live version
    old, new = (t.step(sessions[v], images[1][4:], 4) for v in (live.version, good.version))
    assert (old["version"], new["version"]) == (live.version, good.version)
    np.testing.assert_allclose(old["probabilities"], ref1.predict_proba([images[1][: k + 1] for k in range(4, 8)]),
                               atol=1e-5)
    np.testing.assert_allclose(new["probabilities"], ref3.predict_proba([images[1][: k + 1] for k in range(4, 8)]),
                               atol=1e-5)
    assert t.metrics()["version"] == good.version and t.session()["version"] == good.version

    # 3. rolled back by command: a session that had stepped on the canary ends (409), one that had not moves
    last = cf.deploy(_bundle(tmp_path, 4), NAME, canary=50, num_replicas=1, num_cpus=0.25)
    on_canary = [s["session_id"] for s in (t.session() for _ in range(4)) if s["version"] == last.version]
    assert len(on_canary) == 2
    assert t.step(on_canary[0], images[2][:4], 0)["version"] == last.version
    assert main(["rollback", NAME]) == 0
    assert "rolled back by command" in capsys.readouterr().out
    gone = t.step(on_canary[0], images[2][4:], 4, expected=409)
    assert gone["problems"][0]["field"] == "session_id" and "rolled back" in gone["message"]
    assert t.step(on_canary[1], images[2][:4], 0)["version"] == good.version
    assert {t.predict(images[:1])["version"] for _ in range(4)} == {good.version}
    assert t.failed == [], t.failed[:3]
