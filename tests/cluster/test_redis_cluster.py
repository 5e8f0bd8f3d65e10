"""asyncjobs on a private Redis Cluster, long form (``AJ_CLUSTER_TESTS=1``): the whole contract
suite, and a master killed under load while its replica takes over."""

from __future__ import annotations

import time
import uuid

import anyio
import pytest
from asyncjobs_redis import RedisClusterBroker

from tests.cluster import contract_tests, long_form
from tests.cluster.conftest import delete_prefix
from tests.cluster.failover import Tally, consume, produce, wait_drained
from tests.servers.redis_cluster import RedisCluster

pytestmark = [pytest.mark.anyio, pytest.mark.fault, pytest.mark.redis, long_form]

globals().update(contract_tests())

QUEUES = ["q0", "q1", "q2", "q3"]


@pytest.mark.timeout(180)
async def test_a_master_killed_under_load_loses_no_confirmed_job(redis_nodes: RedisCluster) -> None:
    """SIGKILL the master of a busy queue's slot; its replica is promoted; every confirmed job is done."""
    ns = f"f{uuid.uuid4().hex[:8]}"
    url = f"{redis_nodes.url}?prefix={ns}&socket_timeout=2"
    producer, workers = RedisClusterBroker(url), [RedisClusterBroker(url) for _ in range(2)]
    tag = producer.keys(QUEUES[0]).tag
    victim = redis_nodes.master_of(tag)
    tally = Tally()
    events: list[str] = []
    try:
        stop, enough = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:
            for i, worker in enumerate(workers):
                tg.start_soon(consume, f"w{i}", worker, QUEUES, tally, stop, 3.0)
            async with anyio.create_task_group() as load:
                load.start_soon(produce, producer, QUEUES, 50_000, tally, 0.001, enough)
                await anyio.sleep(2.0)
                before = len(tally.confirmed)
                behind = redis_nodes.replica_lag_bytes(victim)
                victim.kill()
                events.append(
                    f"master 127.0.0.1:{victim.port} of {tag} killed after {before} confirmed; "
                    f"its replica was {behind} bytes behind just before"
                )
                promoted, took = await anyio.to_thread.run_sync(redis_nodes.wait_failover, victim, tag)
                events.append(f"replica 127.0.0.1:{promoted.port} promoted in {took:.1f} s")
                await anyio.sleep(3.0)  # the load goes on on the new master
                enough.set()
            events.append(f"load over: {len(tally.confirmed)} confirmed, {tally.unconfirmed} not")
            drained = await wait_drained(tally, 30)
            events.append(f"drained {drained:.1f} s after the load")
            stop.set()
        print("\n".join(events) + "\n" + tally.summary())
        assert len(tally.confirmed) >= 1000, tally.summary()
        assert tally.unconfirmed > 0 or tally.errors, "the kill was felt by the load"
        assert not tally.lost, f"{len(tally.lost)} confirmed jobs lost: {tally.summary()}"
    finally:
        began = time.monotonic()
        if victim.pid is None:
            victim.start()  # it comes back as a replica of the promoted node
            await anyio.to_thread.run_sync(redis_nodes.wait_ok)
        print(f"killed master back as a replica in {time.monotonic() - began:.1f} s")
        for broker in (producer, *workers):
            await broker.close()
        await delete_prefix(redis_nodes.url, ns)
