"""Serving: bundles as autoscaling Ray Serve HTTP endpoints with batching and streaming sessions.

    >>> import cellforge as cf
    >>> ep = cf.deploy("runs/quickstart/bundle", name="digits")        # doctest: +SKIP
    >>> cf.Client(ep.base_url).predict("digits", images[:2].tolist())   # doctest: +SKIP

HTTP API (OpenAPI at ``/docs``): ``GET /healthz``, ``GET /v1/models``, and per model
``GET /v1/models/{name}``, ``POST .../predict``, ``POST .../sessions``,
``POST .../sessions/{id}/step``, ``DELETE .../sessions/{id}``, ``GET .../metrics``.

A new version can take a share of the traffic first: ``deploy(..., canary=10)``, then ``promote(name)``
or ``rollback(name)`` (``serving.traffic``).
"""

from cellforge.serving.config import DeployConfig
from cellforge.serving.deploy import Endpoint, deploy, promote, rollback, undeploy

__all__ = ["DeployConfig", "Endpoint", "deploy", "promote", "rollback", "undeploy"]
