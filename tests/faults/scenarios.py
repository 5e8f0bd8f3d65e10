"""The fault scenarios, each a coroutine ``(broker, workdir, long) -> Report`` run by the tests and by
``python -m tests.faults``. A scenario only measures; the tests decide what must hold."""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from tests.faults.harness import (
    Report,
    drained,
    enqueue,
    keys_of,
    rand_between,
    recovery_after_kill,
    scenario_env,
    tally,
    wait_rows,
)

Scenario = Callable[[str, Path, bool], Awaitable[Report]]


async def dead_keys(producer, ids_to_keys: dict[str, str]) -> set[str]:  # type: ignore[no-untyped-def]
    letters = await producer.broker.list_dead("default", limit=1000)
    found = set()
    for letter in letters:
        try:
            job_id = json.loads(letter.body).get("id", letter.id)
        except ValueError:
            job_id = letter.id
        found.add(ids_to_keys.get(job_id, ids_to_keys.get(letter.id, letter.id)))
    return found


async def sigterm_under_load(broker: str, workdir: Path, long: bool) -> Report:
    """Scenario 1: SIGTERM at a random moment of a busy no-op run, again and again, then drain the rest.

    Each round: a worker on the backlog, SIGTERM once it has run a random share of a slice, exit
    timed (must be within drain + 5 s). One round sends a second SIGTERM 0.1 s after the first
    (must exit within ~2 s). A last worker drains what is left. No-op jobs after a clean stop are
    never run twice.
    """
    rounds = 20 if long else 3
    total = 20000 if long else 3000
    drain = 3.0
    report = Report("sigterm_under_load", broker)
    began = time.monotonic()
    async with scenario_env(broker, "term", workdir) as (producer, db, fleet):
        keys = keys_of(total, "k")
        ids = await enqueue(producer, "ledger.noop", [(k,) for k in keys])
        id_key = dict(zip(ids, keys, strict=True))
        per_round = total // (rounds + 1)
        double_exit: list[float] = []
        for i in range(rounds):
            proc = fleet.spawn("-c", "20", "--drain", str(drain), "--lease", "10")
            await proc.ready()
            before = await db.count()
            target = before + random.randint(per_round // 4, per_round)
            deadline = time.monotonic() + 60
            while await db.count() < target and time.monotonic() < deadline and proc.alive():
                await anyio.sleep(0.01)
            double = i == rounds - 1
            proc.signal(signal.SIGTERM)
            if double:
                await anyio.sleep(0.1)
                proc.signal(signal.SIGTERM)
            took = await proc.wait_exit(drain + 5 + 5)
            if took is None:
                report.notes.append(f"round {i}: worker {proc.pid} still running {drain + 10}s after SIGTERM")
                proc.kill()
                took = float("inf")
            (double_exit if double else report.exit_seconds).append(round(took, 2))
            if proc.popen.returncode != 0:
                report.notes.append(f"round {i}: exit status {proc.popen.returncode}")
        last = fleet.spawn("-c", "20", "--drain", str(drain), "--lease", "10")
        await last.ready()
        await wait_rows(db, total, 120)
        stats = await drained(producer, 30)
        last.signal(signal.SIGTERM)
        took = await last.wait_exit(drain + 10)
        report.exit_seconds.append(round(took, 2) if took is not None else float("inf"))
        rows = await db.rows()
        tally(report, set(keys), rows, await dead_keys(producer, id_key))
        report.notes.append(f"double SIGTERM exit seconds: {double_exit}")
        report.notes.append(f"queue at the end: {stats}")
        report.extra = {"double_exit": double_exit, "drain": drain, "pids": [p.pid for p in fleet.procs],
                        "signals": {p.pid: [(n, round(t - began, 3)) for n, t in p.signalled] for p in fleet.procs}}
    report.seconds = round(time.monotonic() - began, 1)
    return report


SCENARIOS: dict[str, Scenario] = {
    "sigterm": sigterm_under_load,
}
