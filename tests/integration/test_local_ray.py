"""One local cellforge Ray per machine (per CELLFORGE_HOME): the first process starts it, the others
connect to it, it outlives them until it is stopped or idle, and stopping it leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cellforge import local_ray

USE = """
import os, ray
from cellforge.runtime import ensure_ray
ensure_ray()
print(ray.get_runtime_context().gcs_address, ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid())
"""


def _use(env, starts: bool) -> list[str]:
    """Run a process that uses the local Ray: (its GCS address, whether a task ran in a worker)."""
    out = subprocess.run([sys.executable, "-c", USE], env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert ("[cellforge] starting this machine's local Ray" in out.stdout) == starts, out.stdout  # the status
    return lines[-1].split()


def _cli(env, *args):
    return subprocess.run([sys.executable, "-m", "cellforge.cli", "ray", *args], env=env, capture_output=True,
                          text=True, timeout=200)


def _session(pid: int) -> list[psutil.Process]:
    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == pid:
                left.append(p)
        except (ProcessLookupError, PermissionError):
            pass
    return left


def test_the_test_session_uses_its_own_local_ray(ray_session):
    s = local_ray.state()
    assert s is not None and s["address"] == ray_session.get_runtime_context().gcs_address
    assert local_ray.home() != Path.home() / ".cellforge"  # conftest's temporary one, not a user's


@pytest.mark.slow  # make test-all: starts, shares and stops a second local Ray (~70 s)
def test_processes_share_one_local_ray_that_outlives_them_until_stopped_or_idle(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(CELLFORGE_HOME=str(tmp_path / "home"), CELLFORGE_RAY_IDLE_S="3600")
    monkeypatch.setenv("CELLFORGE_HOME", env["CELLFORGE_HOME"])  # what local_ray reads here
    try:
        first = _use(env, starts=True)  # starts it, then exits
        assert first[1] == "True"  # a task ran in a worker of that Ray
        s = local_ray.state()
        assert s is not None and s["address"] == first[0]  # it outlived the process that started it
        assert _use(env, starts=False)[0] == first[0]  # a second process connects to it, no second Ray
        status = _cli(env, "status")
        assert status.returncode == 0 and first[0] in status.stdout, status
        assert _session(s["pid"]), "the local Ray's processes run in the owner's session"
        stop = _cli(env, "stop")
        assert stop.returncode == 0 and "stopped" in stop.stdout, stop
        assert local_ray.state() is None and _session(s["pid"]) == []  # nothing leaks
        assert _cli(env, "status").returncode == 1

        env["CELLFORGE_RAY_IDLE_S"] = "3"
        second = _use(env, starts=True)
        s = local_ray.state()
        assert s is not None and second[0] == s["address"]
        deadline = time.monotonic() + 120
        while local_ray.state() is not None and time.monotonic() < deadline:
            time.sleep(1)
        assert local_ray.state() is None, "an idle local Ray stops by itself"
        psutil.wait_procs(_session(s["pid"]), timeout=30)
        assert _session(s["pid"]) == []
    finally:
        local_ray.stop()
