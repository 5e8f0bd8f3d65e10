"""Processes, brokers and the ledger for the fault scenarios (see ``scenarios.py``).

Every worker is a real ``asyncjobs worker ledger_app:app`` process with this worktree's code on
its ``PYTHONPATH``, logging to a file of its own; it is signalled and killed by its PID only.
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLI = str(Path(sys.executable).with_name("asyncjobs"))
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
PYTHONPATH = os.pathsep.join(str(p) for p in (HERE, ROOT, ROOT / "brokers/redis", ROOT / "brokers/rabbitmq"))


def broker_url(kind: str, ns: str, base: str | None = None, **query: Any) -> str:
    """The URL of namespace ``ns`` on broker ``kind`` (``redis`` or ``amqp``)."""
    if kind == "redis":
        url = f"{base or REDIS_URL}?prefix={ns}"
    else:
        url = f"{base or AMQP_URL}?queue_type=quorum&queue_prefix={ns}.&connection_name={ns}"
    return url + "".join(f"&{k}={v}" for k, v in query.items())


async def cleanup_broker(kind: str, ns: str, base: str | None = None) -> None:
    if kind == "redis":
        from tests.harness.redis import delete_prefix

        with contextlib.suppress(Exception):
            await delete_prefix(ns, base or REDIS_URL)
    else:
        from asyncjobs_rabbitmq import RabbitBroker

        broker = RabbitBroker(broker_url(kind, ns, base))
        with contextlib.suppress(Exception):
            await broker.connect()
            await broker.delete_queues("default")
        with contextlib.suppress(Exception):
            await broker.close()


@dataclass
class Proc:
    """One worker process and what happened to it."""

    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)
    signalled: list[tuple[str, float]] = field(default_factory=list)
    exited_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        if self.popen.poll() is None:
            return True
        if self.exited_at is None:
            self.exited_at = time.monotonic()
        return False

    def signal(self, sig: signal.Signals) -> None:
        self.signalled.append((sig.name, time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    async def ready(self, within: float = 20.0) -> None:
        """Wait until the worker logged that it started (its consumer is up)."""
        with anyio.fail_after(within):
            while "worker started" not in self.text():
                if not self.alive():
                    raise AssertionError(f"worker {self.pid} exited {self.popen.returncode}:\n{self.text()[-3000:]}")
                await anyio.sleep(0.05)

    async def wait_exit(self, within: float) -> float | None:
        """Seconds from the first signal to the exit, or ``None`` if it still runs after ``within``."""
        deadline = time.monotonic() + within
        while self.alive():
            if time.monotonic() > deadline:
                return None
            await anyio.sleep(0.02)
        since = self.signalled[0][1] if self.signalled else self.started
        assert self.exited_at is not None
        return self.exited_at - since

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self.alive()


class Fleet:
    """The worker processes of one scenario; whatever still runs at the end is killed by PID."""

    def __init__(self, kind: str, ns: str, workdir: Path, env: dict[str, str], url: str) -> None:
        self.kind, self.ns, self.workdir, self.env, self.url = kind, ns, workdir, env, url
        self.procs: list[Proc] = []

    def spawn(self, *options: str, url: str | None = None, log_level: str = "INFO", skew: float = 0.0) -> Proc:
        """Start a worker; ``skew`` shifts its wall clock by that many seconds (``skewed.py``)."""
        log = self.workdir / f"worker-{len(self.procs)}.log"
        out = open(log, "wb")  # noqa: SIM115 - the child owns it
        cli = [sys.executable, str(HERE / "skewed.py"), str(skew), "asyncjobs.cli"] if skew else [CLI]
        popen = subprocess.Popen(
            [*cli, "--log-level", log_level, "worker", "ledger_app:app", "--broker", url or self.url, *options],
            cwd=HERE,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        proc = Proc(popen, log)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


@dataclass
class Row:
    key: str
    job_id: str
    task: str
    attempt: int
    delivery_count: int
    pid: int
    started: float
    ended: float | None


class LedgerDB:
    """The scenario's ledger tables (created at start, dropped at the end)."""

    def __init__(self, ns: str) -> None:
        self.ledger, self.side, self.dedupe = f"{ns}_ledger", f"{ns}_side", f"{ns}_dedupe"

    def env(self) -> dict[str, str]:
        return {"AJ_LEDGER": self.ledger, "AJ_SIDE": self.side, "AJ_DEDUPE": self.dedupe, "AJ_POSTGRES": POSTGRES_URL}

    async def create(self) -> None:
        import ledger_app  # noqa: F401 - checked importable by the caller

        ddl = (HERE / "ledger_app.py").read_text().split('DDL = """', 1)[1].split('"""', 1)[0]
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            await conn.execute(ddl.replace("{ledger}", self.ledger).replace("{side}", self.side))  # type: ignore[arg-type]

    async def drop(self) -> None:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            for table in (self.ledger, self.side, self.dedupe):
                await conn.execute(f'DROP TABLE IF EXISTS "{table}"')  # type: ignore[arg-type]

    async def count(self) -> int:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            cur = await conn.execute(f'SELECT count(*) FROM "{self.ledger}"')  # type: ignore[arg-type]
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def finished(self) -> int:
        """How many keys have a finished execution."""
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            cur = await conn.execute(f'SELECT count(DISTINCT job_key) FROM "{self.ledger}" WHERE ended IS NOT NULL')  # type: ignore[arg-type]
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def wait_finished(self, n: int, within: float) -> int:
        deadline = time.monotonic() + within
        while (got := await self.finished()) < n and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the ledger
            await anyio.sleep(0.1)
        return got

    async def rows(self) -> list[Row]:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            cur = await conn.execute(
                f'SELECT job_key, job_id, task, attempt, delivery_count, pid, started, ended FROM "{self.ledger}" ORDER BY n'  # type: ignore[arg-type]
            )
            return [Row(*r) for r in await cur.fetchall()]

    async def side_effects(self) -> Counter[str]:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            cur = await conn.execute(f'SELECT job_key FROM "{self.side}"')  # type: ignore[arg-type]
            return Counter(r[0] for r in await cur.fetchall())


@asynccontextmanager
async def scenario_env(
    kind: str, name: str, workdir: Path, base: str | None = None, **query: Any
) -> AsyncIterator[tuple[Any, LedgerDB, Fleet]]:
    """A namespace, a ledger, a producer app (connected) and a fleet; all cleaned up afterwards."""
    sys.path.insert(0, str(HERE))
    import ledger_app

    ns = f"f{name[:6]}{uuid.uuid4().hex[:8]}"
    db = LedgerDB(ns)
    for var, value in db.env().items():  # the producer process imports the same module
        os.environ[var] = value
    await db.create()
    url = broker_url(kind, ns, base, **query)
    # No enqueue-time dedupe: duplicates of keyed jobs meet the workers' dedupe layer, the same chain
    producer = ledger_app.App(url, enqueue_guard=None, middleware=ledger_app.app.middleware)
    for spec in ledger_app.app.tasks.values():
        producer.tasks[spec.name] = spec
    env = {**os.environ, **db.env(), "PYTHONPATH": PYTHONPATH, "PYTHONUNBUFFERED": "1"}
    env.pop("ASYNCJOBS_BROKER_URL", None)
    fleet = Fleet(kind, ns, workdir, env, url)
    try:
        await producer.broker.connect()
        yield producer, db, fleet
    finally:
        fleet.close()
        with contextlib.suppress(Exception):
            await producer.broker.close()
        await cleanup_broker(kind, ns, base)
        await db.drop()


async def enqueue(
    producer: Any, task: str, calls: list[tuple[Any, ...]], keyed: bool = False, chunk: int = 500
) -> list[str]:
    """Enqueue ``task`` once per argument tuple (first argument: the job key); the job ids."""
    spec = producer.tasks[task]
    from asyncjobs.task import Task

    handle = Task(producer, spec)
    ids: list[str] = []
    if keyed:
        for args in calls:
            ids.append((await handle.options(key=str(args[0])).enqueue(*args)).id)
        return ids
    for i in range(0, len(calls), chunk):
        refs = await producer.enqueue_many(handle, [(tuple(a), {}) for a in calls[i : i + chunk]])
        ids += [r.id for r in refs]
    return ids


async def drained(producer: Any, within: float, queue: str = "default") -> Any:
    """Wait until the queue has nothing ready, scheduled or in flight; its stats."""
    deadline = time.monotonic() + within
    while True:
        stats = await producer.broker.stats(queue)
        if stats.ready + stats.scheduled + stats.in_flight == 0 or time.monotonic() > deadline:
            return stats
        await anyio.sleep(0.2)


async def wait_rows(db: LedgerDB, at_least: int, within: float) -> int:
    deadline = time.monotonic() + within
    while (n := await db.count()) < at_least and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the ledger
        await anyio.sleep(0.05)
    return n


@dataclass
class Report:
    """The figures of one scenario run."""

    scenario: str
    broker: str
    enqueued: int = 0
    done: int = 0  # keys with a finished execution
    dead: int = 0
    lost: int = 0  # enqueued keys neither finished nor dead-lettered
    executions: int = 0
    duplicates: int = 0  # executions beyond the first, per key
    allowed_duplicates: int = 0  # of those, the ones the scenario's faults excuse (crash/lease loss)
    max_runs: int = 0
    side_effects_per_key: dict[int, int] = field(default_factory=dict)  # committed side effects -> keys
    exit_seconds: list[float] = field(default_factory=list)
    recovery_seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # a few duplicated keys: their executions
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tally(report: Report, keys: set[str], rows: list[Row], dead_keys: set[str]) -> dict[str, list[Row]]:
    """Fill the ledger figures of ``report``; returns the rows per key."""
    per: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        per[row.key].append(row)
    finished = {k for k, rs in per.items() if any(r.ended is not None for r in rs)}
    report.enqueued = len(keys)
    report.done = len(finished & keys)
    report.dead = len(dead_keys & keys)
    report.lost = len(keys - finished - dead_keys)
    report.executions = sum(len(per[k]) for k in keys)
    report.duplicates = sum(len(per[k]) - 1 for k in keys if len(per[k]) > 1)
    report.max_runs = max((len(per[k]) for k in keys), default=0)
    for k in sorted(k for k in keys if len(per[k]) > 1)[:5]:
        report.samples.append(
            f"{k}: "
            + "; ".join(
                f"pid {r.pid} attempt {r.attempt} dc {r.delivery_count} at {r.started:.3f}"
                f"{'' if r.ended else ' (unfinished)'}"
                for r in per[k]
            )
        )
    return per


def recovery_after_kill(per: dict[str, list[Row]], pid: int, killed_at_wall: float) -> list[float]:
    """For each job whose execution died with ``pid``: seconds from the kill to its next start."""
    out = []
    for rows in per.values():
        for i, row in enumerate(rows):
            if row.pid == pid and row.ended is None:
                later = [r.started for r in rows[i + 1 :] if r.pid != pid]
                if later:
                    out.append(round(later[0] - killed_at_wall, 2))
    return out


def keys_of(n: int, tag: str) -> list[str]:
    return [f"{tag}{i:06d}" for i in range(n)]


def rand_between(a: float, b: float) -> float:
    return round(random.uniform(a, b), 3)
