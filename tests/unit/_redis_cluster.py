"""A real Redis Cluster for tests: N primaries (and replicas) as redis-server processes on 127.0.0.1 at
free ports, each in its own temporary directory (``_redis_server.RedisServer`` with the cluster options),
joined by ``redis-cli --cluster create`` and waited for until every node says ``cluster_state:ok``.
Only the processes started here are stopped, also when starting fails half-way.

    with RedisClusterServers(tmp_path, primaries=3) as cluster:
        cluster.url  # 'redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3'
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from _redis_server import RedisServer


def free_ports(n: int) -> list[int]:
    """n distinct free ports: all bound at once, so none is handed out twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RedisClusterServers:
    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 2000):
        self.cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        if not Path(self.cli).exists():
            pytest.fail("redis-cli is not installed: run `make sysdeps` (Debian's redis-server package)")
        self.dir, self.primaries, self.replicas = Path(directory), primaries, replicas
        n = primaries * (1 + replicas)
        ports = free_ports(2 * n)  # each node's client port and its cluster bus port
        self.nodes: list[RedisServer] = []
        self._clients: dict = {}
        for i in range(n):
            node = RedisServer(self.dir / f"node{i}", fsync="everysec")
            node.port = ports[2 * i]
            # the bus port is given, not port + 10000 (which may be taken, or past 65535)
            node.args = ["--cluster-enabled", "yes", "--cluster-config-file", str(node.dir / "nodes.conf"),
                         "--cluster-port", str(ports[2 * i + 1]), "--cluster-node-timeout", str(node_timeout_ms)]
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """The session store's URL: every node a seed (the client finds the rest itself)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])

    def client(self, node: RedisServer):
        """A plain client of one node (kept: the tests ask nodes many questions)."""
        import redis

        if node.port not in self._clients:
            self._clients[node.port] = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)
        return self._clients[node.port]

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            out = subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                                  "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
            self.wait_ok(self.nodes, 30)
            return self
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, nodes: list[RedisServer], timeout: float) -> None:
        """Until each of ``nodes`` sees every slot served and the cluster ok."""
        end, info = time.monotonic() + timeout, {}
        while time.monotonic() < end:
            try:
                info = {n.port: self.client(n).cluster("info") for n in nodes}
                if all(i["cluster_state"] == "ok" and int(i["cluster_slots_ok"]) == 16384 for i in info.values()):
                    return
            except Exception:  # noqa: BLE001 - a node still joining answers errors; retried
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the Redis Cluster is not ok after {timeout:.0f}s: {info}")

    def node_of_key(self, key: str) -> RedisServer:
        """The primary that holds ``key``, asked of the nodes themselves (not computed here)."""
        from redis.exceptions import ResponseError

        for node in self.nodes:
            try:
                if node.proc is not None and self.client(node).exists(key):
                    return node
            except ResponseError:  # MOVED: the key's slot is another node's
                pass
        raise KeyError(key)

    def primaries_now(self) -> list[RedisServer]:
        alive = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        return [n for n in alive if self.client(n).info("replication")["role"] == "master"]

    def stop(self) -> None:
        for c in self._clients.values():
            c.close()
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
