"""A load that counts every job: producers enqueue confirmed jobs, consumers ack them, a fault strikes.

Used by the failover tests of both clusters. Consumers are plain broker consumers (fetch, then
ack) so the count is exact: a job is *confirmed* when ``enqueue`` returned ``True`` for it, and
*done* when an ``ack`` of it returned ``True``. ``lost`` is confirmed minus done, after a drain.
A consumer whose broker call fails (its node went away) waits a little and carries on: the
broker's client reconnects by itself, and a job whose ack failed comes back (a duplicate, counted).
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from asyncjobs.broker import Broker, OutgoingJob
from asyncjobs.clock import monotonic
from asyncjobs.errors import BrokerError


@dataclass
class Tally:
    """What a load did: jobs confirmed, acks that succeeded (by job id), failed broker calls."""

    confirmed: set[str] = field(default_factory=set)
    unconfirmed: int = 0
    done: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    done_by: Counter[str] = field(default_factory=Counter)

    @property
    def lost(self) -> set[str]:
        return self.confirmed - set(self.done)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.done.values() if n > 1)

    def summary(self) -> str:
        return (
            f"confirmed {len(self.confirmed)}, unconfirmed {self.unconfirmed}, done {len(self.done)}, "
            f"lost {len(self.lost)}, duplicates {self.duplicates}, errors {dict(self.errors)}, "
            f"done by consumer {dict(self.done_by)}"
        )


def body_of(job_id: str) -> bytes:
    return f'{{"v":1,"id":"{job_id}","task":"t"}}'.encode()


async def produce(
    broker: Broker, queues: Sequence[str], count: int, tally: Tally, pace: float = 0.002, until: anyio.Event | None = None
) -> None:
    """Enqueue up to ``count`` jobs one at a time over ``queues`` in turn (until ``until`` is set);
    record which were confirmed."""
    for i in range(count):
        if until is not None and until.is_set():
            break
        job_id = uuid.uuid4().hex
        try:
            [stored] = await broker.enqueue([OutgoingJob(job_id, queues[i % len(queues)], body_of(job_id))])
        except BrokerError as error:
            tally.unconfirmed += 1
            tally.errors[f"enqueue: {type(error).__name__}"] += 1
            await anyio.sleep(0.2)
            continue
        if stored:
            tally.confirmed.add(job_id)
        await anyio.sleep(pace)


async def consume(
    name: str, broker: Broker, queues: Sequence[str], tally: Tally, until: anyio.Event, lease: float = 10.0
) -> None:
    """Fetch and ack until ``until`` is set; reopen the consumer after a failed call."""
    consumer = None
    while not until.is_set():
        try:
            if consumer is None:
                consumer = await broker.consumer(list(queues), prefetch=20, lease_seconds=lease)
            got = await consumer.fetch(20, 0.3)
            if got:
                for delivery, ok in zip(got, await consumer.ack(got), strict=True):
                    if ok and delivery.job_id is not None:
                        tally.done[delivery.job_id] += 1
                        tally.done_by[name] += 1
        except BrokerError as error:
            tally.errors[f"{name}: {type(error).__name__}"] += 1
            if consumer is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2), contextlib.suppress(BrokerError):
                    await consumer.close()
            consumer = None
            await anyio.sleep(0.3)
    if consumer is not None:
        with anyio.move_on_after(5):
            await consumer.close()


async def wait_drained(tally: Tally, within: float) -> float:
    """Wait until every confirmed job is done (or ``within`` passes); the seconds it took."""
    began = monotonic()
    while tally.lost and monotonic() - began < within:  # noqa: ASYNC110 - a count, not an event
        await anyio.sleep(0.1)
    return monotonic() - began
