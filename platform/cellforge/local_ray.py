"""One local cellforge Ray per machine: the first kernel, job or CLI call starts it, the others connect.

The Ray belongs to a small process of its own (``local_ray.main``), started detached
in a session of its own: it starts Ray as an embedded Ray is started (bound to 127.0.0.1, Ray's token
authentication on), writes ``<home>/ray.json`` (the GCS address, its pid) and keeps Ray until it is
stopped (``cellforge ray stop``, or SIGTERM) or idle - no process that used it alive and no Serve
application - for ``CELLFORGE_RAY_IDLE_S`` seconds (default 600). So it outlives the kernel that
started it (a second notebook finds it), Jupyter's signals to a kernel's process group never reach
it, and stopping it ends every process it started.

``<home>`` is ``$CELLFORGE_HOME`` (default ``~/.cellforge``): what "the" local Ray is depends on it, so a
test session sets a temporary one and never joins another session's Ray.

    cellforge ray status      # its address, pid, age and the processes using it
    cellforge ray stop
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellforge import _ray
from cellforge.log import log

IDLE_S = 600  # a local Ray nobody used for this long stops (CELLFORGE_RAY_IDLE_S)
START_TIMEOUT_S = 300  # Ray's own start can take a minute or more on a busy 2-core machine
POLL_S = 2.0


def home() -> Path:
    return Path(os.environ.get("CELLFORGE_HOME") or Path.home() / ".cellforge")


def state() -> dict[str, Any] | None:
    """The running local Ray's ``ray.json`` (address, pid, cpus, started), or None when none is running."""
    f = home() / "ray.json"
    try:
        s = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return s if _alive(s.get("pid"), s.get("pid_started")) else None


def _alive(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` is the process that was started at ``started`` (a reused pid is not)."""
    import psutil

    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and (started is None or abs(p.create_time() - started) < 1)
    except (psutil.Error, TypeError, ValueError):
        return False


@contextlib.contextmanager
def _locked():
    """One process at a time decides whether to start the local Ray (two kernels starting together)."""
    home().mkdir(parents=True, exist_ok=True)
    with open(home() / "ray.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def address(cpus: int, env: Callable[[], dict[str, str]] | None = None) -> str:
    """The local Ray's GCS address, starting it (with ``cpus`` logical CPUs, and ``env()`` added to the
    environment of its processes) if none is running; this process is recorded as using it."""
    with _locked():
        s = state()
        if s is None:
            idle = float(os.environ.get("CELLFORGE_RAY_IDLE_S", IDLE_S))
            log.info("starting this machine's local Ray on 127.0.0.1 (other notebooks and commands share it; it "
                     "stops after %.0f min idle, or with `cellforge ray stop`)", idle / 60)
            start = time.monotonic()
            s = _start_owner(cpus, env() if env else {})
            log.info("local Ray up in %.0f s", time.monotonic() - start)
            slow_import_hint()
    _register(os.getpid())
    return s["address"]


def slow_import_hint() -> bool:
    """Say once, when this machine's Ray starts, that rfc3987-syntax is installed: Jupyter brings it
    (jupyter-events asks for ``jsonschema[format-nongpl]``), jsonschema imports it when Ray is imported,
    and it builds its grammars on import, about 3 s in every Ray process on 2 cores (a local Ray's start
    took 34 s with it, 12 s without). Only jsonschema's optional ``iri`` format check uses it."""
    if importlib.util.find_spec("rfc3987_syntax") is None:
        return False
    log.info("rfc3987-syntax is installed: every Ray process spends seconds building its grammars on "
             "import; `pip uninstall rfc3987-syntax` makes Ray's processes start faster (only jsonschema's "
             "`iri` format check uses it)")
    return True


def _start_owner(cpus: int, extra: dict[str, str]) -> dict[str, Any]:
    (home() / "ray.json").unlink(missing_ok=True)
    env = {**os.environ, **extra}
    src = str(Path(__file__).resolve().parents[1])  # this cellforge, wherever it was imported from
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("RAY_ADDRESS", None)
    log = open(home() / "ray.log", "ab")
    # not `-m cellforge.local_ray`: importing the package imports this module first, and runpy warns
    owner = "import sys; from cellforge.local_ray import main; main(sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", owner, "--cpus", str(cpus)], env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while (s := state()) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            _end_session(proc.pid)  # the owner and whatever of Ray it had started
            tail = (home() / "ray.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the local Ray did not start (see {home() / 'ray.log'}):\n{tail}")
        time.sleep(0.2)
    return s


def _register(pid: int) -> None:
    import psutil

    clients = home() / "clients"
    clients.mkdir(parents=True, exist_ok=True)
    (clients / str(pid)).write_text(str(psutil.Process(pid).create_time()))


def clients() -> list[int]:
    """The live processes that connected to the local Ray (forgetting those that ended)."""
    alive = []
    for f in (home() / "clients").glob("*"):
        try:
            started = float(f.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(f.name), started):
            alive.append(int(f.name))
        else:
            f.unlink(missing_ok=True)
    return sorted(alive)


def stop(timeout: float = 120) -> bool:
    """Stop the local Ray and every process it started; False if none was running."""
    s = state()
    if s is None:
        return False
    os.kill(s["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(s["pid"], s.get("pid_started")) and time.monotonic() < deadline:
        time.sleep(0.2)
    _end_session(s["pid"])  # whatever Ray left behind in the owner's session, or the owner if it hung
    return True


def _end_session(sid: int) -> None:
    import psutil

    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                p.kill()
                left.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    psutil.wait_procs(left, timeout=10)


def start_embedded(cpus: int) -> None:
    """Start Ray in this process, bound to 127.0.0.1 (the local Ray's owner does this)."""
    import psutil
    import ray

    _ray.loopback_only()  # keep the node on 127.0.0.1
    for attempt in (1, 2, 3):
        before = {c.pid for c in psutil.Process().children(recursive=True)}
        try:
            ray.init(address="local", num_cpus=cpus, _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                     logging_level=logging.WARNING)
            return
        except Exception as e:
            # On a busy small machine the raylet can give up waiting for its metrics agent (a fixed
            # 15 s, ray-project/ray#65983) and the start times out; a second try usually succeeds.
            if attempt == 3 or "timed out during startup" not in str(e):
                raise
            ray.shutdown()
            for child in psutil.Process().children(recursive=True):  # the failed start's GCS, dashboard...
                if child.pid not in before:
                    child.kill()


def _serving() -> bool:
    """Whether Serve runs an application on this Ray (an endpoint keeps the local Ray busy)."""
    import ray

    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    if not any("SERVE_CONTROLLER" in n for n in names):
        return False
    try:
        from ray import serve

        return bool(serve.status().applications)
    except Exception:  # noqa: BLE001 - cannot tell: keep it
        return True


def _own(cpus: int, idle_s: float) -> None:
    """The owner's life: start Ray, publish it, keep it until stopped or idle, then end all of it."""
    import psutil
    import ray

    stopping = []
    start_embedded(cpus)
    # after ray.init: Ray's driver makes SIGTERM a fatal signal with a stack trace; here it means "stop"
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.append(1))
    me = psutil.Process()
    s = {"address": ray.get_runtime_context().gcs_address, "pid": me.pid, "pid_started": me.create_time(),
         "cpus": cpus, "started": time.time(),
         # Prometheus scrapes Ray's metrics agent here: Serve's and the endpoints' (serving.metrics)
         "metrics": f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"}
    tmp = home() / "ray.json.tmp"
    tmp.write_text(json.dumps(s))
    tmp.replace(home() / "ray.json")
    log.info("local Ray at %s (pid %d), stops after %.0f s idle", s["address"], me.pid, idle_s)
    last_used = time.monotonic()
    while not stopping:
        time.sleep(POLL_S)
        if clients() or _serving():
            last_used = time.monotonic()
        elif time.monotonic() - last_used > idle_s:
            log.info("local Ray idle: stopping")
            break
    with contextlib.suppress(OSError):
        if json.loads((home() / "ray.json").read_text()).get("pid") == me.pid:
            (home() / "ray.json").unlink()
    ray.shutdown()
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()
    log.info("local Ray stopped")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cellforge-local-ray", description="own the local cellforge Ray")
    p.add_argument("--cpus", type=int, required=True)
    args = p.parse_args(argv)
    _own(args.cpus, float(os.environ.get("CELLFORGE_RAY_IDLE_S", IDLE_S)))

