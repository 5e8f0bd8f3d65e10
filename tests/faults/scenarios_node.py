"""Scenario 10: a RabbitMQ node of the test's own, killed (SIGKILL of its beam) and started again on
its data directory while workers run. Quorum queues and publisher confirms: nothing confirmed is
lost; the workers reconnect by themselves, with no restart of their own.

On redis:// the same fault is scenario 6 (a private redis-server with AOF, restarted), so this
one runs on amqp:// only.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from tests.faults.harness import Report, drained, enqueue, keys_of, rand_between, scenario_env
from tests.faults.scenarios import judge_broker_faults


async def node_restart(broker: str, workdir: Path, long: bool) -> Report:
    """The scenario (see the module's docstring); ``broker`` must be ``amqp``."""
    from tests.servers.rabbitmq import rabbitmq_node

    if broker != "amqp":
        raise ValueError("the node-restart scenario is RabbitMQ's: redis:// restarts are scenario 'faults'")
    total, restarts = (3000, 3) if long else (600, 1)
    report = Report("node_restart", broker)
    began = time.monotonic()
    opts = ("-c", "6", "--lease", "3", "--drain", "2")
    with rabbitmq_node() as node:
        async with scenario_env(broker, "node", workdir, node.url) as (producer, db, fleet):
            keys = keys_of(total, "n")
            ids = await enqueue(producer, "ledger.nap", [(k, rand_between(0.02, 0.1)) for k in keys])
            id_key = dict(zip(ids, keys, strict=True))
            procs = [fleet.spawn(*opts) for _ in range(2)]
            for proc in procs:
                await proc.ready()
            windows: list[tuple[float, float]] = []
            for i in range(restarts):
                await db.wait_finished(total * (i + 1) // (restarts + 2), 60)
                at = time.time()
                took = await anyio.to_thread.run_sync(lambda: node.restart(hard=True))
                report.notes.append(f"node killed and started again in {took:.1f}s")
                windows.append((at, time.time()))
            await db.wait_finished(total, 120)
            await drained(producer, 30)
            report.extra = {"alive_after_restarts": sum(p.alive() for p in procs), "restarts": restarts}
            await judge_broker_faults(report, producer, db, fleet, keys, id_key, windows)
    report.seconds = round(time.monotonic() - began, 1)
    return report
