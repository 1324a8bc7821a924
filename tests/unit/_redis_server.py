"""A real redis-server for tests: on 127.0.0.1 at a free port, in a temporary directory, persisting every
write (append-only file, fsync always) so a restart after SIGKILL keeps what it acknowledged. Only the
process started here is stopped."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, directory: Path, fsync: str = "always", args: tuple[str, ...] = ()):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            pytest.fail("redis-server is not installed: run `make sysdeps` (Debian's redis-server package)")
        self.binary, self.dir, self.fsync, self.port = binary, Path(directory), fsync, free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)  # more redis-server options (a cluster node's, _redis_cluster.py)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", self.fsync, "--save", "", "--daemonize", "no",
             "--logfile", str(self.dir / "redis.log"), *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = (self.dir / "redis.log").read_text() if (self.dir / "redis.log").exists() else ""
        raise RuntimeError(f"redis-server did not start on port {self.port}: {log[-2000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> RedisServer:
        """SIGKILL, then start again on the same port from the same append-only file."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
