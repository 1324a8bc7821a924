"""Every private Ray API cellforge uses, in one place, each with the Ray version it was checked against.

When Ray moves one of these, this module is the only one to change; each function says what the
public alternative lacks. Ray is imported inside each function: ``import cellforge`` stays fast.
"""

from __future__ import annotations

import logging

CHECKED_AGAINST = "2.60.0"


def loopback_only() -> None:
    """Keep an embedded Ray's node on 127.0.0.1 (checked against Ray 2.60.0).

    Ray resolves ``_node_ip_address="127.0.0.1"`` to the machine's reachable IP unless cluster mode
    is off, as on macOS; ``ray.init`` has no public switch for it. The environment variable covers
    the processes Ray starts, the constant this one (read at import, so it is set directly)."""
    import os

    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def quiet_train_reports() -> None:
    """Silence Ray Train V2's "Reporting training result ..." line per ``report()`` (checked against Ray
    2.60.0): its logger is named by the file path of a private module, and cellforge's epoch line
    already says it all. In local mode (a run in the driver's process) the line is "Reported metrics:
    ...", from another private module, and making the ``ScalingConfig`` says "Running in local mode"."""
    from ray.train.v2._internal.execution import context, train_fn_utils

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    logging.getLogger(train_fn_utils.__name__).setLevel(logging.WARNING)
    logging.getLogger("ray.train.v2.api.config").setLevel(logging.WARNING)


def controller_callback_class() -> type:
    """Ray Train V2's ``ControllerCallback`` (checked against Ray 2.60.0): the only hook that runs in a
    Train run's controller at start, where a sweep trial learns the handle it aborts the run with."""
    from ray.train.v2._internal.execution.callback import ControllerCallback

    return ControllerCallback


def serve_http_address() -> tuple[str, int]:
    """(host, port) of the running Serve's HTTP proxy (checked against Ray 2.60.0); ``serve.status()``
    does not report them."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    return http.host, http.port


def delete_app_nowait(name: str) -> None:
    """Delete a Serve application without waiting for its replicas to go (checked against Ray 2.60.0):
    ``serve.delete`` waits, and a replica always takes its full graceful-shutdown timeout (30 s here),
    idle or not; its requests in flight still finish. ``_blocking`` is the only switch."""
    from ray import serve

    serve.delete(name, _blocking=False)


def serve_running() -> bool:
    """Whether a Serve controller runs on the connected Ray (checked against Ray 2.60.0): another
    kernel's, job's or ``cellforge serve``'s."""
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False) is not None


def serve_behind_haproxy() -> bool:
    """Whether HAProxy is Serve's ingress (checked against Ray 2.60.0): this process has Ray's switch
    (a Serve YAML built in the controller, a job on a node started with it), or the connected Serve's
    proxy actors are HAProxy's. The environment that started Ray decides; a driver does not see it."""
    import ray
    from ray.serve._private import constants

    if constants.RAY_SERVE_ENABLE_HA_PROXY:
        return True
    if not ray.is_initialized():
        return False
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == constants.SERVE_NAMESPACE and actor["name"].startswith(constants.SERVE_PROXY_NAME):
            handle = ray.get_actor(actor["name"], namespace=constants.SERVE_NAMESPACE)
            if handle._ray_actor_creation_function_descriptor.class_name == "HAProxyManager":
                return True
    return False


def quiet_token_auth_notice() -> None:
    """Drop the "Token authentication is enabled for this Ray cluster" warning every new local Ray logs
    (checked against Ray 2.60.0); token authentication itself stays on. ``RAY_AUTH_MODE=token`` would
    also silence it, but Ray reads that variable once, when ``ray`` is imported, and cellforge cannot
    be sure to set it first; the notice comes from a private module's logger."""
    from ray._private.authentication import authentication_token_setup

    logging.getLogger(authentication_token_setup.__name__).setLevel(logging.ERROR)


def filter_worker_output(keep, plain=None) -> None:
    """Print only the lines of the workers' stdout/stderr that ``keep(batch)`` returns (a batch: Ray's
    dict of one worker's ``pid`` and ``lines``) on this driver, and those that ``plain(line)`` accepts
    without Ray's ``(RayTrainWorker pid=...)`` prefix (checked
    against Ray 2.60.0). ``ray.init(log_to_driver=...)`` is all or nothing, and cellforge's epoch lines
    and a worker's traceback come that way; Ray registers its printer (a ``functools.partial`` of
    ``print_to_stdstream`` with ``ignore_prefix``) as the ``ray_print_logs`` handler of a private
    dispatcher at every ``ray.init``, so call this after it. Every line stays in the worker's log file
    in Ray's log directory."""
    import functools

    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    for name, handler in list(dispatcher.handlers):
        if name != "ray_print_logs" or getattr(handler, "keeps", None) is keep:
            continue
        bare = functools.partial(handler.func, ignore_prefix=True) if isinstance(handler, functools.partial) else handler

        def filtered(data, show=handler, bare=bare):
            lines = keep(data)
            as_is = [line for line in lines if plain is not None and plain(line)]
            rest = [line for line in lines if line not in as_is]
            if as_is:
                bare({**data, "lines": as_is})
            if rest:
                show({**data, "lines": rest})

        filtered.keeps = keep
        dispatcher.remove_handler(name)
        dispatcher.add_handler(name, filtered)


def haproxy_admin_listeners(config: str, host: str | None) -> str:
    """Ray Serve's HAProxy config with its stats page and Prometheus endpoint removed, or bound to
    ``host`` (checked against Ray 2.60.0's ``serve/_private/haproxy_templates.py``).

    Ray renders both as sections of their own, ``frontend prometheus`` (``bind :9101``) and ``listen
    stats`` (``bind *:8404``), on every interface, and no setting changes their host:
    ``RAY_SERVE_HAPROXY_METRICS_ENABLED=0`` stops the per-request metrics but keeps the bind. Ray itself
    reads neither (its metrics come through a Unix socket, its stats through the admin socket), so they
    go; other sections are left as they are. Self-contained: ``haproxy_launcher`` copies its source.

    >>> cfg = "frontend prometheus\\n    bind :9101\\nfrontend http_frontend\\n    bind 127.0.0.1:8000\\n"
    >>> print(haproxy_admin_listeners(cfg + "listen stats\\n  bind *:8404\\n  stats enable\\n", None), end="")
    frontend http_frontend
        bind 127.0.0.1:8000
    >>> print(haproxy_admin_listeners(cfg, "127.0.0.1").splitlines()[1])
        bind 127.0.0.1:9101
    """
    out, drop, rebind = [], False, False
    for line in config.splitlines(keepends=True):
        if line.strip() and not line[0].isspace() and not line.startswith("#"):  # a section starts
            admin = " ".join(line.split()[:2]) in ("frontend prometheus", "listen stats")
            drop, rebind = admin and host is None, admin and host is not None
        if drop:
            continue
        if rebind and line.split()[:1] == ["bind"]:
            indent = line[:len(line) - len(line.lstrip())]
            line = f"{indent}bind {host}:{line.split()[1].rsplit(':', 1)[1]}\n"
        out.append(line)
    return "".join(out)


def haproxy_session_affinity(config: str) -> str:
    """Ray Serve's HAProxy config with each session's requests hashed to one replica (checked against Ray
    2.60.0's ``serve/_private/haproxy_templates.py``): a model's write-through session cache (``affinity``)
    then serves its steps behind HAProxy, which bypasses Serve's request routers (Ray 2.60 refuses a custom
    one on an ingress deployment there and says "configure HAProxy's load-balancing algorithm instead").

    The HTTP frontend keeps the session id of ``/v1/models/<name>/sessions/<id>[/...]`` in a variable;
    every backend balances by its consistent hash (``hash-type consistent``: a replica added or lost moves
    only its share of the sessions). A request without one (a prediction, a new session) is balanced round
    robin, HAProxy's rule for a hash with no data. A balance algorithm the user chose
    (``RAY_SERVE_HAPROXY_BALANCE_ALGORITHM``, in the environment HAProxy starts in) is kept. Self-contained:
    ``haproxy_launcher`` copies its source.

    >>> cfg = "defaults\\n    balance leastconn\\nfrontend http_frontend\\n    bind 127.0.0.1:8000\\n    use_backend m if is_m\\n"
    >>> print(haproxy_session_affinity(cfg), end="")
    defaults
        balance hash var(txn.cf_session)
        hash-type consistent
    frontend http_frontend
        bind 127.0.0.1:8000
        http-request set-var(txn.cf_session) path,field(6,/) if { path_reg ^/v1/models/[^/]+/sessions/[^/]+(/|$) }
        use_backend m if is_m
    """
    import os

    if os.environ.get("RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"):
        return config
    out, section, done = [], "", set()
    for line in config.splitlines(keepends=True):
        if line.strip() and not line[0].isspace() and not line.startswith("#"):  # a section starts
            section = " ".join(line.split()[:2])
        words = line.split()
        indent = line[:len(line) - len(line.lstrip())]
        if section == "defaults" and words[:1] == ["balance"] and "balance" not in done:
            out += [f"{indent}balance hash var(txn.cf_session)\n", f"{indent}hash-type consistent\n"]
            done.add("balance")
            continue
        out.append(line)
        if section == "frontend http_frontend" and words[:1] == ["bind"] and "frontend" not in done:
            out.append(f"{indent}http-request set-var(txn.cf_session) path,field(6,/) "
                       "if { path_reg ^/v1/models/[^/]+/sessions/[^/]+(/|$) }\n")
            done.add("frontend")
    return "".join(out) if done == {"balance", "frontend"} else config  # both, or the config as it was


_LAUNCHER = '''#!{python}
"""HAProxy for Ray Serve, written by cellforge (cellforge._ray.haproxy_launcher, checked against Ray
2.60.0): takes HAProxy's stats page and Prometheus endpoint off every interface in the config Ray just
wrote (off, or on $CELLFORGE_HAPROXY_STATS_HOST), hashes each session's requests to one replica, then
runs the real binary with Ray's arguments."""
import fcntl
import os
import sys

{rewrite}

args = sys.argv[1:]
if "-f" in args:
    path = args[args.index("-f") + 1]
    with open(path + ".lock", "a") as lock:  # Ray writes the config holding this lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(path) as f:
            config = f.read()
        fixed = haproxy_admin_listeners(config, os.environ.get("CELLFORGE_HAPROXY_STATS_HOST") or None)
        fixed = haproxy_session_affinity(fixed)
        if fixed != config:
            with open(path, "w") as f:
                f.write(fixed)
os.execv({real!r}, [{real!r}, *args])
'''


def haproxy_launcher(path: str, real: str) -> str:
    """Write at ``path`` (when it differs) the executable that Ray Serve runs as HAProxy through
    ``RAY_SERVE_HAPROXY_BINARY_PATH`` (checked against Ray 2.60.0); returns ``path``.

    Ray starts HAProxy as ``<binary> -db -f <config> [-dR] [-sf PIDS] [-x SOCKET]`` after writing
    ``<config>`` under ``<config>.lock``, and on every reload. The launcher fixes the config's admin
    listeners (``haproxy_admin_listeners``) and balancing (``haproxy_session_affinity``) under that lock,
    then execs ``real`` with the same arguments: the process keeps its pid and its ``-f <config>``
    argument, by which Ray finds its HAProxy processes in /proc. A template that changes those section
    names leaves the listeners in place, which tests/integration/test_ingress.py catches."""
    import inspect
    import os
    import sys
    import tempfile

    rewrites = "\n\n".join(inspect.getsource(f) for f in (haproxy_admin_listeners, haproxy_session_affinity))
    text = _LAUNCHER.format(python=sys.executable, real=real, rewrite=rewrites)
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)  # atomic: a HAProxy starting now runs the old launcher or the new one
    return path


def replica_grpc_on_loopback() -> None:
    """In this Serve replica, open Ray's inter-deployment gRPC server on 127.0.0.1 instead of every
    interface (checked against Ray 2.60.0).

    ``ray.serve._private.replica.Replica._on_initialized`` binds it as ``[::]:0`` with no setting for the
    host, after the deployment's ``__init__`` has run; so a deployment calls this from ``__init__`` on a
    node whose IP is 127.0.0.1 (the embedded Ray, where every caller is local) and the replica module's
    reference to ``add_port_to_grpc_server`` gets the loopback address. A cluster's replicas keep
    Ray's binding: other nodes' handles reach them through it."""
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "cellforge_loopback", False):
        return

    def on_loopback(server, address: str):
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return bind(server, address)

    on_loopback.cellforge_loopback = True
    replica.add_port_to_grpc_server = on_loopback


def lean_trainer(trainer) -> None:
    """Run this Ray Train V2 trainer without the helper processes a single fixed node never uses (checked
    against Ray 2.60.0). Measured on 2 cores (load ~8), a 1-worker fit spent 62 s outside its epochs:

    - ``DatasetsCallback`` starts a ``DatasetManager`` actor, a process of its own, before the train
      function may run (9 s on that run's critical path) even when the trainer has no Ray Datasets —
      cellforge's never has: its splits travel in the object store;
    - the scaling policy registers every run with an ``AutoscalingCoordinator`` actor (16 s to start on
      the first fit), whose requests time out on a busy machine ("Failed to send resource request ...
      safe to ignore", with a traceback), to ask an autoscaler that a local node does not have.

    ``fit()`` hands both, as ``callbacks`` and ``scaling_policy``, to the private
    ``_initialize_and_run_controller``; this wraps it on the instance and drops them. The placement-group
    cleaner stays: it frees a run's CPUs if its controller dies."""
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy

    class LocalFixed(FixedScalingPolicy):
        """The fixed policy without autoscaler requests."""

        def after_controller_start(self, train_run_context) -> None:
            pass

        def _maybe_send_resource_request(self) -> None:
            pass

        def _send_resource_request(self) -> None:
            pass

        def _cancel_resource_request(self) -> None:
            pass

    start = trainer._initialize_and_run_controller

    def lean(**kwargs):
        if not trainer.datasets:
            kwargs["callbacks"] = [c for c in kwargs["callbacks"] if not isinstance(c, DatasetsCallback)]
        if type(kwargs["scaling_policy"]) is FixedScalingPolicy:
            kwargs["scaling_policy"] = LocalFixed(scaling_config=trainer.scaling_config)
        return start(**kwargs)

    trainer._initialize_and_run_controller = lean


def token_auth_on() -> None:
    """Turn Ray's token authentication on in this process before it connects to the local cellforge Ray
    that another process started (checked against Ray 2.60.0). ``ray.init`` turns it on by itself only for
    a Ray it starts, or finds with ``address="auto"`` (which may find another user's Ray); with an explicit
    address it stays off and the connection is refused. Ray reads ``RAY_AUTH_MODE`` into its cached
    config when imported, so the config is read again (what Ray's own ``_enable_token_auth`` does)."""
    import os

    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")


def filter_error_messages(keep) -> None:
    """Print only the raylet's messages to this driver that ``keep(batch)`` returns lines of (checked
    against Ray 2.60.0): Ray's error-message listener prints them through the private module function
    ``print_to_stdstream`` directly, not through the dispatcher ``filter_worker_output`` wraps (the
    "(raylet) WARNING: 8 PYTHON worker processes have been started" of every sweep)."""
    from ray._private import worker

    original = worker.print_to_stdstream
    if getattr(original, "keeps", None) is keep:
        return

    def filtered(data, ignore_prefix, show=original):
        lines = keep(data)
        if lines:
            show({**data, "lines": lines}, ignore_prefix)

    filtered.keeps = keep
    worker.print_to_stdstream = filtered


def serve_replica_actors(app: str, deployment: str = "Model") -> set[str]:
    """Actor names (namespace "serve") of an application's running replicas, from the controller's
    details (checked against Ray 2.60.0): what a fault test kills."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()["applications"].get(app, {})
    reps = details.get("deployments", {}).get(deployment, {}).get("replicas", [])
    return {r["actor_name"] for r in reps if r["state"] == "RUNNING"}


def serve_controller():
    """The Serve controller's actor handle (checked against Ray 2.60.0): Ray restarts it when killed
    with ``no_restart=False``, and it recovers its applications from the GCS."""
    from ray.serve.context import _get_global_client

    return _get_global_client()._controller
