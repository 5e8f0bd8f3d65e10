"""A bare consumer process for the reaping race: fetch and ack until the queue stays empty.

Usage: ``python redis_racer.py URL QUEUE START_AT IDLE_SECONDS``. Waits until wall time
``START_AT``, then fetches (7 at a time) and acks, printing ``JOB_ID DELIVERY_COUNT`` per job
and ``ok``/``stale`` per ack, until nothing came for ``IDLE_SECONDS``.
"""

from __future__ import annotations

import sys
import time

import anyio
from asyncjobs_redis import RedisBroker


async def race(url: str, queue: str, start_at: float, idle: float) -> None:
    """Fetch and ack everything, printing what was got."""
    broker = RedisBroker(url)
    await broker.connect()
    consumer = await broker.consumer([queue], prefetch=1000, lease_seconds=30)
    print("ready", flush=True)
    await anyio.sleep(max(start_at - time.time(), 0))
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < idle:
        got = await consumer.fetch(7, 0.2)
        if not got:
            continue
        quiet_since = time.monotonic()
        acked = await consumer.ack(got)
        for delivery, ok in zip(got, acked, strict=True):
            print(delivery.job_id, delivery.delivery_count, "ok" if ok else "stale", flush=True)
    await consumer.close()
    await broker.close()


if __name__ == "__main__":
    anyio.run(race, sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
