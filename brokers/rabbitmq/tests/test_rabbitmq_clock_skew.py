"""Due times cross hosts: a publisher whose clock is 5 minutes off neither holds a job 5 minutes nor runs it early.

``x-aj-due-ms`` is the publisher's wall clock (the producer's for a delayed enqueue, the retrying
worker's for a backoff) read by the consumer's clock. The delay is carried as well (``x-aj-delay-ms``);
minus the time spent in delay buckets (the server's ``x-death`` records) it bounds the wait.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import aio_pika
import anyio
import pytest
from asyncjobs_rabbitmq import RabbitBroker, wire

from asyncjobs.clock import monotonic, wall_time
from tests.harness import require_server
from tests.harness.rabbitmq import URL, rabbitmq_harness

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]
SKEW = 300.0  # the publisher's clock, minus the consumer's


def published(delay: float, skew: float, at: float) -> dict[str, object]:
    """The headers a publisher whose clock is ``skew`` seconds off writes at (true) time ``at``."""
    return {"x-aj-due-ms": int((at + skew + delay) * 1000), "x-aj-delay-ms": int(delay * 1000)}


def after_bucket(headers: dict[str, object], queue: str, ms: int, count: int = 1) -> dict[str, object]:
    return {**headers, "x-death": [{"queue": queue, "count": count, "reason": "expired"}]}


@pytest.mark.parametrize("skew", [SKEW, -SKEW, 0.0])
def test_a_delay_and_a_backoff_wait_as_long_as_asked_whatever_the_publisher_clock(skew: float) -> None:
    now = 1_000_000.0
    headers = published(10.0, skew, now)
    assert wire.remaining_of(headers, now) == pytest.approx(10.0, abs=0.01)
    back = after_bucket(headers, "app.jobs.delay.4000", 4000)
    assert wire.remaining_of(back, now + 4.0) == pytest.approx(6.0, abs=0.01)
    twice = after_bucket(headers, "app.jobs.delay.4000", 4000, count=2)
    assert wire.remaining_of(twice, now + 8.0) == pytest.approx(2.0, abs=0.01)


def test_without_the_delay_header_the_clock_decides_as_before() -> None:
    """What a publisher 5 minutes ahead did before (and still does without ``x-aj-delay-ms``): a 10 s delay waits 310 s."""
    now = 1_000_000.0
    ahead = {wire.DUE: int((now + SKEW + 10.0) * 1000)}
    assert wire.remaining_of(ahead, now) == pytest.approx(SKEW + 10.0, abs=0.01)
    behind = {wire.DUE: int((now - SKEW + 10.0) * 1000)}
    assert (wire.remaining_of(behind, now) or 0.0) < 0, "5 minutes behind: due at once"


def test_a_job_late_from_a_backlog_is_not_held_again_when_the_clocks_agree() -> None:
    now = 1_000_000.0
    headers = after_bucket(published(10.0, 0.0, now), "app.jobs.delay.4000", 4000)
    assert (wire.remaining_of(headers, now + 30.0) or 0.0) < 0, "20 s in a work queue after 4 s in a bucket: due"


def test_a_republished_message_carries_the_wait_left_on_its_own_clock() -> None:
    headers = after_bucket(published(10.0, SKEW, wall_time()), "app.jobs.delay.4000", 4000)
    carried = wire.carried_headers(headers, 0)
    assert carried is not None and "x-death" not in carried
    assert carried[wire.DELAY] == pytest.approx(6000, abs=50)
    assert carried[wire.DUE] == pytest.approx((wall_time() + 6.0) * 1000, abs=50)


@pytest.fixture
async def broker() -> AsyncIterator[RabbitBroker]:
    require_server("rabbitmq")
    async with rabbitmq_harness(f"k{uuid.uuid4().hex[:10]}", "quorum") as connected:
        assert isinstance(connected, RabbitBroker)
        yield connected


@pytest.mark.parametrize(
    ("skew", "delay"),
    [(SKEW, 1.5), (-SKEW, 3.0), (SKEW, 1.2), (-SKEW, 1.2)],
    ids=["ahead", "behind", "ahead-held-by-the-consumer", "behind-held-by-the-consumer"],
)
async def test_on_the_server_a_job_from_a_skewed_publisher_runs_when_its_delay_ends(
    broker: RabbitBroker, skew: float, delay: float
) -> None:
    bucket = await broker.topology.ensure_bucket("default", 1000)  # what the publisher's route picks for both
    job_id = uuid.uuid4().hex
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        message = aio_pika.Message(
            json.dumps({"v": 1, "id": job_id, "task": "t"}).encode(),
            message_id=job_id,
            headers=published(delay, skew, wall_time()),  # type: ignore[arg-type]
        )
        start = monotonic()
        await channel.default_exchange.publish(message, routing_key=bucket)
    finally:
        await connection.close()
    consumer = await broker.consumer(["default"], prefetch=5, lease_seconds=30)
    try:
        got = []
        with anyio.fail_after(15):
            while not got:
                got = await consumer.fetch(1, 0.2)
        waited = monotonic() - start
        assert [d.job_id for d in got] == [job_id]
        assert delay - 0.1 <= waited <= delay + 2.0, f"a {delay}s delay ran after {waited:.2f}s"
        assert await consumer.ack(got) == [True]
    finally:
        await consumer.close()
