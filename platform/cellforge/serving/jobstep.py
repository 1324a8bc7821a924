"""The ``deploy`` step of job files: every ``DeployConfig`` field, plus where Serve listens.

    - deploy:
        bundle: ${search.bundle}        # or a bundle directory, relative to the job file
        name: digits
        autoscaling: {min_replicas: 1, max_replicas: 2, target_ongoing_requests: 8}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from cellforge.serving.config import DeployConfig


class DeployStep(DeployConfig):
    outputs: ClassVar[tuple[str, ...]] = ("name", "url", "version")
    id: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # keep serving until Ctrl-C once the job's last step is done; default: when on an embedded Ray,
    # which would end with the job
    block: bool | None = None


def run_deploy(step: DeployStep, base: Path, address: str | None) -> dict[str, Any]:
    from cellforge.serving.deploy import deploy

    fields = step.model_dump(exclude={"id", "host", "port", "block", "bundle", "name"}, exclude_unset=True)
    ep = deploy(base / step.bundle, step.name, host=step.host, port=step.port, address=address, **fields)
    print(f"[cellforge] {ep.name} version {ep.version} serving at {ep.url}", flush=True)
    return {"name": ep.name, "url": ep.url, "version": ep.version}
