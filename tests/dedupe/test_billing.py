"""The seeds' case: a billing job is processed, its worker is killed (SIGKILL) before the ack, the
job is redelivered to another worker, and the customer is charged exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest

from asyncjobs import App
from asyncjobs.dedupe import DedupeStore
from asyncjobs.dedupe.postgres import PostgresDedupeStore
from asyncjobs.dedupe.redis import RedisDedupeStore
from asyncjobs.envelope import Envelope
from tests.dedupe.conftest import POSTGRES_URL, REDIS_URL, drop_table
from tests.harness import require_server

pytestmark = [pytest.mark.anyio, pytest.mark.fault, pytest.mark.redis, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]
FAST = ["--lease", "1.5", "--concurrency", "2"]  # a killed worker's job returns after 1.5 s


def start_worker(broker_url: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncjobs.cli",
            "worker",
            "tests.dedupe.billing_app:app",
            "--broker",
            broker_url,
            *FAST,
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def count_charges(table: str) -> list[tuple[str, int]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        cur = await conn.execute(f'SELECT invoice, cents FROM "{table}"')  # type: ignore[arg-type]
        return [(str(r[0]), int(r[1])) for r in await cur.fetchall()]


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_billing_job_killed_before_its_ack_charges_once(kind: str, tmp_path: Path) -> None:
    require_server("redis")
    require_server("postgres")
    pytest.importorskip("asyncjobs_redis")
    import psycopg

    from tests.harness.redis import delete_prefix

    tag = uuid.uuid4().hex[:10]
    prefix, charges, dedupe = f"bill{tag}", f"charges_{tag}", f"dedupe_{tag}"
    broker_url = f"{REDIS_URL}?prefix={prefix}"
    env = {
        "BILLING_STORE": kind,
        "BILLING_CHARGES": charges,
        "BILLING_DEDUPE": dedupe,
        "BILLING_CRASH_MARKER": str(tmp_path / "crashed"),
    }
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f'CREATE TABLE "{charges}" (invoice text NOT NULL, cents integer NOT NULL)')  # type: ignore[arg-type]
    procs: list[subprocess.Popen[str]] = []
    try:
        producer = App(broker_url)
        async with producer:
            [ref] = await producer.publish([Envelope("billing.charge", ("invoice-42", 1999), key="invoice-42")])
            assert ref.accepted
            first = start_worker(broker_url, env)
            procs.append(first)
            rc = await anyio.to_thread.run_sync(lambda: first.wait(timeout=30))
            assert rc == -signal.SIGKILL, first.stdout.read() if first.stdout else ""
            assert (tmp_path / "crashed").exists()
            assert await count_charges(charges) == [("invoice-42", 1999)], "charged once before the crash"
            stats = await producer.broker.stats("default")
            assert stats.ready + stats.in_flight == 1, "the job was not acked"

            second = start_worker(broker_url, env)
            procs.append(second)
            deadline = time.monotonic() + 30
            while True:
                stats = await producer.broker.stats("default")
                if stats.ready + stats.in_flight + stats.scheduled == 0:
                    break
                assert time.monotonic() < deadline, "the redelivered job was never settled"
                await anyio.sleep(0.1)
            second.send_signal(signal.SIGTERM)
            output, _ = await anyio.to_thread.run_sync(lambda: second.communicate(timeout=30))
        assert second.returncode == 0, output
        assert "worker stopped: skipped 1" in output, output
        assert await count_charges(charges) == [("invoice-42", 1999)], "the redelivery did not charge again"
        assert stats.dead == 0
        store: DedupeStore = (
            PostgresDedupeStore(POSTGRES_URL, table=dedupe)
            if kind == "postgres"
            else RedisDedupeStore.from_url(REDIS_URL, prefix=dedupe)
        )
        record = await store.get("invoice-42")
        await store.close()
        assert record is not None
        assert record.status == "done"
        assert [e["event"] for e in record.history] == ["claimed", "done"], "the redelivery only read the key"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            await conn.execute(f'DROP TABLE IF EXISTS "{charges}"')  # type: ignore[arg-type]
        await drop_table(dedupe)
        await delete_prefix(prefix)
        await delete_keys(f"{dedupe}:*")


async def delete_keys(pattern: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=pattern)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
