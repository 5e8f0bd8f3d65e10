"""memory:// hands the worker the producer's envelope instead of bytes to parse, when that changes nothing."""

from __future__ import annotations

import pytest

from asyncjobs.broker import OutgoingJob
from asyncjobs.envelope import Envelope, decode
from tests.runtime.helpers import memory_app

pytestmark = pytest.mark.anyio


async def test_a_job_with_plain_arguments_is_delivered_with_the_envelope_its_body_decodes_to() -> None:
    app = memory_app()

    @app.task(name="plain")
    async def plain(a: int, b: str, c: float | None = None) -> None:
        return None

    await plain.enqueue(1, "two", c=3.5)
    consumer = await app.broker.consumer(["default"], prefetch=10, lease_seconds=30)
    try:
        [delivery] = await consumer.fetch(1, 1.0)
        assert delivery.envelope is not None
        assert delivery.envelope == decode(delivery.body)
        assert delivery.envelope.args == (1, "two") and delivery.envelope.kwargs == {"c": 3.5}
    finally:
        await consumer.close()


@pytest.mark.parametrize("args", [([1, 2],), ({"k": "v"},), ((1, 2),)], ids=["list", "dict", "tuple"])
async def test_a_job_with_container_arguments_is_delivered_as_bytes_only(args: tuple[object, ...]) -> None:
    app = memory_app()

    @app.task(name="containers")
    async def containers(value: object) -> None:
        return None

    await containers.enqueue(*args)
    consumer = await app.broker.consumer(["default"], prefetch=10, lease_seconds=30)
    try:
        [delivery] = await consumer.fetch(1, 1.0)
        assert delivery.envelope is None, "a mutable (or reshaped) argument must come from the body"
    finally:
        await consumer.close()


async def test_a_raw_body_and_a_retried_job_are_parsed_from_their_bytes() -> None:
    app = memory_app()
    body = Envelope(task="t", id="raw1").encode()
    await app.broker.enqueue([OutgoingJob("raw1", "default", body)])
    consumer = await app.broker.consumer(["default"], prefetch=10, lease_seconds=30)
    try:
        [delivery] = await consumer.fetch(1, 1.0)
        assert delivery.envelope is None
        nxt = decode(body).next_attempt(None)
        assert await consumer.retry(delivery, nxt.encode(), None)
        [again] = await consumer.fetch(1, 1.0)
        assert again.envelope is None and decode(again.body).attempt == 2
    finally:
        await consumer.close()


async def test_a_redelivered_job_keeps_its_envelope_and_counts_the_delivery() -> None:
    app = memory_app()
    attempts: list[int] = []

    @app.task(name="counted")
    async def counted(n: int) -> None:
        return None

    await counted.enqueue(7)
    consumer = await app.broker.consumer(["default"], prefetch=10, lease_seconds=30)
    try:
        [first] = await consumer.fetch(1, 1.0)
        assert app.broker.expire_leases() == 1  # type: ignore[attr-defined]
        [second] = await consumer.fetch(1, 1.0)
        attempts = [first.delivery_count, second.delivery_count]
        assert second.envelope is first.envelope and second.envelope is not None
    finally:
        await consumer.close()
    assert attempts == [1, 2]
