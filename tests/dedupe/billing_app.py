"""A billing app for the crash test: charging an invoice is a side effect that must happen once.

Configured by environment (the test starts workers on it as real processes):
``BILLING_STORE`` (``postgres``: the charge and its key commit in one transaction; ``redis``: the
key lives in Redis), ``BILLING_CHARGES`` (the charges table), ``BILLING_DEDUPE`` (dedupe table or
Redis prefix) and ``BILLING_CRASH_MARKER`` (a file: the first worker to charge creates it and
kills itself with SIGKILL before the broker hears of the ack).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from asyncjobs import App, CallNext, Job, Outcome
from asyncjobs.dedupe import DedupeStore
from asyncjobs.dedupe.postgres import PostgresDedupeStore
from asyncjobs.dedupe.redis import RedisDedupeStore

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
KIND = os.environ.get("BILLING_STORE", "postgres")
CHARGES = os.environ.get("BILLING_CHARGES", "charges")
MARKER = Path(os.environ.get("BILLING_CRASH_MARKER", "/nonexistent/marker"))


def crash_once() -> None:
    """Die like a power cut the first time (SIGKILL: no cleanup, no ack, no release)."""
    if not MARKER.exists():
        MARKER.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


class CrashAfterHandler:
    """Outside dedupe: the handler ran and its key is recorded done, then the worker dies before acking."""

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        outcome = await call_next(job)
        crash_once()
        return outcome


store: DedupeStore
if KIND == "postgres":
    store = PostgresDedupeStore(POSTGRES_URL, table=os.environ.get("BILLING_DEDUPE", "billing_dedupe"))
else:
    store = RedisDedupeStore.from_url(REDIS_URL, prefix=os.environ.get("BILLING_DEDUPE", "billing"))
app = App(dedupe=store, middleware=[] if KIND == "postgres" else [CrashAfterHandler()])


@app.task(name="billing.charge", timeout=10)
async def charge(invoice: str, cents: int) -> None:
    """Charge an invoice once."""
    query: Any = f'INSERT INTO "{CHARGES}" (invoice, cents) VALUES (%s, %s)'
    if isinstance(store, PostgresDedupeStore):
        async with store.transaction() as conn:  # the charge and the key commit together
            await conn.execute(query, (invoice, cents))
        crash_once()  # committed, not acked
    else:
        import psycopg

        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            await conn.execute(query, (invoice, cents))
