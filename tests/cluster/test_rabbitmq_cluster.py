"""asyncjobs on a three-node RabbitMQ cluster: quorum queues on every node, the contract, a node lost.

Long form only (``AJ_CLUSTER_TESTS=1``): the cluster takes about 30 s to form on two cores.
One cluster serves the whole module; every test uses queues of its own.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from asyncjobs_rabbitmq import RabbitBroker

from asyncjobs.broker import Broker
from tests.cluster import contract_tests, long_form
from tests.cluster.failover import Tally, consume, produce, wait_drained
from tests.harness.rabbitmq import rabbitmq_harness
from tests.servers.rabbitmq import RabbitNode
from tests.servers.rabbitmq_cluster import RabbitCluster, rabbitmq_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.fault, pytest.mark.rabbitmq, long_form]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    with rabbitmq_cluster(3) as started:
        print(f"rabbitmq cluster of 3: {({k: round(v, 1) for k, v in started.took.items()})} s")
        yield started


@pytest.fixture
async def broker(cluster: RabbitCluster) -> AsyncIterator[Broker]:
    """The contract suite's broker: quorum queues, connected to the cluster's second node."""
    async with rabbitmq_harness(f"t{uuid.uuid4().hex[:12]}", url=cluster.nodes[1].url) as connected:
        yield connected


globals().update(contract_tests())


def url(node_url: str, ns: str) -> str:
    return f"{node_url}?queue_type=quorum&queue_prefix={ns}.&connection_name={ns}"


async def test_a_quorum_queue_declared_through_asyncjobs_has_a_member_on_every_node(cluster: RabbitCluster) -> None:
    ns = f"m{uuid.uuid4().hex[:8]}"
    broker = RabbitBroker(url(cluster.nodes[0].url, ns))
    await broker.connect()
    try:
        tally = Tally()
        await produce(broker, ["work"], 1, tally)
        assert len(tally.confirmed) == 1
        leader, members = cluster.quorum_members(f"{ns}.work")
        assert members == {node.name for node in cluster.nodes}
        assert leader in members
    finally:
        await broker.delete_queues("work")
        await broker.close()


@pytest.mark.timeout(300)
async def test_a_node_lost_under_load_loses_no_confirmed_job_and_the_others_carry_on(cluster: RabbitCluster) -> None:
    """Kill the node holding the queue's leader, start it again, then stop another node: lost = 0."""
    ns = f"f{uuid.uuid4().hex[:8]}"
    queue = f"{ns}.work"
    brokers = [RabbitBroker(url(node.url, ns)) for node in cluster.nodes]
    for each in brokers:
        await each.connect()
    tally = Tally()
    stopped: list[RabbitNode] = []
    try:
        await produce(brokers[0], ["work"], 1, tally)  # declares the queue
        leader = cluster.leader_of(queue)
        others = [node for node in cluster.nodes if node is not leader]
        producer_node, second = others
        producer = brokers[cluster.nodes.index(producer_node)]
        stop = anyio.Event()
        events: list[str] = []
        async with anyio.create_task_group() as tg:
            for node, each in zip(cluster.nodes, brokers, strict=True):
                tg.start_soon(consume, node.name.split("@")[0][-1], each, ["work"], tally, stop)
            enough = anyio.Event()
            async with anyio.create_task_group() as load:
                load.start_soon(produce, producer, ["work"], 20_000, tally, 0.004, enough)
                await anyio.sleep(1.5)
                began = time.monotonic()
                await anyio.to_thread.run_sync(leader.kill)
                events.append(f"leader {leader.name} killed; done so far {len(tally.done)}")
                await anyio.sleep(2.0)
                new_leader = await anyio.to_thread.run_sync(cluster.leader_of, queue)
                events.append(f"new leader {new_leader.name} within {time.monotonic() - began:.1f} s")
                took = await anyio.to_thread.run_sync(leader.start)
                events.append(f"{leader.name} started again in {took:.1f} s")
                await anyio.sleep(1.0)
                stopped.append(second)
                took = await anyio.to_thread.run_sync(second.stop)
                events.append(f"{second.name} stopped in {took:.1f} s; done so far {len(tally.done)}")
                await anyio.sleep(3.0)  # the load goes on with one node of three down
                enough.set()
            events.append(f"load over: {len(tally.confirmed)} confirmed")
            drained = await wait_drained(tally, 60)
            events.append(f"drained {drained:.1f} s after the load")
            stop.set()
        print("\n".join(events) + "\n" + tally.summary())
        assert len(tally.confirmed) >= 1000, tally.summary()
        assert not tally.lost, f"{len(tally.lost)} confirmed jobs lost: {tally.summary()}"
        surviving = producer_node.name.split("@")[0][-1]
        assert tally.done_by[surviving] > 0, "the consumer on the surviving node carried on"
    finally:
        for node in stopped:  # the cluster is whole again for the next test
            await anyio.to_thread.run_sync(node.start)
        for each in brokers:
            with contextlib.suppress(Exception):
                await each.delete_queues("work")
            await each.close()
