"""The default session store's own redis-server: a child of the store actor, on a Unix socket.

The default store (``session_store: memory``) keeps sessions in the memory of this Ray's store actor.
Where it can, the actor starts a redis-server of its own and the sessions live there instead: a step's
compare-and-set is then one Redis call over a Unix socket (~0.2 ms) where a Ray actor call took 2-3.5 ms
on our 2-core machine (``benchmarks/serve_load.py --sessions``). Nothing else changes for a user: the
sessions live and die with the actor (the server is its child, killed with it; it keeps no file), and any
replica on the machine reaches them.

It runs when ``redis-server`` is on the PATH (the Makefile's ``sysdeps`` installs it; ``apt install
redis-server``, ``brew install redis``), on Linux (the child is killed with its parent through
``prctl(PR_SET_PDEATHSIG)``), and when the actor's Ray node is on a loopback address (the embedded Ray:
every node then shares this machine's files, and so the socket). Elsewhere the actor keeps the sessions
itself, as before; ``CELLFORGE_LOCAL_REDIS=0`` where Ray starts keeps them there. The server listens on no TCP port: its socket is in a fresh 0700 directory, it takes a
random password (given on stdin, not on its command line), and it saves nothing.

    >>> server = LocalRedis.start()                                  # doctest: +SKIP
    >>> server.url                                                   # doctest: +SKIP
    'unix:///tmp/cf-redis-k2j1/redis.sock?password=...'
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

log = logging.getLogger("cellforge")

START_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


def unavailable(node_ip: str | None = None) -> str | None:
    """Why this process cannot run the local server (None: it can)."""
    if os.environ.get("CELLFORGE_LOCAL_REDIS", "1") == "0":
        return "CELLFORGE_LOCAL_REDIS=0"
    if not sys.platform.startswith("linux"):
        return f"not on Linux ({sys.platform})"
    if shutil.which("redis-server") is None:
        return "no redis-server on the PATH"
    if node_ip is not None:
        try:
            if not ipaddress.ip_address(node_ip).is_loopback:
                return f"the Ray node's address {node_ip} is not a loopback address (a multi-machine cluster)"
        except ValueError:
            return f"the Ray node's address {node_ip!r} is not an IP address"
    return None


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> None:
    """In the child, between fork and exec: SIGTERM when the parent exits (prctl is looked up before the
    fork: nothing is imported here). If the parent already died, the signal is sent now."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _sweep(keep: str) -> None:
    """Remove the folders of this user's earlier servers that are gone (their socket answers nothing); a
    folder younger than a minute may be a server that is starting (its socket not made yet): it stays."""
    import glob
    import socket

    for folder in glob.glob(os.path.join(tempfile.gettempdir(), "cf-redis-*")):
        try:
            info = os.stat(folder)
        except OSError:
            continue
        if folder == keep or info.st_uid != os.getuid() or time.time() - info.st_mtime < 60:
            continue
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(os.path.join(folder, "redis.sock"))
                continue
            except OSError:
                pass
        shutil.rmtree(folder, ignore_errors=True)


class LocalRedis:
    """One redis-server, a child of this process (started by ``start``)."""

    def __init__(self, proc: subprocess.Popen, folder: str, sock: str, password: str):
        self.proc, self.folder, self.sock, self.password = proc, folder, sock, password
        self.url = f"unix://{sock}?password={password}"

    @classmethod
    def start(cls) -> LocalRedis:
        """Start the server and wait until it answers (RuntimeError naming why, if it does not)."""
        folder = tempfile.mkdtemp(prefix="cf-redis-")  # 0700: only this user reaches the socket
        sock, password = os.path.join(folder, "redis.sock"), secrets.token_hex(16)
        config = "\n".join([
            "port 0", f"unixsocket {sock}", "unixsocketperm 700", f"requirepass {password}",
            'save ""', "appendonly no", f"dir {folder}", "loglevel warning", f"logfile {folder}/redis.log",
            "daemonize no", "maxmemory-policy noeviction", ""])
        proc = subprocess.Popen([shutil.which("redis-server"), "-"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder,
                                preexec_fn=functools.partial(_die_with_parent, os.getpid()), start_new_session=True)
        proc.stdin.write(config.encode())
        proc.stdin.close()
        server = cls(proc, folder, sock, password)
        try:
            server.wait_ready()
        except Exception:
            server.stop()
            raise
        _sweep(keep=folder)
        return server

    def wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self.proc.returncode}: {self.last_log()}")
            try:
                with redis.Redis(unix_socket_path=self.sock, password=self.password, socket_timeout=1) as r:
                    r.ping()
                return
            except (redis.ConnectionError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S:.0f} s: "
                                       f"{self.last_log()}") from None
                time.sleep(0.01)

    def last_log(self) -> str:
        try:
            with open(os.path.join(self.folder, "redis.log")) as f:
                return f.read()[-500:].strip() or "(its log is empty)"
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
