"""A producer process for the clock-skew scenario: ``skew_producer URL TAG COUNT DELAY``.

Enqueues ``COUNT`` ``ledger.noop`` jobs with ``delay=DELAY`` (keys ``TAG-late-N``) and ``COUNT``
``ledger.retry_once`` jobs (keys ``TAG-retry-N``, retry after ``DELAY``), then prints the real wall
time of the enqueue as JSON. Run under ``skewed.py`` to give it a wrong clock.
"""

from __future__ import annotations

import json
import sys
import time

import anyio
import ledger_app

from asyncjobs.task import Task


async def main(url: str, tag: str, count: int, delay: float) -> None:
    producer = ledger_app.App(url, enqueue_guard=None)
    for spec in ledger_app.app.tasks.values():
        producer.tasks[spec.name] = spec
    async with producer:
        late = Task(producer, producer.tasks["ledger.noop"]).options(delay=delay)
        retry = Task(producer, producer.tasks["ledger.retry_once"])
        real = getattr(time, "unskewed_time", time.time)
        at = real()
        await producer.enqueue_many(late, [((f"{tag}-late-{i}",), {}) for i in range(count)])
        await producer.enqueue_many(retry, [((f"{tag}-retry-{i}", delay), {}) for i in range(count)])
        print(json.dumps({"enqueued_at": at, "clock_offset": time.time() - real()}), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
