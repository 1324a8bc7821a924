"""Where Ray runs: an embedded local Ray by default, a cluster when an address is given."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

from cellforge import _ray

# a Tune trial plus its Train workers (or Serve replicas) each hold a logical CPU; on a
# small machine they would deadlock waiting for cores, so the embedded Ray advertises more
# logical CPUs than cores (the OS time-slices them). Override with CELLFORGE_NUM_CPUS.
MIN_LOGICAL_CPUS = 8


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a local Ray bound to 127.0.0.1.

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
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    cpus = int(os.environ.get("CELLFORGE_NUM_CPUS", max(MIN_LOGICAL_CPUS, os.cpu_count() or 1)))
    _ray.loopback_only()  # keep the embedded Ray's node on 127.0.0.1
    import psutil

    for attempt in (1, 2, 3):
        before = {c.pid for c in psutil.Process().children(recursive=True)}
        try:
            ray.init(address="local", num_cpus=cpus, _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                     logging_level=logging.WARNING)
            return
        except Exception as e:
            # On a busy small machine the raylet can give up waiting for its metrics agent (a fixed
            # 15 s, ray-project/ray#65983) and the start times out; a second try usually succeeds.
            if attempt == 3 or "timed out during startup" not in str(e):
                raise
            ray.shutdown()
            for child in psutil.Process().children(recursive=True):  # the failed start's GCS, dashboard...
                if child.pid not in before:
                    child.kill()


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
