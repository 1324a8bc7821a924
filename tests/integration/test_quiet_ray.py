"""What a user sees with a real Ray: cellforge's lines and real problems (a worker's traceback),
not Ray's, Serve's or TensorFlow's internals; and SIGTERM ends a served process cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

CHATTER = ["[2026-11-29 21:17:06,434 E 7748 7835] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
           "has constructor arguments in the object store",
           "INFO 2026-11-29 21:19:10,703 proxy 127.0.0.1 -- Got updated endpoints: {...}.",
           "I0000 00:00:1795987682.550076   14958 cudart_stub.cc:31] Could not find cuda drivers on your machine"]


def test_worker_chatter_stays_in_the_log_directory_and_a_traceback_still_reaches_the_user(ray_session, capsys):
    ray = ray_session

    @ray.remote
    def noisy(marker: str):
        for line in CHATTER:
            print(line, file=sys.stderr, flush=True)
        print(f"[cellforge] {marker}", flush=True)
        print(f"{marker}: a real problem", file=sys.stderr, flush=True)
        raise ValueError(f"{marker} failed")

    marker = f"noise-{os.getpid()}-{time.time_ns()}"
    with pytest.raises(ray.exceptions.RayTaskError) as e:
        ray.get(noisy.remote(marker))
    shown = str(e.value)  # the worker's traceback, on the driver
    assert ", in noisy" in shown and f"ValueError: {marker} failed" in shown
    out = err = ""
    deadline = time.time() + 30  # the driver prints workers' lines from a background thread
    while time.time() < deadline and not (f"[cellforge] {marker}" in out and f"{marker}: a real problem" in err):
        time.sleep(0.5)
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
    assert f"[cellforge] {marker}" in out.splitlines()  # cellforge's own line, without Ray's "(noisy pid=...)"
    assert f"{marker}: a real problem" in err
    for line in CHATTER:
        assert line not in out + err


def test_workers_get_the_quiet_tensorflow_log_level(ray_session):
    ray = ray_session

    @ray.remote
    def level():
        return os.environ.get("TF_CPP_MIN_LOG_LEVEL")

    assert ray.get(level.remote()) == os.environ["TF_CPP_MIN_LOG_LEVEL"] is not None


# After hold() returns the script leaves at once: what is checked is how the signal is handled (Ray's
# driver printed its fatal-signal trace at the signal), not Ray's own shutdown.
HOLD = """
import os, sys
from cellforge.runtime import ensure_ray
from cellforge.serving.deploy import hold
ensure_ray()  # a Ray driver, as `cellforge deploy` is (connected to the test session's Ray: no second Ray)
hold(True, None, "serving until Ctrl-C")
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_served_process_stops_cleanly_on_sigterm_as_on_ctrl_c(ray_session, sig):
    """Containers and schedulers stop a process with SIGTERM; Ray's driver made it a fatal signal
    with a stack trace. ``hold`` (what `cellforge deploy` and a job with a deploy step block in)
    stops on it as on Ctrl-C: exit 0, nothing on stderr."""
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout.readline().strip() == "[cellforge] serving until Ctrl-C", proc.stderr.read()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "***" not in err and "SIGTERM" not in err, err
    assert "[cellforge] stopping" in out
