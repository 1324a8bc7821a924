"""``deploy``: a bundle in, an autoscaling HTTP endpoint out — on the embedded Ray or a cluster.

    >>> import cellforge as cf
    >>> ep = cf.deploy("runs/quickstart/bundle", name="digits",
    ...                autoscaling={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    ...                batching={"max_batch_size": 64, "batch_wait_timeout_s": 0.005})   # doctest: +SKIP
    >>> cf.Client(ep.base_url).predict("digits", images[:2].tolist())                     # doctest: +SKIP

A new version can first take a share of the traffic (a canary, ``serving.traffic``), then be promoted
or rolled back:

    >>> cf.deploy("runs/v2/bundle", name="digits", canary=10, max_error_rate=0.05)      # doctest: +SKIP
    >>> cf.Client(ep.base_url).metrics("digits")["versions"]                           # doctest: +SKIP
    >>> promote("digits")                                   # or rollback("digits")     # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellforge import _ray, registry, signing
from cellforge import bundle as _bundle
from cellforge.client import Client
from cellforge.errors import SpecError
from cellforge.log import log
from cellforge.runtime import ensure_ray
from cellforge.serving.config import INDEX_APP, DeployConfig, canary_app, resolve_bundle, version_of
from cellforge.serving.traffic import CanaryConfig

DEFAULT_PORT = 8000  # Ray Serve's own default


@dataclass
class Endpoint:
    """Where a deployed model answers: ``url`` is the model's own prefix, ``base_url`` the server's."""

    name: str
    version: str
    base_url: str

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/models/{self.name}"

    def client(self, api_key: str | None = None) -> Client:
        return Client(self.base_url, api_key=api_key)


def deploy(bundle: str | Path, name: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
           address: str | None = None, canary: float | None = None, max_error_rate: float | None = None,
           min_requests: int | None = None, **config: Any) -> Endpoint:
    """Serve ``bundle`` at ``/v1/models/<name>``; deploying again under a name replaces that model
    with a rolling update that lets requests in flight finish.

    Args:
        bundle: a bundle directory (from ``cf.fit`` or a job), or a registry reference
            (``models:/digits@production``, ``models:/digits/3``: see ``cellforge.registry``).
        name: the model's name in URLs.
        host, port: where Serve's HTTP proxy listens, if this call starts Serve (127.0.0.1 by default;
            a Serve already running keeps its own).
        address: a Ray cluster; default ``$RAY_ADDRESS`` or an embedded local Ray.
        canary: deploy ``bundle`` as a canary of the model ``name`` already serves, taking this percent
            of its new predictions and new sessions (``serving.traffic``); then ``promote`` or ``rollback``.
        max_error_rate, min_requests: roll the canary back by itself once more than this share of what
            it was sent failed, over at least ``min_requests`` (default 20).
        **config: any ``DeployConfig`` field: ``autoscaling``, ``num_replicas``, ``batching``,
            ``num_cpus``, ``num_gpus``, ``runtime``, ``max_length``, ``max_inputs``,
            ``max_body_bytes``, ``session_ttl_s``, ``api_key``, ``version``, ``tracking`` (the registry's
            MLflow URI, for a ``models:/`` reference), ``verify_key`` (a public key
            PEM: refuse a bundle that is not signed by its owner; default ``$CELLFORGE_VERIFY_KEY``).

    Returns:
        An ``Endpoint`` (name, version, url, base_url).

    Raises:
        SpecError: an invalid config (every problem named). BundleError: a bundle that does not verify.
    """
    # Serve and the app module (which imports it) load here: importing Ray Serve takes seconds
    import ray
    from ray import serve

    from cellforge.serving.app import build_app
    from cellforge.serving.sessions import get_store

    knobs = {"canary": canary, "max_error_rate": max_error_rate, "min_requests": min_requests}
    if canary is None and (max_error_rate is not None or min_requests is not None):
        raise SpecError([("canary", "max_error_rate and min_requests are a canary's: give canary (a percent) too")],
                        what="deploy config")
    canary_cfg = CanaryConfig.parse({k: v for k, v in knobs.items() if v is not None}) if canary is not None else None
    # the verify key in force here goes to the replicas too (they do not see this process's environment)
    config.setdefault("verify_key", signing.verify_key())
    tracking = config.pop("tracking", None)  # where the registry is: default as for fit
    if registry.parse_ref(bundle):  # models:/NAME@ALIAS: that version's bundle, downloaded and verified
        got = registry.fetch(str(bundle), tracking_uri=tracking)
        bundle = got["path"]
        config.setdefault("version", got["version"])
        config.setdefault("source", got["source"])
    cfg = DeployConfig.parse({**config, "bundle": str(resolve_bundle(bundle)), "name": name})
    spec, _, state, _ = _bundle.read(cfg.bundle, cfg.verify_key)  # refuse a bad bundle here, not in a replica that restarts forever
    if spec.task == "seq2seq" and cfg.runtime == "onnx":
        raise SpecError([("runtime", "a seq2seq model is served by runtime 'numpy' or 'torch', got 'onnx'")],
                        what="deploy config")
    ensure_ray(address)
    if not _ray.serve_running():
        serve.start(http_options={"host": host, "port": port})
    elif (running := _ray.serve_http_address()) != (host, port):
        # serve.start would only warn that its HTTP options are ignored (Ray's WARNING line in a notebook
        # that deploys a second model, or in 03 when another kernel started Serve): say where it serves
        log.info("Serve already runs on this Ray, at %s:%d: the model is served there", *running)
    _ensure_index()
    if canary_cfg is not None:
        streams = not (spec.bidirectional or spec.task == "seq2seq" or state.get("input_type") == "audio")
        return _deploy_canary(cfg, canary_cfg, spec.task, streams)
    serve.run(build_app(cfg.model_dump()), name=cfg.name, route_prefix=f"/v1/models/{cfg.name}")
    ray.get(get_store().set_config.remote(cfg.name, cfg.model_dump()))  # what a promote starts from
    _ensure_index()  # again: a deletion sent just before this call may reach Serve only now
    url = base_url()
    wait_routed(url, {"/": INDEX_APP, f"/v1/models/{cfg.name}": cfg.name})
    return Endpoint(cfg.name, version_of(cfg), url)


def _ensure_index(timeout_s: float = 60.0) -> None:
    """Run the index application unless it runs. Deleted without waiting (a test module's end, an
    undeploy script), it shows as DELETING for a while: this waits until it is gone, then runs it
    (not over the deletion: whether Serve keeps the route of an app deployed while DELETING was not
    shown). Serve's controller may take such a deletion after a status read sent later (an async
    actor does not keep a caller's order: here a read said RUNNING, then the index went and its
    route with it), so ``deploy`` calls this before and after the model's own deploy."""
    from ray import serve

    from cellforge.serving.app import build_index

    deadline = time.monotonic() + timeout_s
    while (index := serve.status().applications.get(INDEX_APP)) is not None and index.status == "DELETING":
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve's index application {INDEX_APP!r} is still being deleted after "
                               f"{timeout_s:.0f} s")
        time.sleep(0.2)
    if index is None:
        serve.run(build_index(), name=INDEX_APP, route_prefix="/")


def wait_routed(url: str, routes: dict[str, str], timeout_s: float = 30.0) -> bool:
    """Wait until Serve's ingress at ``url`` routes each prefix in ``routes`` to its application (its
    ``/-/routes``: HAProxy's and the Python proxy's alike). ``serve.run`` returns once the application
    runs, but HAProxy learns its routes by a reload a moment later: a request sent at once could get
    HAProxy's 404 "Path ... not found" (CI saw ``GET /v1/models`` do so right after a deploy). Says
    so once, and returns False, if they are not routed within ``timeout_s``."""
    import httpx

    deadline, got = time.monotonic() + timeout_s, None
    while True:
        try:
            r = httpx.get(f"{url}/-/routes", timeout=5)
            got = r.json() if r.status_code == 200 else r.text
        except (httpx.HTTPError, ValueError) as e:
            got = repr(e)
        if isinstance(got, dict) and all(got.get(prefix) == app for prefix, app in routes.items()):
            return True
        if time.monotonic() > deadline:
            log.warning("Serve's ingress at %s does not route %s yet after %.0f s (its routes: %s)",
                        url, routes, timeout_s, got)
            return False
        time.sleep(0.1)


def _deploy_canary(cfg: DeployConfig, canary: CanaryConfig, task: str, streams: bool) -> Endpoint:
    """The canary's own Serve app (no HTTP route: the live replicas call it), then its record in the
    store, from which every live replica learns it within a flush."""
    import ray
    from ray import serve

    from cellforge.serving.app import model_app
    from cellforge.serving.sessions import get_store

    store, version = get_store(), version_of(cfg)
    live = ray.get(store.registered.remote()).get(cfg.name)
    if live is None or cfg.name not in serve.status().applications:
        raise SpecError([("canary", f"{cfg.name!r} has no live version to compare a canary with: deploy it "
                                    "first without canary")], what="deploy config")
    problems = []
    if version == live["version"]:
        problems.append(("bundle", f"version {version} is {cfg.name}'s live version already"))
    if live["task"] != task:
        problems.append(("bundle", f"the canary is a {task} model and {cfg.name}'s live version a {live['task']} one"))
    current = ray.get(store.canary.remote(cfg.name))
    if current is not None and current["state"] == "active":
        problems.append(("canary", f"{cfg.name} has a canary already (version {current['version']}): "
                                   f"promote it or roll it back first"))
    if problems:
        raise SpecError(problems, what="deploy config")
    app = canary_app(cfg.name)
    try:
        serve.run(model_app(cfg.model_dump(), role="canary"), name=app, route_prefix=None)
    except Exception:
        _ray.delete_app_nowait(app)  # a canary that cannot start leaves the live version as it was
        raise
    ray.get(store.set_canary.remote(cfg.name, {"version": version, "app": app, "config": cfg.model_dump(),
                                               "sessions": streams and live["sessions"], **canary.model_dump()}))
    # return once every live replica has read the record (each does every 0.25 s): the canary takes traffic
    running = serve.status().applications[cfg.name].deployments["Model"].replica_states.get("RUNNING", 1)
    end = time.monotonic() + 10
    while len(ray.get(store.canary.remote(cfg.name))["seen"]) < running and time.monotonic() < end:
        time.sleep(0.05)
    log.info("%s: canary version %s takes %g%% of new predictions and sessions (live: %s)%s", cfg.name, version,
             canary.canary, live["version"], f"; rolled back by itself above a {canary.max_error_rate:.1%} error "
             f"rate over {canary.min_requests} requests" if canary.max_error_rate is not None else "")
    return Endpoint(cfg.name, version, base_url())


def promote(name: str, address: str | None = None) -> Endpoint:
    """Make the canary of ``name`` its live version: the canary's bundle with the live deployment's
    settings (replicas, batching, runtime, session store), a rolling update that lets requests in flight
    finish. Sessions started on the version it replaces finish on it: each new replica keeps it loaded
    for them (until the next deploy of ``name``). Then the canary's app is deleted."""
    import ray
    from ray import serve

    from cellforge.serving.app import model_app
    from cellforge.serving.sessions import get_store

    ensure_ray(address)
    store = get_store()
    c, live = ray.get([store.canary.remote(name), store.config.remote(name)])
    if c is None or c["state"] != "active":
        why = f" (its canary {c['version']} was rolled back: {c['reason']})" if c else ""
        raise SpecError([("name", f"{name!r} has no canary to promote{why}")], what="promote")
    if live is None:
        raise SpecError([("name", f"{name!r}'s live deploy config is not on record (the state actor restarted?): "
                                  f"deploy the canary's bundle {c['config']['bundle']} as the live version")],
                        what="promote")
    new = {**live, **{k: c["config"][k] for k in ("bundle", "version", "source")}}
    retired = {"bundle": live["bundle"], "version": version_of(DeployConfig.parse(live)), "source": live.get("source")}
    serve.run(model_app(new, retired=retired), name=name, route_prefix=f"/v1/models/{name}")
    ray.get([store.set_config.remote(name, new), store.end_canary.remote(name, c["version"])])
    _ray.delete_app_nowait(c["app"])  # the live replicas serve its version now
    log.info("%s: version %s promoted (it was the canary); sessions started on %s finish on it", name,
             c["version"], retired["version"])
    return Endpoint(name, c["version"], base_url())


def rollback(name: str, address: str | None = None) -> dict[str, Any]:
    """Send no more traffic to the canary of ``name`` and delete its app; the live version answers
    everything. Sessions started on the canary that had not stepped move to the live version; those
    that had end (409: start a new session). Returns the canary's record (``version``, ``reason``)."""
    import ray
    from ray import serve

    from cellforge.serving.app import FLUSH_EVERY_S
    from cellforge.serving.sessions import get_store

    ensure_ray(address)
    store, app = get_store(), canary_app(name)
    c = ray.get(store.canary.remote(name))
    if c is None and app not in serve.status().applications:
        raise SpecError([("name", f"{name!r} has no canary to roll back")], what="rollback")
    if c is not None:
        ray.get(store.roll_back.remote(name, c["version"], "rolled back by command"))
        time.sleep(3 * FLUSH_EVERY_S)  # every live replica has stopped sending it traffic
        ray.get(store.claim_removal.remote(name, c["version"]))
        c = ray.get(store.canary.remote(name))
    if app in serve.status().applications:
        _ray.delete_app_nowait(app)
    log.info("%s: canary %s rolled back (%s); the live version answers everything", name,
             c["version"] if c else "", c["reason"] if c else "no record")
    return c or {"version": None, "reason": None}


def hold(block: bool | None, address: str | None, message: str) -> None:
    """Keep this process (and so an embedded Ray's endpoint) alive until Ctrl-C or SIGTERM (what a
    container runtime or a scheduler sends); either returns, and the program then shuts Ray down.
    ``block=None`` blocks only on the embedded Ray: on a cluster the endpoint outlives the process."""
    if block is None:
        block = not (address or os.environ.get("RAY_ADDRESS"))
    if not block:
        return
    # Ray's driver handles SIGTERM as a fatal signal (a stack trace, exit 15); here it means "stop".
    # SIGINT too is set here: a process started with SIGINT ignored (from a background job, or by a
    # parent that ignores it - Python then installs no Ctrl-C handler) would otherwise never stop on it
    main = threading.current_thread() is threading.main_thread()
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, _interrupt) for sig in stops} if main else {}
    try:
        log.info(message)  # in the try: a signal may come as soon as the line is out
        while True:  # short sleeps: a signal the kernel hands to one of Ray's threads runs its Python
            time.sleep(0.5)  # handler only when this thread next runs (CI: SIGTERM unanswered for 180 s)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        for sig, handler in previous.items():  # None: a handler not set from Python; the default then
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def undeploy(name: str) -> None:
    """Remove one model's application and its canary's (the index and other models keep serving)."""
    import ray
    from ray import serve

    from cellforge.serving.sessions import get_store

    store = get_store()
    if (c := ray.get(store.canary.remote(name))) is not None:  # a model deployed again starts without it
        ray.get(store.end_canary.remote(name, c["version"]))
    if canary_app(name) in serve.status().applications:
        _ray.delete_app_nowait(canary_app(name))
    serve.delete(name)


def base_url() -> str:
    """The URL of the running Serve's HTTP proxy (0.0.0.0 is reached through 127.0.0.1)."""
    host, port = _ray.serve_http_address()
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{port}"
