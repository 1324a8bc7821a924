"""``deploy``: a bundle in, an autoscaling HTTP endpoint out — on the embedded Ray or a cluster.

    >>> import cellforge as cf
    >>> ep = cf.deploy("runs/quickstart/bundle", name="digits",
    ...                autoscaling={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    ...                batching={"max_batch_size": 64, "batch_wait_timeout_s": 0.005})   # doctest: +SKIP
    >>> cf.Client(ep.base_url).predict("digits", images[:2].tolist())                     # doctest: +SKIP
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
from cellforge.serving.config import INDEX_APP, DeployConfig, resolve_bundle, version_of

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
           address: str | None = None, **config: Any) -> Endpoint:
    """Serve ``bundle`` at ``/v1/models/<name>``; deploying again under a name replaces that model
    with a rolling update that lets requests in flight finish.

    Args:
        bundle: a bundle directory (from ``cf.fit`` or a job), or a registry reference
            (``models:/digits@production``, ``models:/digits/3``: see ``cellforge.registry``).
        name: the model's name in URLs.
        host, port: where Serve's HTTP proxy listens, if this call starts Serve (127.0.0.1 by default;
            a Serve already running keeps its own).
        address: a Ray cluster; default ``$RAY_ADDRESS`` or an embedded local Ray.
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
    from ray import serve

    from cellforge.serving.app import build_app, build_index

    # the verify key in force here goes to the replicas too (they do not see this process's environment)
    config.setdefault("verify_key", signing.verify_key())
    tracking = config.pop("tracking", None)  # where the registry is: default as for fit
    if registry.parse_ref(bundle):  # models:/NAME@ALIAS: that version's bundle, downloaded and verified
        got = registry.fetch(str(bundle), tracking_uri=tracking)
        bundle = got["path"]
        config.setdefault("version", got["version"])
        config.setdefault("source", got["source"])
    cfg = DeployConfig.parse({**config, "bundle": str(resolve_bundle(bundle)), "name": name})
    spec = _bundle.read(cfg.bundle, cfg.verify_key)[0]  # refuse a bad bundle here, not in a replica that restarts forever
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
    if INDEX_APP not in serve.status().applications:
        serve.run(build_index(), name=INDEX_APP, route_prefix="/")
    serve.run(build_app(cfg.model_dump()), name=cfg.name, route_prefix=f"/v1/models/{cfg.name}")
    return Endpoint(cfg.name, version_of(cfg), base_url())


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
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        for sig, handler in previous.items():  # None: a handler not set from Python; the default then
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def undeploy(name: str) -> None:
    """Remove one model's application (the index and other models keep serving)."""
    from ray import serve

    serve.delete(name)


def base_url() -> str:
    """The URL of the running Serve's HTTP proxy (0.0.0.0 is reached through 127.0.0.1)."""
    host, port = _ray.serve_http_address()
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{port}"
