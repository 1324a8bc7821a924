"""Serving: bundles as autoscaling Ray Serve HTTP endpoints with batching and streaming sessions.

    >>> import cellforge as cf
    >>> ep = cf.deploy("runs/quickstart/bundle", name="digits")        # doctest: +SKIP
    >>> cf.Client(ep.base_url).predict("digits", images[:2].tolist())   # doctest: +SKIP

HTTP API (OpenAPI at ``/docs``): ``GET /healthz``, ``GET /v1/models``, and per model
``GET /v1/models/{name}``, ``POST .../predict``, ``POST .../sessions``,
``POST .../sessions/{id}/step``, ``DELETE .../sessions/{id}``, ``GET .../metrics``.
"""

from cellforge.serving.config import DeployConfig
from cellforge.serving.deploy import Endpoint, deploy, undeploy

__all__ = ["DeployConfig", "Endpoint", "deploy", "undeploy"]
