"""A real two-node Ray cluster for tests: `ray start --head` and `ray start --address` on
127.0.0.1, free ports, a temp dir of its own and token authentication on. Teardown ends only
the processes this cluster started (never `ray stop`, which would end everyone's Ray)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent

# `ray start`, with more patience: it gives a new node's raylet a fixed 30 s to register with the
# GCS, and on this shared 2-core machine the node's Python agents alone can take longer to import.
# The wait is looked up at call time, so a retrying get_node extends it to 2 minutes.
RAY_START = """
import sys, time
import ray._private.services as services
_get_node = services.get_node
def patient_get_node(*args, **kwargs):
    deadline = time.monotonic() + 120
    while True:
        try:
            return _get_node(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
services.get_node = patient_get_node
from ray.scripts.scripts import main
sys.argv[0] = "ray"
main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]


class Cluster:
    def __init__(self, tmp: Path, head_cpus: int = 2, worker_cpus: int = 2):
        self.tmp = tmp
        # Ray's unix sockets live under the temp dir and their paths must stay under 108 bytes
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="cf-ray-", dir="/tmp"))
        self.token = secrets.token_hex(16)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
                    # Ray's own start-up waits, stretched for a busy 2-core machine
                    "RAY_agent_register_timeout_ms": "240000", "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "240",
                    "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "240"}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []  # `ray start` processes of the current attempt
        # Ray's start-up waits are fixed (a node's agents get ~30 s to report their ports); on a
        # busy machine they can run out, so a cluster that failed to come up is started afresh
        for attempt in range(3):
            try:
                self._start_nodes(head_cpus, worker_cpus, attempt)
                return
            except (RuntimeError, TimeoutError):
                self.stop(keep_dir=True)
                if attempt == 2:
                    raise

    def _start_nodes(self, head_cpus: int, worker_cpus: int, attempt: int) -> None:
        self.gcs, self.dashboard = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard}"
        common = ["--node-ip-address", "127.0.0.1", "--block", "--disable-usage-stats", "--temp-dir", str(self.ray_tmp)]
        self._start(f"head{attempt}", [sys.executable, "-c", RAY_START, "start", "--head", "--port", str(self.gcs),
                                       "--num-cpus", str(head_cpus), "--include-dashboard", "true", "--dashboard-host",
                                       "127.0.0.1", "--dashboard-port", str(self.dashboard),
                                       "--ray-client-server-port", str(free_port()), *_node_ports(), *common])
        self.wait_for_dashboard()
        self._start(f"worker{attempt}", [sys.executable, "-c", RAY_START, "start", "--address",
                                         f"127.0.0.1:{self.gcs}", "--num-cpus", str(worker_cpus), *_node_ports(),
                                         *common])
        self.wait_for_nodes(2)

    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _get(self, path: str):
        import httpx

        return httpx.get(self.address + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)

    def wait_for_dashboard(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_alive()
            try:
                if self._get("/api/version").status_code == 200:
                    return
            except Exception:
                pass
            time.sleep(1)
        raise TimeoutError(f"the Ray head's dashboard did not come up; see {self.tmp / 'head.log'}")

    def wait_for_nodes(self, n: int, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_alive()
            try:
                nodes = self._get("/nodes?view=summary").json()["data"]["summary"]
                if sum(1 for x in nodes if x["raylet"]["state"] == "ALIVE") >= n:
                    return
            except Exception:
                pass
            time.sleep(1)
        raise TimeoutError(f"{n} Ray nodes did not come up; see {self.tmp}/*.log")

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"`ray {' '.join(p.args[3:5])}` exited ({p.returncode}); see logs in {self.tmp}")

    def cli_env(self, **extra: str) -> dict[str, str]:
        """Environment of a `cellforge` command that talks to this cluster (the token, nothing else)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return {**env, "RAY_AUTH_TOKEN": self.token, **extra}

    def stop(self, keep_dir: bool = False) -> None:
        """End the processes this cluster started: each `ray start --block` process tree, plus any
        process that was in their sessions or uses this cluster's temp dir."""
        ours = set()
        for p in self.procs:
            try:
                ours |= {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
        for p in self.procs:  # `ray start --block` stops its own node on SIGTERM
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        sessions = {p.pid for p in self.procs}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.pid in ours or os.getsid(proc.pid) in sessions or str(self.ray_tmp) in " ".join(
                        proc.info["cmdline"] or []):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
                pass
        self.procs = []
        if not keep_dir:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
