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
ATTEMPTS = 5  # cluster start-ups before giving up (see _boost)

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


def _boost() -> None:
    """A raylet aborts if its node's agents have not reported their ports within ~15 s (fixed in
    Ray), and on a shared 2-core machine under load their imports alone can take longer: the
    node's processes start at a higher priority where we may raise it (root), lowered after."""
    if os.geteuid() == 0:
        os.nice(-10)


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
        self.ray_tmp = self.worker_tmp = Path("/nonexistent")  # the current attempt's Ray temp dirs
        self.token = secrets.token_hex(16)
        # not the embedded Ray's loopback-only switch (cellforge.runtime sets it for the session's Ray):
        # with it, `ray start --address` refuses to join a multi-node cluster
        inherited = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        self.env = {**inherited, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
                    # Ray's own start-up waits, stretched for a busy 2-core machine
                    "RAY_agent_register_timeout_ms": "240000", "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "240",
                    "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "240"}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []  # `ray start` processes of the current attempt
        self.attempt = 0
        # Ray's start-up waits are fixed (a node's agents get ~30 s to report their ports); on a
        # busy machine they can run out, so a cluster that failed to come up is started afresh
        for attempt in range(ATTEMPTS):
            try:
                self._start_nodes(head_cpus, worker_cpus, attempt)
                return
            except (RuntimeError, TimeoutError):
                self.stop()
                if attempt == ATTEMPTS - 1:
                    raise
            except BaseException:  # an interrupted start leaves nothing behind either
                self.stop()
                raise

    def _start_nodes(self, head_cpus: int, worker_cpus: int, attempt: int) -> None:
        # Ray's unix sockets live under the temp dir and their paths must stay under 108 bytes; each
        # node has its own, as on separate machines (a shared one would mix their runtime_env caches)
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="cf-ray-", dir="/tmp"))
        self.worker_tmp = Path(tempfile.mkdtemp(prefix="cf-rayw-", dir="/tmp"))
        self.attempt = attempt
        self.gcs, self.dashboard = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard}"
        common = ["--node-ip-address", "127.0.0.1", "--block", "--disable-usage-stats"]
        self._start(f"head{attempt}", [sys.executable, "-c", RAY_START, "start", "--head", "--port", str(self.gcs),
                                       "--num-cpus", str(head_cpus), "--include-dashboard", "true", "--dashboard-host",
                                       "127.0.0.1", "--dashboard-port", str(self.dashboard),
                                       "--ray-client-server-port", str(free_port()), "--temp-dir", str(self.ray_tmp),
                                       *_node_ports(), *common])
        self.wait_for_dashboard()
        self.wait_for_nodes(1)  # the dashboard answers before the head's raylet has registered
        self._start(f"worker{attempt}", [sys.executable, "-c", RAY_START, "start", "--address",
                                         f"127.0.0.1:{self.gcs}", "--num-cpus", str(worker_cpus), "--temp-dir",
                                         str(self.worker_tmp), *_node_ports(), *common])
        self.wait_for_nodes(2)
        self._unboost()

    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True, preexec_fn=_boost))

    def _unboost(self) -> None:
        """Back to normal priority once the nodes are up (workers started later inherit it)."""
        sessions = {p.pid for p in self.procs}
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) in sessions and proc.nice() < 0:
                    proc.nice(0)
            except (psutil.Error, ProcessLookupError):
                pass

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
        # a raylet aborts when its agents are slow to report their ports; `ray start` notices late
        for log in [*(self.ray_tmp / "session_latest" / "logs").glob("raylet*.out"),
                    *(self.worker_tmp / "session_latest" / "logs").glob("raylet*.out")]:
            crash = next((line for line in log.read_text(errors="replace").splitlines() if "Check failed" in line), None)
            if crash:
                raise RuntimeError(f"a raylet aborted: {crash[:300]}")
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"`ray {' '.join(p.args[3:5])}` exited ({p.returncode}); see logs in {self.tmp}")

    def cli_env(self, **extra: str) -> dict[str, str]:
        """Environment of a `cellforge` command that talks to this cluster (the token, nothing else)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return {**env, "RAY_AUTH_TOKEN": self.token, **extra}

    def stop(self) -> None:
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
        for p in self.procs:  # it did not stop within 30 s in the fresh-clone runs (teardown 30.2 s): kill it
            try:                # soon after; what it started is killed below either way
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        sessions = {p.pid for p in self.procs}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                if proc.pid in ours or os.getsid(proc.pid) in sessions or str(self.ray_tmp) in cmdline or str(
                        self.worker_tmp) in cmdline:
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
                pass
        self.procs = []
        for node, tmp in (("head", self.ray_tmp), ("worker", self.worker_tmp)):
            logs = tmp / "session_latest" / "logs"
            if logs.is_dir():  # keep the Ray logs of this attempt next to the `ray start` output
                shutil.copytree(logs, self.tmp / f"ray-logs-{self.attempt}-{node}", dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("events", "export_events", "old"))
            shutil.rmtree(tmp, ignore_errors=True)
