"""What a :class:`~asyncjobs.JobRef` does: read a job's status, wait for its result, cancel it."""

from __future__ import annotations

import inspect
import json
import math
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from asyncjobs.clock import monotonic, wall_time
from asyncjobs.errors import ConfigError, JobCancelledError, JobFailedError, NoResultStoreError, ResultTimeoutError
from asyncjobs.results.store import JobStatus, ResultStore, status_of

if TYPE_CHECKING:
    from asyncjobs.app import App
    from asyncjobs.envelope import Envelope

DEFAULT_KEEP = 3600.0
"""Seconds a result is kept when ``keep_result`` is left to its default and the handler returns a value."""


def default_keep(handler: Any) -> float:
    """``keep_result`` when the task does not say: on (an hour) for a handler annotated to return
    something other than ``None``, off for ``-> None`` and for a handler without a return annotation."""
    try:
        hint = typing.get_type_hints(inspect.unwrap(handler)).get("return", inspect.Signature.empty)
    except Exception:  # an annotation that does not resolve here
        hint = inspect.signature(handler).return_annotation
    if hint in (inspect.Signature.empty, None, type(None), "None"):
        return 0.0
    return DEFAULT_KEEP


def natural_store(app: App) -> ResultStore | None:
    """The result store that fits the app's broker: memory for ``memory://``, Redis for ``redis://``, else none."""
    scheme = urlsplit(app.broker_url).scheme.lower()
    if scheme == "memory":
        from asyncjobs.results.memory import MemoryResultStore

        return MemoryResultStore.named(urlsplit(app.broker_url).netloc or "default")
    if scheme in ("redis", "rediss", "unix"):
        from asyncjobs.results.redis import RedisResultStore

        return RedisResultStore.from_url(app.broker_url, prefix=getattr(app.broker, "prefix", "asyncjobs"))
    return None


def require_store(app: App) -> ResultStore:
    """The app's result store, or :class:`NoResultStoreError` naming the fix."""
    store = app.results
    if store is None:
        raise NoResultStoreError(
            f"the {urlsplit(app.broker_url).scheme}:// broker keeps no job results or cancel marks: pass a store, "
            "e.g. App(broker, results=RedisResultStore.from_url('redis://...')) or "
            "App(broker, results=PostgresResultStore('postgresql://...')) (from asyncjobs.results)"
        )
    return store


async def record_enqueued(app: App, envelopes: Sequence[Envelope], accepted: Sequence[bool]) -> None:
    """Create ``queued`` records for the accepted jobs of tasks that keep results (one store call)."""
    jobs: list[tuple[str, dict[str, Any]]] = []
    ttl = 0.0
    for env, ok in zip(envelopes, accepted, strict=True):
        spec = app.tasks.get(env.task)
        keep = spec.options.keep_result if spec is not None else 0.0
        if ok and keep > 0:
            ttl = max(ttl, keep)
            fields = {"status": "queued", "task": env.task, "queue": env.queue, "attempt": 0}
            jobs.append((env.id, {**fields, "next_at": env.not_before, "updated_at": wall_time()}))
    if jobs:
        store = app.results
        if store is not None:
            await store.queued(jobs, ttl)


async def status(app: App, job_id: str) -> JobStatus:
    """See :meth:`JobRef.status <asyncjobs.JobRef.status>`."""
    record, marked = await require_store(app).get(job_id)
    return status_of(job_id, record, marked)


async def result(app: App, job_id: str, task: str | None, timeout: float | None) -> Any:  # noqa: ASYNC109
    """See :meth:`JobRef.result <asyncjobs.JobRef.result>`."""
    spec = app.tasks.get(task) if task is not None else None
    keeps = spec is None or spec.options.keep_result > 0
    store = require_store(app)
    deadline = monotonic() + (timeout if timeout is not None else math.inf)
    while True:
        record, marked = await store.get(job_id)
        found = status_of(job_id, record, marked)
        if found.state == "done":
            text = record.get("result") if record is not None else None
            return json.loads(text) if isinstance(text, str) else None
        if found.state == "dead":
            raise JobFailedError(f"job {job_id} failed ({found.reason}): {found.error or 'no error recorded'}", found)
        if found.state == "cancelled":
            raise JobCancelledError(f"job {job_id} was cancelled", found)
        if not keeps:
            raise ConfigError(f"task {task!r} keeps no results: register it with keep_result=SECONDS")
        left = deadline - monotonic()
        if left <= 0:
            raise ResultTimeoutError(f"job {job_id} has not finished after {timeout:g}s (it is {found.state})")
        await store.wait(job_id, left)


async def cancel(app: App, job_id: str) -> JobStatus:
    """See :meth:`JobRef.cancel <asyncjobs.JobRef.cancel>`."""
    return (await cancel_in(require_store(app), job_id))[0]


async def cancel_in(store: ResultStore, job_id: str) -> tuple[JobStatus, bool]:
    """Set the cancel mark of ``job_id`` in ``store`` unless the job is over: its status after, and
    whether the mark was set (``False``: it had ended already)."""
    record, _ = await store.get(job_id)
    if record is not None and record.get("status") in ("done", "dead", "cancelled"):
        return status_of(job_id, record, False), False  # over already: nothing to cancel
    await store.cancel(job_id)
    record, marked = await store.get(job_id)
    return status_of(job_id, record, marked), True


def store_from_url(url: str, *, prefix: str = "asyncjobs") -> ResultStore:
    """The result store a URL names: ``redis://...`` (key prefix ``prefix``) or ``postgresql://...``
    (table ``PREFIX_jobs``)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        from asyncjobs.results.redis import RedisResultStore

        return RedisResultStore.from_url(url, prefix=prefix)
    if scheme in ("postgresql", "postgres"):
        from asyncjobs.results.postgres import PostgresResultStore

        return PostgresResultStore(url, table=f"{prefix}_jobs")
    raise ConfigError(f"no result store for URL {url!r}; expected redis://... or postgresql://...")
