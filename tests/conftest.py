"""Shared fixtures: one Ray per test session, bound to 127.0.0.1, always shut down."""

from __future__ import annotations

import os

import pytest

# more logical CPUs than this machine's 2 cores, so a Tune trial plus its Train workers,
# or several Serve replicas, never wait on each other for a CPU slot
RAY_CPUS = 8


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    import ray

    from cellforge.runtime import ensure_ray

    os.environ.setdefault("CELLFORGE_NUM_CPUS", str(RAY_CPUS))
    os.environ["CELLFORGE_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A fresh storage directory for one test's runs."""
    monkeypatch.setenv("CELLFORGE_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def pytest_collection_modifyitems(items):
    """Mark each test by its folder: tests/unit -> unit, tests/integration -> integration."""
    for item in items:
        path = str(item.fspath)
        item.add_marker(pytest.mark.integration if "/integration/" in path else pytest.mark.unit)
