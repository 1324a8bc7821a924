"""What a deployment is: one validated config, the same from a notebook, the CLI, a job or a Serve
YAML — and the bundle's identity (where its path resolves, the version it answers with).

    >>> cfg = DeployConfig(bundle="runs/quickstart/bundle", name="digits",
    ...                    autoscaling={"min_replicas": 1, "max_replicas": 4})
    >>> cfg.batching.max_batch_size
    64
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cellforge import _ray
from cellforge import bundle as _bundle
from cellforge.errors import Problems, Strict

INDEX_APP = "cellforge"  # the Serve application that answers /healthz, /v1/models and unknown names
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
STORE = re.compile(r"memory|rediss?://[^/\s]+(/\d{1,2})?")
# a Redis Cluster: [user:password@] then host:port seeds, comma-separated ([v6]:port too); only db 0 exists
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):\d{1,5}"
CLUSTER_STORE = re.compile(rf"rediss?\+cluster://([^/@\s]+@)?{_HOST}(,{_HOST})*(/0)?")
AFFINITY_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"


class _Strict(Strict):
    what = "deploy config"


class Autoscaling(_Strict):
    """A subset of Serve's ``autoscaling_config``; the delays are short so a small machine reacts."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, gt=0)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(8, gt=0)  # in-flight requests per replica the autoscaler aims for
    upscale_delay_s: float = Field(3.0, ge=0)  # Serve's default is 30 s
    downscale_delay_s: float = Field(60.0, ge=0)  # Serve's default is 600 s
    look_back_period_s: float = Field(3.0, gt=0)  # Serve's default is 30 s
    metrics_interval_s: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _order(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        return self


class Batching(_Strict):
    """Dynamic batching with ``@serve.batch``: requests that arrive together run as one forward pass."""

    enabled: bool = True
    max_batch_size: int = Field(64, gt=0)  # requests per batch (each may carry several sequences)
    batch_wait_timeout_s: float = Field(0.005, ge=0)  # how long a lone request waits for company


class DeployConfig(_Strict):
    """One model endpoint: the bundle, its name, and how it scales, batches and guards itself."""

    bundle: str
    name: str
    version: str | None = None  # default: the first 12 hex digits of the bundle manifest's sha256
    num_replicas: int | None = Field(None, gt=0)  # fixed replicas; give this or autoscaling, not both
    autoscaling: Autoscaling | None = None
    batching: Batching = Field(default_factory=Batching)
    num_cpus: float = Field(0.5, gt=0)  # per replica; fractions let several replicas share a small machine
    num_gpus: float = Field(0, ge=0)  # > 0 runs the network with torch on CUDA
    # numpy is fast for small recurrent nets on a CPU; onnx (ONNX Runtime) runs the exported graph, and a
    # compressed bundle's int8 graph (see benchmarks/runtimes.py)
    runtime: Literal["numpy", "torch", "onnx"] = "numpy"
    max_length: int = Field(1000, gt=0)  # longest sequence accepted (steps or tokens); longer -> 422
    max_inputs: int = Field(1024, gt=0)  # sequences per request
    max_body_bytes: int = Field(1 << 20, gt=0)  # larger request bodies -> 413
    session_ttl_s: float = Field(600, gt=0)  # idle sessions expire after this long
    # where sessions live: "memory" (the store actor's: in its own redis-server on a Unix socket where it can
    # run one, serving.local_redis, else in the actor; lost with it), redis://host:port/db (Redis or Valkey) or
    # redis+cluster://host:port[,host:port...] (a Redis Cluster; serving.redis_store)
    session_store: str = "memory"
    # each session's requests go to one replica (consistent hashing: HAProxy's on the session id in the
    # path behind the default ingress, Ray's request router on header x-session-id behind Serve's proxy);
    # that replica keeps the session's state as a write-through cache (up to 256 MiB of states) and reads
    # the store only when the session moved. On by default: a step then makes one store call, not two
    affinity: bool = True
    # Serve's access log, a line per request in the replica's log file and stderr: off by default (the
    # requests' counts and latencies are in the Prometheus metrics, serving.metrics); each line is
    # formatted and written by the replica and forwarded by Ray's log monitor
    access_log: bool = False
    api_key: str | None = Field(None, min_length=8)  # when set, requests need 'Authorization: Bearer <key>'
    max_ongoing_requests: int | None = Field(None, gt=0)  # per replica; default 2 x max_batch_size
    # a public key PEM: serve only a bundle signed by its owner (default $CELLFORGE_VERIFY_KEY where deploy runs)
    verify_key: str | None = None
    source: str | None = None  # the registry version deployed (models:/NAME/VERSION), when deployed from one

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v) or v == INDEX_APP:
            raise ValueError(f"use 1-63 letters, digits, '.', '_' or '-' (not {INDEX_APP!r}), got {v!r}")
        return v

    @field_validator("session_store")
    @classmethod
    def _store(cls, v: str) -> str:
        if not STORE.fullmatch(v) and not CLUSTER_STORE.fullmatch(v):
            raise ValueError(f"use 'memory', redis://host:port/db (one Redis) or redis+cluster://host:port"
                             f"[,host:port...] (a Redis Cluster: host:port of any of its nodes, only db 0), "
                             f"rediss:// or rediss+cluster:// for TLS; got {v!r}")
        return v

    @model_validator(mode="after")
    def _scaling(self):
        problems = []
        if self.num_replicas is not None and self.autoscaling is not None:
            problems.append(("num_replicas", "give either num_replicas or autoscaling, not both"))
        if self.num_gpus and self.runtime != "torch":
            problems.append(("runtime", "GPU replicas (num_gpus > 0) need runtime 'torch'"))
        if problems:
            raise Problems(problems)
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests or 2 * self.batching.max_batch_size,
            # replacing a bundle drains old replicas; requests in flight get this long to finish
            "graceful_shutdown_timeout_s": 30,
            "logging_config": {"enable_access_log": self.access_log},
        }
        # behind HAProxy (the default ingress) its own balancing keeps a session on one replica
        # (_ray.haproxy_session_affinity), and Ray refuses a request router on the ingress deployment
        if self.affinity and not _ray.serve_behind_haproxy():
            from ray.serve.config import RequestRouterConfig

            opts["request_router_config"] = RequestRouterConfig(request_router_class=AFFINITY_ROUTER)
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.model_dump(exclude_none=True)
        else:
            opts["num_replicas"] = self.num_replicas or 1
        return opts


def canary_app(name: str) -> str:
    """The Serve application of a model's canary ('@' is not in a model name: no model's app can clash)."""
    return f"{name}@canary"


def resolve_bundle(bundle: str | Path) -> Path:
    """A bundle path as given, else relative to ``$CELLFORGE_HOME`` (where relative Serve-YAML paths
    are meant to start: the directory ``serve run`` was started in, which Ray workers may not share)."""
    p = Path(bundle).expanduser()
    if not p.is_absolute() and not p.exists() and os.environ.get("CELLFORGE_HOME"):
        p = Path(os.environ["CELLFORGE_HOME"]) / p
    return p.resolve()


def version_of(cfg: DeployConfig) -> str:
    """The version a deployment answers with: ``cfg.version``, or the first 12 hex digits of the
    bundle manifest's sha256 (so redeploying the same bundle is the same version)."""
    return cfg.version or _bundle.digest(cfg.bundle)[:12]
