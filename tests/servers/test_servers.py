"""The private servers: their settings apply, restarts keep (or lose) what they should, nothing is left behind."""

from __future__ import annotations

import time

import aio_pika
import anyio
import pytest
import redis

from tests.servers import pid_alive, port_open
from tests.servers.rabbitmq import rabbitmq_node
from tests.servers.redis import redis_server

pytestmark = [pytest.mark.fault]


@pytest.mark.parametrize("aof", [True, False])
def test_private_redis_keeps_acknowledged_writes_across_a_kill_only_with_aof(aof: bool) -> None:
    with redis_server(aof=aof) as server:
        assert server.port != 6379
        client = redis.Redis(port=server.port, socket_timeout=2)
        try:
            assert client.config_get("appendfsync")["appendfsync"] == ("always" if aof else "everysec")
            client.set("k", "v")
            pid = server.pid
            server.restart(down=0.1)  # SIGKILL: no shutdown, no final save
            assert pid is not None and not pid_alive(pid)
            assert client.get("k") == (b"v" if aof else None)
        finally:
            client.close()
        port, dir_ = server.port, server.workdir
    assert not port_open(port), "stopped"
    assert not dir_.exists(), "its dir is removed"


async def _publish(url: str, queue: str, body: bytes) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
        )


async def _count(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return int(count)


async def _count_after_recovery(url: str, queue: str, expected: int, within: float = 15.0) -> int:
    """The queue's message count once it reaches ``expected`` or ``within`` seconds pass.

    Right after a start a quorum queue may still be replaying its log: its count grows for a moment.
    """
    deadline = time.monotonic() + within
    count = await _count(url, queue)
    while count < expected and time.monotonic() < deadline:
        await anyio.sleep(0.2)
        count = await _count(url, queue)
    return count


@pytest.mark.rabbitmq
@pytest.mark.anyio
async def test_private_rabbitmq_node_has_its_config_and_keeps_durable_messages_across_restarts() -> None:
    with rabbitmq_node("consumer_timeout = 2000", rabbit_env={"channel_tick_interval": 500}) as node:
        assert node.amqp_port != 5672 and node.name != "rabbit@localhost"
        assert node.eval("application:get_env(rabbit, consumer_timeout).") == "{ok,2000}"
        assert node.eval("application:get_env(rabbit, channel_tick_interval).") == "{ok,500}"
        assert node.version().startswith("3.")
        await _publish(node.url, "kept", b"one")
        node.restart()  # rabbitmqctl stop, start on the same data dir
        assert await _count_after_recovery(node.url, "kept", 1) == 1
        await _publish(node.url, "kept", b"two")
        node.restart(hard=True)  # SIGKILL of the beam: a crash
        assert await _count_after_recovery(node.url, "kept", 2) == 2
        pids, base = node.pids(), node.base
        assert pids
    assert not any(pid_alive(pid) for pid in pids), "every process of the node is gone"
    assert not port_open(node.amqp_port)
    assert not base.exists()
    print(f"rabbitmq node: starts {[round(s, 2) for s in node.starts]} s, stops {[round(s, 2) for s in node.stops]} s")
