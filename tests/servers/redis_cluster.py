"""A private Redis Cluster for tests: six redis-server processes, three masters and three replicas.

``redis_cluster()`` starts six :class:`~tests.servers.redis.RedisServer` in cluster mode on free
loopback ports (each with its own dir, ``appendonly yes``, ``appendfsync always``), forms the
cluster with ``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes``, waits until
every node reports ``cluster_state:ok`` and yields a :class:`RedisCluster`::

    with redis_cluster() as cluster:
        broker = RedisClusterBroker(cluster.url)        # redis+cluster://127.0.0.1:PORT/0
        master = cluster.master_of("{asyncjobs:q}:ready")
        master.kill()                                   # SIGKILL by PID: its replica takes over
        cluster.wait_failover(master)

Measured here (2 shared cores, Redis 7.0): about 2 s from nothing to ``cluster_state:ok``; a
replica is promoted 1-2 s after its master is killed (``cluster-node-timeout`` 1000 ms). Every
wait is bounded; every process is stopped by its PID. A missing ``redis-server`` or ``redis-cli``
skips the test (fails under ``CI=true``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.servers import free_port, require_binary
from tests.servers.redis import RedisServer

NODE_TIMEOUT_MS = 1000


class RedisCluster:
    """The six nodes of a private cluster; see the module docstring. Not started until :meth:`start`."""

    def __init__(self, base: Path, masters: int = 3, replicas: int = 1) -> None:
        self.cli = require_binary("redis-cli")
        self.base = base
        self.replicas = replicas
        self.servers: list[RedisServer] = []
        for i in range(masters * (1 + replicas)):
            workdir = base / f"n{i}"
            workdir.mkdir(parents=True)
            options = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(workdir / "nodes.conf"),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-port", str(free_port()),  # not PORT+10000, which may be taken or too high
            )  # fmt: skip
            self.servers.append(RedisServer(workdir, *options, aof=True))
        self.took: dict[str, float] = {}

    @property
    def url(self) -> str:
        """The broker URL with the first node as seed (the client finds the others)."""
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}/0"

    def client(self, server: RedisServer) -> redis.Redis:
        """A plain (non-cluster) client of one node."""
        return redis.Redis(port=server.port, socket_timeout=2)

    def start(self, within: float = 30.0) -> float:
        """Start the nodes, create the cluster, wait until it is ``ok`` everywhere; the seconds it took."""
        began = time.monotonic()
        for server in self.servers:
            server.start()
        nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
        command = [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=within)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")
        self.wait_ok(within - (time.monotonic() - began))
        self.took["start"] = time.monotonic() - began
        return self.took["start"]

    def running(self) -> list[RedisServer]:
        return [server for server in self.servers if server.pid is not None]

    def role(self, server: RedisServer) -> str:
        """``master`` or ``slave``, as the node says."""
        with self.client(server) as client:
            return str(client.info("replication")["role"])

    def wait_ok(self, within: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and every master that has a
        running replica sees it connected and in sync (``master_link_status:up`` on the replica)."""
        deadline = time.monotonic() + within
        last = ""
        while time.monotonic() < deadline:
            try:
                states, links = [], []
                for server in self.running():
                    with self.client(server) as client:
                        states.append(client.cluster("info")["cluster_state"])
                        info = client.info("replication")
                        if info["role"] == "slave":
                            links.append(info.get("master_link_status"))
                last = f"states {states}, replica links {links}"
                if all(state == "ok" for state in states) and all(link == "up" for link in links):
                    return
            except (redis.RedisError, KeyError) as error:
                last = repr(error)
            time.sleep(0.1)
        raise TimeoutError(f"the cluster was not ok within {within}s: {last}")

    def master_of(self, key: str) -> RedisServer:
        """The server that is the master of ``key``'s slot now (as the first running node sees it)."""
        with self.client(self.running()[0]) as client:
            slot = int(client.cluster("keyslot", key))
            for start, end, master, *_ in client.cluster("slots"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(server for server in self.servers if server.port == port)
        raise LookupError(f"no master for {key!r}")

    def replica_lag_bytes(self, master: RedisServer) -> int:
        """How many bytes of ``master``'s replication stream its replica has not acknowledged yet."""
        with self.client(master) as client:
            info = client.info("replication")
        offsets = [int(v["offset"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return int(info["master_repl_offset"]) - max(offsets, default=0)

    def wait_failover(self, dead: RedisServer, key: str, within: float = 20.0) -> tuple[RedisServer, float]:
        """Wait until ``key``'s slot has a live master other than ``dead``; that master and the seconds."""
        began = time.monotonic()
        while time.monotonic() - began < within:
            try:
                master = self.master_of(key)
                if master is not dead and master.pid is not None and self.role(master) == "master":
                    self.wait_ok(within - (time.monotonic() - began))
                    return master, time.monotonic() - began
            except (redis.RedisError, LookupError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"no replica took over from 127.0.0.1:{dead.port} within {within}s")

    def stop(self) -> None:
        """Kill every node by its PID."""
        for server in self.servers:
            server.kill()


@contextmanager
def redis_cluster(masters: int = 3, replicas: int = 1, within: float = 30.0) -> Iterator[RedisCluster]:
    """A started private Redis Cluster; every node killed by its PID and the dir removed at the end."""
    require_binary("redis-server")  # skips (fails under CI) before anything is made
    require_binary("redis-cli")
    base = Path(tempfile.mkdtemp(prefix="aj-redis-cluster-"))
    cluster = RedisCluster(base, masters, replicas)
    try:
        cluster.start(within)
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
