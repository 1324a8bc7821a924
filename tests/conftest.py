"""Shared fixtures: one Ray per test session, bound to 127.0.0.1, always shut down; two custom cells."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

# "the" local cellforge Ray is the one under $CELLFORGE_HOME (cellforge.local_ray): this test session's
# is its own, so it never joins the Ray of another session (another worktree's, a user's notebooks), and
# it is stopped when the session ends (pytest_unconfigure)
os.environ["CELLFORGE_HOME"] = tempfile.mkdtemp(prefix="cf-home-")

# more logical CPUs than this machine's 2 cores, so a Tune trial plus its Train workers,
# or several Serve replicas, never wait on each other for a CPU slot
RAY_CPUS = 8


# the digits LSTM of the training tests, also served by the serving tests
DIGITS = dict(task="classify", cell="lstm", hidden_size=64,
              training={"lr": 0.005, "batch_size": 64, "epochs": 15, "lr_schedule": "cosine", "seed": 0})


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


@pytest.fixture(scope="session")
def serve_session(ray_session):
    """Ray Serve for the whole session, on 127.0.0.1 at a free port (unless a notebook's kernel or an
    earlier test started it already); it ends with the session's Ray. Modules take ``serve_module``.
    Serve is not shut down and started again within a session: after a module's ``serve.shutdown()``
    (the old controller outlived its 30 s graceful shutdown and was killed), the next module's
    ``serve.start`` found the dying controller and every deploy failed with ActorDiedError."""
    import socket

    from ray import serve
    from ray.serve.context import _get_global_client

    if _get_global_client(raise_if_no_controller_running=False) is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    return serve


@pytest.fixture(scope="module")
def serve_module(serve_session):
    """The session's Serve for one test module: the applications the module added are deleted at its end,
    without waiting for their replicas to go (each waited its full graceful-shutdown timeout, 30 s, idle
    or not: test_serve's teardown took 188 s of the suite). Modules use app names of their own."""
    before = set(serve_session.status().applications)
    yield serve_session
    for app in set(serve_session.status().applications) - before:
        serve_session.delete(app, _blocking=False)


def pytest_unconfigure(config):
    """Stop this session's local Ray and whatever it started (a test may have started it without the
    ``ray_session`` fixture, e.g. through a CLI subprocess)."""
    from cellforge import local_ray

    local_ray.stop()
    shutil.rmtree(local_ray.home(), ignore_errors=True)


@pytest.fixture(scope="session")
def digits_runs(ray_session, tmp_path_factory):
    """``digits_runs(framework, workers)``: the digits LSTM at the same global batch, trained once per
    session for each framework and worker count asked for (a FitResult), shared by every test."""
    import cellforge as cf

    storage = tmp_path_factory.mktemp("digits")
    done, walls = {}, {}

    def get(framework: str, workers: int):
        if (framework, workers) not in done:
            # the spec and data made before the clock starts: the wall time is the fit call's alone (a
            # session's first load of digits imports scikit-learn, ~1 s that no phase of the fit holds)
            spec, data = cf.ModelSpec(framework=framework, **DIGITS), cf.datasets.load("digits")
            start = time.perf_counter()
            done[framework, workers] = cf.fit(spec, data, workers=workers, name=f"digits-{framework}-{workers}w",
                                              storage_path=storage)
            walls[framework, workers] = time.perf_counter() - start
        return done[framework, workers]

    get.walls = walls  # each fit's wall time, seen from the caller
    return get


def elman_step(op, p, x, state):
    """h = tanh(W_xh x + W_hh h + b_h)."""
    (h,) = state
    h = op.tanh(op.linear(x, p["w_ih"], p["b_ih"]) + op.linear(h, p["w_hh"]))
    return h, (h,)


def mgu_step(op, p, x, state):
    """Minimal gated unit (Zhou et al. 2016): one forget gate f; h = (1-f) h + f tanh(W x + U (f h))."""
    (h,) = state
    xf, xh = op.split(op.linear(x, p["w_ih"], p["b_ih"]), 2)
    f = op.sigmoid(xf + op.linear(h, p["w_fh"]))
    candidate = op.tanh(xh + op.linear(f * h, p["w_hh"]))
    h = (1.0 - f) * h + f * candidate
    return h, (h,)


@pytest.fixture
def user_cells():
    """Two cells of a user's own, registered as ``elman`` and ``mgu`` for one test (they run through
    each backend's generic per-step loop, not cuDNN or Keras' fused layers)."""
    import cellforge as cf
    from cellforge.cells import CELLS

    cells = [cf.Cell("elman", elman_step, params={"w_ih": ("H", "I"), "w_hh": ("H", "H"), "b_ih": ("H",)}),
             cf.Cell("mgu", mgu_step, params={"w_ih": ("2H", "I"), "b_ih": ("2H",), "w_fh": ("H", "H"),
                                             "w_hh": ("H", "H")})]
    for cell in cells:
        cf.register_cell(cell, overwrite=True)
    yield
    for cell in cells:
        CELLS.pop(cell.name, None)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A fresh storage directory for one test's runs."""
    monkeypatch.setenv("CELLFORGE_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def pytest_runtest_setup(item):
    """Integration tests run with tracking off (CELLFORGE_TRACKING=none), except those marked
    ``tracking`` (test_tracking.py, test_registry_serving.py), which test the default store: it costs a
    fit ~6 s (MLflow's import in rank 0, opening the store, the bundle artifact: issue 17's benchmark
    line), and the suite runs dozens of fits. Set before the test's fixtures, so its fits see it."""
    if item.get_closest_marker("integration") and not item.get_closest_marker("tracking"):
        os.environ["CELLFORGE_TRACKING"] = "none"
    else:
        os.environ.pop("CELLFORGE_TRACKING", None)


def pytest_collection_modifyitems(items):
    """Mark each test by its folder: tests/unit -> unit, tests/integration -> integration."""
    for item in items:
        path = str(item.fspath)
        item.add_marker(pytest.mark.integration if "/integration/" in path else pytest.mark.unit)
