"""The quick cluster check of the default run: asyncjobs on a private Redis Cluster (about 17 s).

The URL form, one hash slot per queue, work spread over several queues (so over several masters),
and the contract tests that cross queues. The whole contract suite and the failover run in the
long form (``test_redis_cluster.py``, ``AJ_CLUSTER_TESTS=1``).
"""

from __future__ import annotations

import uuid
from typing import cast

import anyio
import pytest
from asyncjobs_redis import RedisClusterBroker
from asyncjobs_redis.cluster import MULTI_QUEUE_BLOCK
from asyncjobs_redis.keys import queue_keys
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

from asyncjobs.broker import Broker, Delivery, OutgoingJob
from asyncjobs.clock import monotonic
from asyncjobs.dedupe.redis import RedisDedupeStore
from asyncjobs.errors import BrokerURLError
from tests.cluster import contract_tests
from tests.cluster.failover import body_of
from tests.servers import pid_alive, port_open
from tests.servers.redis_cluster import RedisCluster, redis_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

globals().update(
    contract_tests(
        {
            "test_enqueued_job_is_fetched_once_with_body_intact",
            "test_consumer_reads_only_its_queues",
            "test_a_backlog_in_one_queue_does_not_starve_another",
            "test_expired_lease_is_redelivered_with_raised_count",
            "test_dead_letter_keeps_malformed_body_intact_and_can_be_replayed",
        }
    )
)

QUEUES = ["alpha", "beta", "gamma", "delta", "epsilon"]


def test_the_url_names_the_cluster_and_its_seed_nodes() -> None:
    broker = RedisClusterBroker("redis+cluster://10.0.0.1:7000/0?prefix=app&seed=10.0.0.2:7001&seed=h3:7002")
    assert broker.prefix == "app"
    assert broker.seeds == [("10.0.0.2", 7001), ("h3", 7002)]
    assert broker.url.startswith("redis+cluster://")
    with pytest.raises(BrokerURLError, match="seed=host:port"):
        RedisClusterBroker("redis+cluster://10.0.0.1:7000/0?seed=nope")
    with pytest.raises(BrokerURLError, match="redis\\+cluster://"):
        RedisClusterBroker("redis://10.0.0.1:7000/0")


def test_every_key_of_a_queue_is_on_one_hash_slot() -> None:
    keys = queue_keys("asyncjobs", "emails")
    slots = {key_slot(key.encode()) for key in (*keys.job, *keys.dead, keys.unique("k1"), keys.unique("{x}"))}
    assert len(slots) == 1
    spread = {key_slot(queue_keys("asyncjobs", queue).tag.encode()) for queue in QUEUES}
    assert len(spread) > 1, "the test's queues fall on several slots"


async def test_one_enqueue_over_queues_on_several_masters_stores_each_job(broker: Broker) -> None:
    jobs = [OutgoingJob(uuid.uuid4().hex, QUEUES[i % len(QUEUES)], body_of(str(i))) for i in range(50)]
    assert await broker.enqueue(jobs) == [True] * 50
    for queue in QUEUES:
        assert (await broker.stats(queue)).ready == 10


async def test_a_consumer_of_several_queues_leases_and_acks_them_all(broker: Broker) -> None:
    jobs = [OutgoingJob(uuid.uuid4().hex, QUEUES[i % len(QUEUES)], body_of(str(i))) for i in range(40)]
    await broker.enqueue(jobs)
    consumer = await broker.consumer(QUEUES, prefetch=15, lease_seconds=30)
    try:
        got: list[Delivery] = []
        deadline = monotonic() + 10
        while len(got) < 40 and monotonic() < deadline:
            batch = await consumer.fetch(40, 0.5)
            assert len(batch) <= 15
            extended = await consumer.extend(batch)
            assert extended == [True] * len(batch)
            assert await consumer.ack(batch) == [True] * len(batch), "one ack over several queues' leases"
            got += batch
        assert sorted(d.job_id for d in got) == sorted(j.id for j in jobs)
        assert {d.queue for d in got} == set(QUEUES)
        for queue in QUEUES:
            stats = await broker.stats(queue)
            assert (stats.ready, stats.in_flight) == (0, 0)
    finally:
        await consumer.close()


async def test_a_consumer_of_several_queues_holds_at_most_prefetch_leases(broker: Broker) -> None:
    await broker.enqueue([OutgoingJob(uuid.uuid4().hex, q, body_of(q)) for q in QUEUES for _ in range(4)])
    consumer = await broker.consumer(QUEUES, prefetch=6, lease_seconds=30)
    try:
        held = []
        for _ in range(10):
            held += await consumer.fetch(6, 0.05)
        assert len(held) == 6
        await consumer.release(held[:2])
        assert len(await consumer.fetch(6, 0.5)) == 2
    finally:
        await consumer.close()
    total = [await broker.stats(q) for q in QUEUES]
    assert sum(s.ready for s in total) == 20 and sum(s.in_flight for s in total) == 0, "close gave every lease back"


async def test_a_waiting_consumer_of_several_queues_wakes_for_a_job_in_any_of_them(broker: Broker) -> None:
    consumer = await broker.consumer(QUEUES, prefetch=5, lease_seconds=30)
    try:
        assert await consumer.fetch(1, 0.2) == []
        woke: list[float] = []

        async def waiter() -> None:
            began = monotonic()
            got = await consumer.fetch(1, 5.0)
            woke.append(monotonic() - began)
            assert [d.queue for d in got] == ["delta"]

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.3)
            await broker.enqueue([OutgoingJob(uuid.uuid4().hex, "delta", body_of("d"))])
        assert woke and woke[0] < 0.3 + MULTI_QUEUE_BLOCK, f"woke after {woke}"
    finally:
        await consumer.close()


def dedupe_store(redis_nodes: RedisCluster) -> RedisDedupeStore:
    client = ClusterClient.from_url(redis_nodes.url.replace("redis+cluster://", "redis://"))
    return RedisDedupeStore(cast(Redis, client), prefix=f"d{uuid.uuid4().hex[:8]}", owns_client=True)


KEYS = [f"k{i}" for i in range(12)]


async def test_the_redis_dedupe_store_on_a_cluster_client_claims_and_completes_keys_of_every_slot(
    redis_nodes: RedisCluster,
) -> None:
    store = dedupe_store(redis_nodes)
    assert len({key_slot(f"{{{key}}}".encode()) for key in KEYS}) > 1
    try:
        for key in KEYS:
            assert (await store.claim(key, "me", lease_seconds=30, ttl=60)).status == "claimed"
            assert await store.extend(key, "me", 30)
            assert not await store.extend(key, "other", 30)
            assert await store.complete(key, "me", 60)
        assert (await store.claim(KEYS[3], "you", lease_seconds=30, ttl=60)).status == "done"
    finally:
        for key in KEYS:
            await store.delete(key)
        await store.close()


async def test_the_redis_dedupe_store_on_a_cluster_client_extends_many_claims(
    redis_nodes: RedisCluster,
) -> None:
    store = dedupe_store(redis_nodes)
    try:
        for key in KEYS:
            await store.claim(key, "me", lease_seconds=30, ttl=60)
        assert await store.extend_many([(key, "me") for key in KEYS], 30) == [True] * 12
    finally:
        for key in KEYS:
            await store.delete(key)
        await store.close()


def test_the_private_redis_cluster_has_three_masters_three_replicas_and_leaves_nothing_behind() -> None:
    with redis_cluster() as cluster:
        roles = sorted(cluster.role(server) for server in cluster.servers)
        assert roles == ["master"] * 3 + ["slave"] * 3
        with cluster.client(cluster.servers[0]) as client:
            assert client.config_get("appendfsync")["appendfsync"] == "always"
            assert client.config_get("appendonly")["appendonly"] == "yes"
        pids = [server.pid for server in cluster.servers]
        ports, base = [server.port for server in cluster.servers], cluster.base
    assert not any(pid is not None and pid_alive(pid) for pid in pids)
    assert not any(port_open(port) for port in ports)
    assert not base.exists()
