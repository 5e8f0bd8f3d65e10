"""The servers of ``python -m benchmarks.scale``: the shared Redis and RabbitMQ, and a private Redis
and Redis Cluster started from ``tests/servers`` (killed by their PIDs when the run ends).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.core import AMQP_URL, REDIS_URL, port_open
from benchmarks.scale_procs import listening_pid


@dataclass(slots=True)
class Server:
    """Where a scenario runs: the URL, the server processes (for their CPU) and their persistence."""

    name: str
    label: str
    persistence: str
    base: str  # broker URL without the prefix
    pids: list[int]
    single_threaded: bool  # Redis: one thread does the work; RabbitMQ uses every core
    ports: list[int] = field(default_factory=list)  # Redis nodes, for the clean-up
    cluster: Any = None  # tests.servers.redis_cluster.RedisCluster

    def url(self, prefix: str) -> str:
        if self.name == "amqp":
            return f"{self.base}?queue_prefix={prefix}."
        if self.name == "memory":
            return f"memory://{prefix}"
        return f"{self.base}?prefix={prefix}"


def shared_redis() -> Server | str:
    if not port_open(6379):
        return "no Redis server on 127.0.0.1:6379"
    pid = listening_pid(6379)
    return Server("redis", "shared redis", "none", REDIS_URL, [pid] if pid else [], True, [6379])


def shared_amqp() -> Server | str:
    if not port_open(5672):
        return "no RabbitMQ server on 127.0.0.1:5672"
    pid = listening_pid(5672)
    return Server("amqp", "shared rabbitmq", "quorum queue (fsync per batch)", AMQP_URL, [pid] if pid else [], False)


def private_redis(stack: contextlib.ExitStack) -> Server | str:
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    from tests.servers.redis import redis_server

    server = stack.enter_context(redis_server(aof=True))
    assert server.pid is not None
    return Server("redis-aof", "private redis", "aof always", server.url, [server.pid], True, [server.port])


def private_cluster(stack: contextlib.ExitStack) -> Server | str:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return "redis-server or redis-cli is not installed"
    from tests.servers.redis_cluster import redis_cluster

    cluster = stack.enter_context(redis_cluster())
    pids = [s.pid for s in cluster.servers if s.pid is not None]
    ports = [s.port for s in cluster.servers]
    return Server(
        "cluster", "private cluster", "aof always, 3 masters + 3 replicas", cluster.url, pids, True, ports, cluster
    )


def start_servers(stack: contextlib.ExitStack, wanted: set[str]) -> dict[str, Server | str]:
    """The servers the chosen scenarios need (a string says why one is not available)."""
    makers: dict[str, Callable[[], Server | str]] = {
        "redis": shared_redis,
        "amqp": shared_amqp,
        "redis-aof": lambda: private_redis(stack),
        "cluster": lambda: private_cluster(stack),
    }
    found: dict[str, Server | str] = {}
    for name in sorted(wanted):
        try:
            found[name] = makers[name]()
        except Exception as exc:  # a server that does not start: its scenarios say why
            found[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return found


def queue_names(server: Server, prefix: str, count: int) -> list[str]:
    """``count`` queue names; on a cluster, each on another master (one queue lives on one master)."""
    if server.cluster is None or count == 1:
        return [f"q{i}" for i in range(count)]
    names: list[str] = []
    masters: set[int] = set()
    for i in range(1000):
        master = server.cluster.master_of(f"{{{prefix}:q{i}}}:ready").port
        if master not in masters:
            masters.add(master)
            names.append(f"q{i}")
            if len(names) == count:
                return names
    raise RuntimeError(f"found no {count} queues on distinct masters")


async def delete_keys(server: Server, prefix: str) -> None:
    """Delete every key containing ``prefix`` on each Redis node, or every queue on RabbitMQ."""
    if not server.ports and server.name != "amqp":
        return
    if server.name == "amqp":
        from benchmarks.suite_rabbitmq import delete_amqp

        await delete_amqp(prefix)
        return
    from redis.asyncio import Redis

    for port in server.ports:
        client = Redis(host="127.0.0.1", port=port)
        try:
            with contextlib.suppress(Exception):  # a replica refuses deletes: its master does them
                async for key in client.scan_iter(match=f"*{prefix}*", count=1000):
                    await client.delete(key)
        finally:
            await client.aclose()
