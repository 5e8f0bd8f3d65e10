"""``asyncjobs dedupe show KEY``: a key's record and history from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from asyncjobs.dedupe.redis import RedisDedupeStore
from tests.dedupe.conftest import REDIS_URL
from tests.harness import require_server

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncjobs.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**{k: v for k, v in os.environ.items() if k != "ASYNCJOBS_DEDUPE_URL"}, "COLUMNS": "200"},
    )


async def test_dedupe_show_prints_the_record_and_its_history() -> None:
    require_server("redis")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    store = RedisDedupeStore.from_url(REDIS_URL, prefix=prefix)
    try:
        await store.claim("invoice-7", "worker-a:1", lease_seconds=30, ttl=600, job_id="job-1")
        await store.release("invoice-7", "worker-a:1", 600, error="ConnectionError: down")
        await store.claim("invoice-7", "worker-b:9", lease_seconds=30, ttl=600, job_id="job-1", attempt=2)
        await store.complete("invoice-7", "worker-b:9", 600)
        shown = cli("dedupe", "show", "invoice-7", "--store", REDIS_URL, "--prefix", prefix)
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout
        assert "key 'invoice-7': done" in out
        for text in ("claimed", "retrying", "ConnectionError: down", "worker-a:1", "worker-b:9", "job-1"):
            assert text in out
        as_json = cli("dedupe", "show", "invoice-7", "--store", REDIS_URL, "--prefix", prefix, "--json")
        assert '"status": "done"' in as_json.stdout
        missing = cli("dedupe", "show", "nope", "--store", REDIS_URL, "--prefix", prefix)
        assert missing.returncode == 1
        assert "no record of key 'nope'" in missing.stderr
    finally:
        await store.delete("invoice-7")
        await store.close()


def test_dedupe_show_without_a_store_is_a_usage_error() -> None:
    result = cli("dedupe", "show", "k")
    assert result.returncode == 2
    assert "name the store" in result.stderr


async def test_dedupe_show_on_postgresql_creates_no_table() -> None:
    require_server("postgres")
    import psycopg

    from tests.dedupe.conftest import POSTGRES_URL

    prefix = f"ro{uuid.uuid4().hex[:10]}"
    done = cli("dedupe", "show", "some-key", "--store", POSTGRES_URL, "--prefix", prefix)
    assert done.returncode == 1
    assert "no record of key 'some-key'" in done.stderr
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        cur = await conn.execute("SELECT to_regclass(%s)", (f"{prefix}_dedupe",))
        assert (await cur.fetchone()) == (None,)
