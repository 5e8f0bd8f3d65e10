"""Scenario 9, the soak: many jobs with failures, timeouts and delays across 4 workers, with a kill -9
and a SIGTERM now and then. Every job must end done or dead-lettered as its kind says.

The mix (``ledger.soak(key, kind)``): ``ok`` runs once; ``late`` runs once after a delay of up to
3 s; ``flaky`` raises on its first attempt and ``slow`` runs past its 3 s timeout on its first
attempt, so each is done on its second; ``perm`` raises ``PermanentError`` and is dead-lettered at
once. Long form: 100,000 jobs, bounded at 15 minutes; short form (CI): 2,500 jobs.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import anyio

from asyncjobs.envelope import peek_id
from asyncjobs.task import Task
from tests.faults.harness import Report, drained, keys_of, scenario_env, tally
from tests.faults.scenarios import stop_all

MIX = (("ok", 0.80), ("late", 0.10), ("flaky", 0.05), ("slow", 0.01), ("perm", 0.04))
RUNS = {"ok": 1, "late": 1, "flaky": 2, "slow": 2, "perm": 1}  # executions without faults


def kind_of(key: str) -> str:
    return key.split("-", 1)[0]


async def soak(broker: str, workdir: Path, long: bool) -> Report:
    """The soak (see the module's docstring)."""
    total, bound, every = (100_000, 900.0, (5.0, 10.0)) if long else (2500, 150.0, (0.4, 0.8))
    report = Report("soak", broker)
    began = time.monotonic()
    opts = ("-c", "10", "--lease", "3", "--drain", "3")
    async with scenario_env(broker, "soak", workdir) as (producer, db, fleet):
        rng = random.Random(7)
        keys = [f"{kind}-{key}" for key in keys_of(total, "") for kind in rng.choices(*zip(*MIX, strict=True), k=1)]
        handle = Task(producer, producer.tasks["ledger.soak"])
        id_key: dict[str, str] = {}
        now_keys = [k for k in keys if kind_of(k) != "late"]
        for i in range(0, len(now_keys), 1000):
            chunk = now_keys[i : i + 1000]
            refs = await producer.enqueue_many(handle, [((k, kind_of(k)), {}) for k in chunk])
            id_key.update(zip((r.id for r in refs), chunk, strict=True))
        late_keys = [k for k in keys if kind_of(k) == "late"]
        for i in range(0, len(late_keys), 100):
            chunk = late_keys[i : i + 100]
            refs = await producer.enqueue_many(
                handle.options(delay=rng.uniform(0.1, 3.0)), [((k, "late"), {}) for k in chunk]
            )
            id_key.update(zip((r.id for r in refs), chunk, strict=True))
        perm = {k for k in keys if kind_of(k) == "perm"}
        live = [fleet.spawn(*opts) for _ in range(4)]
        for proc in live:
            await proc.ready()
        killed: set[int] = set()
        faults: Counter[str] = Counter()
        deadline = time.monotonic() + bound
        next_fault = time.monotonic() + rng.uniform(*every)
        quiet = 0  # consecutive looks at an empty queue: a count over several queues (RabbitMQ's delay
        # buckets) can miss a message that moves between two of them, so one look is not enough
        while time.monotonic() < deadline:
            await anyio.sleep(0.5)
            stats = await producer.broker.stats("default")
            quiet = quiet + 1 if stats.ready + stats.scheduled + stats.in_flight == 0 else 0
            if quiet >= 3 and stats.dead >= len(perm):
                break
            if time.monotonic() < next_fault or faults.total() >= (40 if long else 4):
                continue
            next_fault = time.monotonic() + rng.uniform(*every)
            victim = rng.choice(live)
            live.remove(victim)
            if faults.total() % 2 == 0:
                killed.add(victim.pid)
                victim.kill()
                faults["kill -9"] += 1
            else:
                victim.signal(signal.SIGTERM)
                took = await victim.wait_exit(3 + 10)
                faults["SIGTERM"] += 1
                if took is None:
                    report.notes.append(f"worker {victim.pid} still running 13s after SIGTERM")
                    victim.kill()
                else:
                    report.exit_seconds.append(round(took, 2))
            fresh = fleet.spawn(*opts)
            live.append(fresh)
            await fresh.ready()
        stats = await drained(producer, 30)
        await stop_all(fleet, report, 3)
        rows = await db.rows()
        letters = await producer.broker.list_dead("default", limit=total + 1000)
        dead = {id_key.get(peek_id(d.body) or d.id, d.id) for d in letters}
        odd_letters = [
            (d.id, peek_id(d.body), d.info.reason, d.info.error_message[:300], len(d.info.history))
            for d in letters
            if kind_of(id_key.get(peek_id(d.body) or d.id, d.id)) != "perm"
        ]
        per = tally(report, set(keys), rows, dead)
        # Done means the run that should succeed finished: flaky and slow ones on their second attempt.
        done = {k for k in keys if any(r.ended is not None and r.attempt >= RUNS[kind_of(k)] for r in per[k])}
        done -= perm
        report.done = len(done)
        report.dead = len(dead & set(keys))
        report.lost = len(set(keys) - done - dead)
        extra_runs = {k: len(per[k]) - RUNS[kind_of(k)] for k in keys if len(per[k]) > RUNS[kind_of(k)]}
        report.duplicates = sum(extra_runs.values())
        report.allowed_duplicates = sum(n for k, n in extra_runs.items() if any(r.pid in killed for r in per[k]))
        report.samples = [
            f"{k}: " + "; ".join(f"pid {r.pid} attempt {r.attempt} dc {r.delivery_count}" for r in per[k])
            for k in sorted(k for k in extra_runs if not any(r.pid in killed for r in per[k]))[:5]
        ]
        lost = sorted(set(keys) - done - dead)
        report.extra = {
            "lost_keys": [
                f"{k}: " + "; ".join(f"pid {r.pid} attempt {r.attempt} dc {r.delivery_count} ended {r.ended is not None}" for r in per[k])
                for k in lost[:5]
            ],
            "killed": sorted(killed),
            "odd_dead_letters": odd_letters[:10],
            "dead_letters": len(letters),
            "faults": dict(faults),
            "mix": dict(Counter(kind_of(k) for k in keys)),
            "dead_not_perm": sorted(dead - perm)[:10],
            "perm_not_dead": len(perm - dead),
            "queue_at_end": str(stats),
            "jobs_per_second": round(total / max(time.monotonic() - began, 1e-9)),
        }
    report.seconds = round(time.monotonic() - began, 1)
    return report
