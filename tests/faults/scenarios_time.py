"""Scenarios about time: a handler that blocks the event loop, and hosts whose clocks disagree.

Each is a coroutine ``(broker, workdir, long) -> Report`` like those of ``scenarios.py``; a scenario
only measures, the tests decide what must hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anyio

from tests.faults.harness import HERE, Report, drained, enqueue, keys_of, scenario_env, tally, wait_rows
from tests.faults.scenarios import dead_keys, stat, stats_line, stop_all


async def blocked_loop(broker: str, workdir: Path, long: bool) -> Report:
    """Scenario 7: a keyed charge blocks its worker's event loop (``time.sleep``) for 3 x its lease, on
    its first delivery only, with heartbeats on; a second worker is up.

    On redis:// the lease ends while the loop is blocked: the other worker runs the job again, the
    blocked one, once its loop runs, finds the lease lost and does not ack, and the dedupe
    transaction keeps the side effect single. On amqp:// a delivery has no deadline while its
    connection lives, so the job runs once. On both, the stall is logged naming the job.
    """
    lease, block = 2.0, 6.0
    report = Report("blocked_loop", broker)
    began = time.monotonic()
    opts = ("-c", "4", "--lease", str(lease), "--drain", "2")
    async with scenario_env(broker, "block", workdir) as (producer, db, fleet):
        a = fleet.spawn(*opts)
        await a.ready()
        [blocker] = keys_of(1, "B")
        others = keys_of(40 if long else 20, "o")
        ids = await enqueue(producer, "ledger.block", [(blocker, block)], keyed=True)
        await wait_rows(db, 1, 10)  # the only worker, a, runs it and blocks
        b = fleet.spawn(*opts)
        await b.ready()
        ids += await enqueue(producer, "ledger.nap", [(k, 0.05) for k in others])
        id_key = dict(zip(ids, [blocker, *others], strict=True))
        await db.wait_finished(1 + len(others), 40)
        await drained(producer, 20)
        await anyio.sleep(lease)
        await stop_all(fleet, report, 2)
        rows = await db.rows()
        per = tally(report, {blocker, *others}, rows, await dead_keys(producer, id_key))
        stall_lines = [line for line in a.text().splitlines() if "event loop blocked" in line]
        a_line = stats_line(a)
        report.allowed_duplicates = max(0, len(per[blocker]) - 1)
        report.side_effects_per_key = dict((await db.side_effects()).most_common())  # type: ignore[arg-type]
        report.extra = {
            "blocker_runs": [((r.pid == a.pid and "a") or "b", r.attempt, r.ended is not None) for r in per[blocker]],
            "blocker_side_effects": (await db.side_effects()).get(blocker, 0),
            "stall_lines": stall_lines[:3],
            "stall_names_job": any(ids[0] in line for line in stall_lines),
            "a_stats": a_line,
            "b_stats": stats_line(b),
            "a_lease_lost": stat(a_line, "lease lost"),
            "others_run_twice": sum(1 for k in others if len(per[k]) > 1),
        }
    report.seconds = round(time.monotonic() - began, 1)
    return report


def _produce(fleet_env: dict[str, str], url: str, tag: str, skew: float, count: int, delay: float) -> dict[str, float]:
    command = [sys.executable, str(HERE / "skewed.py"), str(skew), "skew_producer", url, tag, str(count), str(delay)]
    done = subprocess.run(command, cwd=HERE, env=fleet_env, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise AssertionError(f"skewed producer failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def clock_skew(broker: str, workdir: Path, long: bool) -> Report:
    """Scenario 8: two producers whose wall clocks are 5 minutes ahead and behind, and two workers
    with the same wrong clocks, share a queue. Delayed jobs (``delay=3``) start about 3 s after
    their real enqueue time, and a retry asked for with ``delay=3`` runs about 3 s after the first
    attempt, whichever host wrote the due time and whichever reads it.
    """
    skew, delay = 300.0, 3.0
    count = 40 if long else 10
    report = Report("clock_skew", broker)
    began = time.monotonic()
    opts = ("-c", "8", "--lease", "5", "--drain", "2")
    async with scenario_env(broker, "skew", workdir) as (producer, db, fleet):
        workers = [fleet.spawn(*opts, skew=skew), fleet.spawn(*opts, skew=-skew)]
        for proc in workers:
            await proc.ready()
        enqueued: dict[str, dict[str, float]] = {}
        for tag, offset in (("ahead", skew), ("behind", -skew)):
            enqueued[tag] = await anyio.to_thread.run_sync(_produce, fleet.env, fleet.url, tag, offset, count, delay)
        keys = {f"{tag}-{kind}-{i}" for tag in enqueued for kind in ("late", "retry") for i in range(count)}
        deadline = time.monotonic() + 25  # the delays are 3 s: a job not run by then is late
        while time.monotonic() < deadline:
            rows = await db.rows()
            retried = {r.key for r in rows if "-retry-" in r.key and r.attempt >= 2 and r.ended is not None}
            late = {r.key for r in rows if "-late-" in r.key and r.ended is not None}
            if len(retried) + len(late) >= len(keys):
                break
            await anyio.sleep(0.2)
        await drained(producer, 10)
        await stop_all(fleet, report, 2)
        rows = await db.rows()
        per = tally(report, keys, rows, await dead_keys(producer, {}))
        late_waits: dict[str, list[float]] = {tag: [] for tag in enqueued}
        retry_gaps: dict[str, list[float]] = {tag: [] for tag in enqueued}
        for key in sorted(keys):
            runs, tag = per[key], key.split("-", 1)[0]
            if "-late-" in key:
                wait = runs[0].started - enqueued[tag]["enqueued_at"] if runs else float("inf")
                late_waits[tag].append(round(wait, 2))
            else:
                second = next((r for r in runs[1:] if r.attempt >= 2), None)
                gap = second.started - (runs[0].ended or runs[0].started) if second else float("inf")
                retry_gaps[tag].append(round(gap, 2))
        report.extra = {
            "skew": skew,
            "delay": delay,
            "clock_offsets": {tag: round(e["clock_offset"]) for tag, e in enqueued.items()},
            "late_waits": {tag: sorted(v) for tag, v in late_waits.items()},
            "retry_gaps": {tag: sorted(v) for tag, v in retry_gaps.items()},
            "retries_run": sum(1 for k in keys if "-retry-" in k and any(r.attempt >= 2 for r in per[k])),
            "count": count,
        }
    report.seconds = round(time.monotonic() - began, 1)
    return report
