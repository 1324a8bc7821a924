"""`cellforge ray status|stop` without a running local Ray, and what "the" local Ray is: the one
recorded under CELLFORGE_HOME, while its owner process lives (no Ray is started here)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from cellforge import local_ray


def _ray(home, *args):
    env = {**os.environ, "CELLFORGE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "cellforge.cli", "ray", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_status_and_stop_without_a_local_ray(tmp_path):
    status = _ray(tmp_path, "status")
    assert status.returncode == 1 and f"no local cellforge Ray under {tmp_path}" in status.stdout
    stop = _ray(tmp_path, "stop")
    assert stop.returncode == 0 and "no local cellforge Ray" in stop.stdout


def test_a_record_counts_only_while_its_owner_process_lives(tmp_path, monkeypatch):
    import psutil

    monkeypatch.setenv("CELLFORGE_HOME", str(tmp_path))
    me = psutil.Process()
    record = {"address": "127.0.0.1:1", "pid": me.pid, "pid_started": me.create_time(), "cpus": 8, "started": 0}
    (tmp_path / "ray.json").write_text(json.dumps(record))
    assert local_ray.state() == record
    (tmp_path / "ray.json").write_text(json.dumps({**record, "pid_started": me.create_time() - 100}))
    assert local_ray.state() is None  # the pid was reused by another process
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "ray.json").write_text(json.dumps({**record, "pid": int(done.stdout), "pid_started": None}))
    assert local_ray.state() is None  # its owner is gone


def test_clients_forget_ended_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLFORGE_HOME", str(tmp_path))
    local_ray._register(os.getpid())
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    (tmp_path / "clients" / str(ended.pid)).write_text("0")
    ended.wait()
    assert local_ray.clients() == [os.getpid()]
    assert sorted(p.name for p in (tmp_path / "clients").iterdir()) == [str(os.getpid())]


def test_the_start_says_when_rfc3987_syntax_slows_every_ray_process(monkeypatch, caplog):
    """Jupyter's rfc3987-syntax costs every Ray process its grammars on import: the local Ray's start
    says so when it is installed, and says nothing when it is not (the Makefile's venv removes it)."""
    import importlib.util

    real = importlib.util.find_spec
    for installed in (True, False):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, on=installed: (object() if on else None) if name == "rfc3987_syntax"
                            else real(name, *a))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cellforge"):
            assert local_ray.slow_import_hint() is installed
        said = [r.getMessage() for r in caplog.records if "rfc3987-syntax" in r.getMessage()]
        assert len(said) == (1 if installed else 0)
        if installed:
            assert "pip uninstall rfc3987-syntax" in said[0]
