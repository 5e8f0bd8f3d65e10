"""The fault scenarios, each a coroutine ``(broker, workdir, long) -> Report`` run by the tests and by
``python -m tests.faults``. A scenario only measures; the tests decide what must hold."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from tests.faults.harness import (
    AMQP_URL as AMQP_BASE,
)
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
        statuses: list[int | None] = []
        for i in range(rounds):
            proc = fleet.spawn("-c", "20", "--drain", str(drain), "--lease", "10")
            await proc.ready()
            before = await db.count()
            target = before + random.randint(per_round // 4, per_round)
            deadline = time.monotonic() + 60
            while await db.count() < target and time.monotonic() < deadline and proc.alive():  # noqa: ASYNC110
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
            statuses.append(proc.popen.returncode)
            if proc.popen.returncode != 0:
                report.notes.append(
                    f"round {i}{' (double SIGTERM)' if double else ''}: exit status {proc.popen.returncode}"
                )
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
        report.extra = {
            "double_exit": double_exit,
            "drain": drain,
            "statuses": statuses,
            "released": sum(stat(stats_line(p), "released") for p in fleet.procs),
            "pids": [p.pid for p in fleet.procs],
            "signals": {p.pid: [(n, round(t - began, 3)) for n, t in p.signalled] for p in fleet.procs},
        }
    report.seconds = round(time.monotonic() - began, 1)
    return report


def stats_line(proc) -> str:  # type: ignore[no-untyped-def]
    """The ``worker stopped: ...`` counts a worker logged (empty if it did not stop cleanly)."""
    for line in proc.text().splitlines()[::-1]:
        if "worker stopped:" in line:
            return line.split("worker stopped:", 1)[1].strip()
    return ""


def stat(line: str, name: str) -> int:
    for part in line.split(", "):
        if part.startswith(name + " "):
            return int(part.rsplit(" ", 1)[1])
    return 0


async def stop_all(fleet, report: Report, drain: float) -> None:  # type: ignore[no-untyped-def]
    for proc in fleet.procs:
        if proc.alive():
            proc.signal(signal.SIGTERM)
    for proc in fleet.procs:
        if proc.signalled and proc.signalled[-1][0] == "SIGTERM" and proc.exited_at is None:
            took = await proc.wait_exit(drain + 10)
            if took is None:
                report.notes.append(f"worker {proc.pid} still running {drain + 10}s after SIGTERM")
                proc.kill()


async def kill9_storm(broker: str, workdir: Path, long: bool) -> Report:
    """Scenario 2: 3 workers on jobs of 20-300 ms; one SIGKILLed every ~2.5 s and replaced.

    Half plain ledger jobs, a share keyed ``ledger.charge`` jobs whose side effect commits with
    its dedupe key. Nothing lost; duplicates counted (excused when the key ran on a killed worker);
    committed side effects per charge key exactly 1.
    """
    plain_n, charge_n, kills = (6000, 1500, 25) if long else (900, 250, 4)
    report = Report("kill9_storm", broker)
    began = time.monotonic()
    opts = ("-c", "5", "--lease", "2", "--drain", "2")
    async with scenario_env(broker, "kill", workdir) as (producer, db, fleet):
        plain = keys_of(plain_n, "p")
        charges = keys_of(charge_n, "c")
        ids = await enqueue(producer, "ledger.nap", [(k, rand_between(0.02, 0.3)) for k in plain])
        ids += await enqueue(producer, "ledger.charge", [(k, rand_between(0.02, 0.3)) for k in charges], keyed=True)
        id_key = dict(zip(ids, plain + charges, strict=True))
        live = [fleet.spawn(*opts) for _ in range(3)]
        for proc in live:
            await proc.ready()
        killed: list[tuple[int, float]] = []
        for _ in range(kills):
            await anyio.sleep(random.uniform(1.5, 3.0))
            victim = random.choice(live)
            killed.append((victim.pid, time.time()))
            victim.kill()
            live.remove(victim)
            fresh = fleet.spawn(*opts)
            live.append(fresh)
            await fresh.ready()
        await db.wait_finished(plain_n + charge_n, 120)
        await drained(producer, 30)
        await stop_all(fleet, report, 2)
        rows = await db.rows()
        per = tally(report, set(plain + charges), rows, await dead_keys(producer, id_key))
        dead_pids = {pid for pid, _ in killed}
        excused = {k for k, rs in per.items() if any(r.pid in dead_pids for r in rs[:-1])}
        report.allowed_duplicates = sum(len(per[k]) - 1 for k in excused if len(per[k]) > 1)
        for pid, at in killed:
            report.recovery_seconds += recovery_after_kill(per, pid, at)
        side = await db.side_effects()
        counts: dict[int, int] = {}
        for k in charges:
            counts[side.get(k, 0)] = counts.get(side.get(k, 0), 0) + 1
        report.side_effects_per_key = counts
        report.extra = {
            "kills": len(killed),
            "charge_keys": charge_n,
            "in_flight_at_kill": len(report.recovery_seconds),
        }
    report.seconds = round(time.monotonic() - began, 1)
    return report


async def rolling_deploy(broker: str, workdir: Path, long: bool) -> Report:
    """Scenario 3: jobs of 0.5-2 s enqueued at a steady rate; each worker in turn gets SIGTERM after
    its replacement is up. Every exit within drain + 5 s; no duplicate execution at all."""
    replacements, rate = (20, 20.0) if long else (4, 12.0)
    drain = 4.0
    report = Report("rolling_deploy", broker)
    began = time.monotonic()
    opts = ("-c", "10", "--lease", "10", "--drain", str(drain))
    async with scenario_env(broker, "roll", workdir) as (producer, db, fleet):
        keys: list[str] = []
        id_key: dict[str, str] = {}
        stop = anyio.Event()

        async def produce() -> None:
            n = 0
            while not stop.is_set():
                batch = [(f"r{n + i:06d}", rand_between(0.5, 2.0)) for i in range(int(rate // 4))]
                n += len(batch)
                for job_id, (k, _) in zip(await enqueue(producer, "ledger.nap", batch), batch, strict=True):
                    id_key[job_id] = k
                    keys.append(k)
                await anyio.sleep(0.25)

        live = [fleet.spawn(*opts) for _ in range(2)]
        for proc in live:
            await proc.ready()
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            for _ in range(replacements):
                await anyio.sleep(random.uniform(1.5, 3.0))
                fresh = fleet.spawn(*opts)
                await fresh.ready()
                old = live.pop(0)
                live.append(fresh)
                old.signal(signal.SIGTERM)
                took = await old.wait_exit(drain + 10)
                report.exit_seconds.append(round(took, 2) if took is not None else float("inf"))
                if took is None:
                    old.kill()
                elif old.popen.returncode != 0:
                    report.notes.append(f"worker {old.pid} exit status {old.popen.returncode}")
            stop.set()
        await db.wait_finished(len(keys), 60)
        await drained(producer, 20)
        await stop_all(fleet, report, drain)
        tally(report, set(keys), await db.rows(), await dead_keys(producer, id_key))
        report.extra = {"stats": [stats_line(p) for p in fleet.procs], "drain": drain}
    report.seconds = round(time.monotonic() - began, 1)
    return report


async def poison_pill(broker: str, workdir: Path, long: bool) -> Report:
    """Scenario 4: a job that ``os._exit``s its worker every time, among normal jobs; the test restarts
    the worker whenever it dies. The pill ends in the dead letters after max_attempts (3) runs; no
    normal job lost; normal jobs run twice only if they were in the crashed worker's hands."""
    normal_n = 1500 if long else 240
    report = Report("poison_pill", broker)
    began = time.monotonic()
    opts = ("-c", "4", "--lease", "1.5", "--drain", "1")
    async with scenario_env(broker, "pill", workdir) as (producer, db, fleet):
        normal = keys_of(normal_n, "n")
        ids = await enqueue(producer, "ledger.nap", [(k, 0.05) for k in normal[: normal_n // 2]])
        [pill_id] = await enqueue(producer, "ledger.pill", [("PILL",)])
        ids += await enqueue(producer, "ledger.nap", [(k, 0.05) for k in normal[normal_n // 2 :]])
        id_key = dict(zip(ids, normal, strict=True)) | {pill_id: "PILL"}
        crashed: list[int] = []
        deadline = time.monotonic() + 90
        proc = fleet.spawn(*opts)
        pill_dead = None
        while time.monotonic() < deadline:
            await anyio.sleep(0.1)
            if not proc.alive():
                crashed.append(proc.pid)
                if proc.popen.returncode != 3:
                    report.notes.append(f"worker {proc.pid} exit status {proc.popen.returncode}")
                proc = fleet.spawn(*opts)
                continue
            if pill_dead is None:
                pill_dead = await producer.broker.get_dead("default", pill_id)
            if pill_dead is not None and await db.finished() >= normal_n:
                break
        await drained(producer, 20)
        await stop_all(fleet, report, 1)
        rows = await db.rows()
        per = tally(report, {*normal, "PILL"}, rows, await dead_keys(producer, id_key))
        collateral = {k for k in normal if any(r.pid in crashed for r in per[k][:-1])}
        report.allowed_duplicates = sum(len(per[k]) - 1 for k in collateral) + max(0, len(per["PILL"]) - 1)
        report.extra = {
            "crashes": len(crashed),
            "pill_runs": len(per["PILL"]),
            "pill_attempts": [r.attempt for r in per["PILL"]],
            "pill_dead_reason": pill_dead.info.reason if pill_dead else None,
            "collateral_keys": len(collateral),
        }
    report.seconds = round(time.monotonic() - began, 1)
    return report


async def paused_worker(broker: str, workdir: Path, long: bool) -> Report:
    """Scenario 5: SIGSTOP a worker for 3 x its lease, SIGCONT it. Its jobs run elsewhere; resumed, it
    acks none whose lease it lost (ledger, dead letters, the worker's own counts)."""
    lease = 2.0
    report = Report("paused_worker", broker)
    began = time.monotonic()
    # RabbitMQ has no per-message lease: a stopped process keeps its deliveries while its connection
    # lives, so the paused worker's connection has a 1 s AMQP heartbeat (the server drops it).
    query = {"heartbeat": "1"} if broker == "amqp" else {}
    opts = ("-c", "4", "--prefetch", "4", "--lease", str(lease), "--drain", "2")
    async with scenario_env(broker, "pause", workdir) as (producer, db, fleet):
        long_keys = keys_of(4, "L")
        ids = await enqueue(producer, "ledger.nap", [(k, 3.0) for k in long_keys])
        short = keys_of(40, "s")
        a_url = fleet.url + "".join(f"&{k}={v}" for k, v in query.items())
        a = fleet.spawn(*opts, url=a_url)
        await a.ready()
        await wait_rows(db, 4, 10)
        ids += await enqueue(producer, "ledger.nap", [(k, 0.05) for k in short])
        id_key = dict(zip(ids, long_keys + short, strict=True))
        a.signal(signal.SIGSTOP)
        stopped_at = time.time()
        b = fleet.spawn(*opts)
        await b.ready()
        await anyio.sleep(3 * lease - (time.time() - stopped_at))
        a.signal(signal.SIGCONT)
        resumed_at = time.time()
        await db.wait_finished(len(long_keys) + len(short), 40)
        await drained(producer, 20)
        await anyio.sleep(lease)
        await stop_all(fleet, report, 2)
        rows = await db.rows()
        per = tally(report, set(long_keys + short), rows, await dead_keys(producer, id_key))
        a_rows = [r for r in rows if r.pid == a.pid]
        a_before = sum(1 for r in a_rows if r.ended is not None and r.ended < stopped_at)
        a_line, b_line = stats_line(a), stats_line(b)
        report.allowed_duplicates = (
            report.duplicates if all(any(r.pid == a.pid for r in per[k]) for k in per if len(per[k]) > 1) else 0
        )
        report.recovery_seconds = [
            round(min(r.started for r in per[k] if r.pid == b.pid) - stopped_at, 2)
            for k in long_keys
            if any(r.pid == b.pid for r in per[k])
        ]
        report.extra = {
            "a_stats": a_line,
            "b_stats": b_line,
            "a_done": stat(a_line, "done"),
            "a_finished_before_stop": a_before,
            "a_lease_lost": stat(a_line, "lease lost"),
            "b_lease_lost": stat(b_line, "lease lost"),
            "long_keys_run_by_b": len(report.recovery_seconds),
            "a_after_resume": sum(1 for r in a_rows if r.started > resumed_at),
        }
    report.seconds = round(time.monotonic() - began, 1)
    return report


async def broker_faults(broker: str, workdir: Path, long: bool) -> Report:
    """Scenario 6: redis: a private redis-server (AOF, fsync always) SIGKILLed and restarted twice during
    the run; amqp: every connection through a TCP proxy in front of the shared server cut, then
    stalled for 5 s. Workers recover by themselves; nothing acked (enqueued) is lost."""
    from tests.servers.proxy import tcp_proxy
    from tests.servers.redis import redis_server

    total = 3000 if long else 800
    faults = 6 if long else 2
    report = Report("broker_faults", broker)
    began = time.monotonic()
    opts = ("-c", "6", "--lease", "3", "--drain", "2")
    with contextlib.ExitStack() as stack:
        if broker == "redis":
            server = stack.enter_context(redis_server(aof=True))
            base, worker_base = server.url.split("?")[0], None
        else:
            proxy = stack.enter_context(tcp_proxy("127.0.0.1", 5672))
            base, worker_base = None, f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        async with scenario_env(broker, "brk", workdir, base) as (producer, db, fleet):
            keys = keys_of(total, "b")
            ids = await enqueue(producer, "ledger.nap", [(k, rand_between(0.02, 0.1)) for k in keys])
            id_key = dict(zip(ids, keys, strict=True))
            wurl = fleet.url if worker_base is None else fleet.url.replace(AMQP_BASE, worker_base)
            procs = [fleet.spawn(*opts, url=wurl) for _ in range(2)]
            for p in procs:
                await p.ready()
            done_at_fault = []
            windows: list[tuple[float, float]] = []  # wall time of each fault's start and end
            for i in range(faults):
                await db.wait_finished(total * (i + 1) // (faults + 2), 60)
                done_at_fault.append(await db.finished())
                at = time.time()
                if broker == "redis":
                    await anyio.to_thread.run_sync(server.restart, 1.0)
                    report.notes.append(f"redis restart {i}: down 1.0s, start {server.starts[-1]:.2f}s")
                elif i % 2 == 0:
                    report.notes.append(f"cut {proxy.cut()} connections")
                else:
                    proxy.stall(5.0)
                    report.notes.append("stalled every connection 5s")
                    await anyio.sleep(5.0)
                windows.append((at, time.time()))
            await db.wait_finished(total, 90)
            await drained(producer, 30)
            report.extra = {"alive_after_faults": sum(p.alive() for p in procs), "finished_at_faults": done_at_fault}
            await judge_broker_faults(report, producer, db, fleet, keys, id_key, windows)
    report.seconds = round(time.monotonic() - began, 1)
    return report


async def judge_broker_faults(  # type: ignore[no-untyped-def]
    report: Report, producer, db, fleet, keys: list[str], id_key: dict[str, str], windows: list[tuple[float, float]]
) -> None:
    """Stop the fleet and fill ``report`` after broker faults at ``windows`` (wall-time start, end).

    Recovery of a fault: from its start to the first job started after it ended. A duplicate is
    excused up to the lease losses the workers reported (a cut or a restart loses leases).
    """
    await stop_all(fleet, report, 2)
    report.exit_seconds = []
    rows = await db.rows()
    tally(report, set(keys), rows, await dead_keys(producer, id_key))
    for at, end in windows:
        later = [r.started for r in rows if r.started > end + 0.05]
        report.recovery_seconds.append(round(min(later) - at, 2) if later else float("inf"))
    report.extra["stats"] = [stats_line(p) for p in fleet.procs]
    report.extra["lease_lost"] = sum(stat(stats_line(p), "lease lost") for p in fleet.procs)
    report.allowed_duplicates = min(report.duplicates, report.extra["lease_lost"])
