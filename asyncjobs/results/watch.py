"""The worker's side of job handles: status writes, results, cancel marks and progress.

One :class:`JobWatcher` per worker. It is three things, each called from one place:

* a middleware (inside dedupe, outside retry): checks the job's cancel mark against the marks the
  last heartbeat brought (asking the store only when it could not list them all) and cancels a
  marked job before its handler starts; for tasks that keep results it buffers ``running``,
  which the next heartbeat writes (a store in this process is written at once);
* :meth:`record`, called by the settler once an outcome is final and *before* the broker is told
  (ack or dead-letter): a kill between the two runs the job again, it never leaves a result
  without a run;
* a heartbeat (:meth:`run`): every beat, one store call writes the buffered ``running`` states and
  progress of running jobs and finds cancel marks of the jobs this worker holds, which are
  cancelled at once. So a job costs one store call (its outcome) on top of its broker calls.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from asyncjobs.clock import wall_time
from asyncjobs.envelope import Envelope, decode
from asyncjobs.errors import ResultStoreError, ResultTooLargeError
from asyncjobs.job import Job, Outcome
from asyncjobs.results.store import DEFAULT_TTL, ResultStore, Write, encode_result

if TYPE_CHECKING:
    from asyncjobs.app import App
    from asyncjobs.attempt import Attempt
    from asyncjobs.broker import Delivery

log = logging.getLogger(__name__)

COMMIT_SECONDS = 10.0  # a group commit of outcome records that takes longer fails (each job is retried)
RECORD_RETRY_SECONDS = 5.0  # a job whose result could not be recorded runs again after this
MESSAGE_LIMIT = 300  # characters of a progress message or error kept in a record
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"

_current: ContextVar[tuple[JobWatcher, str] | None] = ContextVar("asyncjobs_job_progress", default=None)


async def progress(fraction: float, message: str = "") -> None:
    """Report the running job's progress (``fraction`` from 0 to 1, and a short ``message``).

    Shown by :meth:`JobRef.status <asyncjobs.JobRef.status>` and ``asyncjobs job show``. The latest
    value is written with the worker's next heartbeat: a call costs no round trip. Also a
    cancellation checkpoint. Outside a job run by a worker with a result store it does nothing.
    """
    current = _current.get()
    if current is not None:
        watcher, job_id = current
        await watcher.report(job_id, min(max(float(fraction), 0.0), 1.0), str(message)[:MESSAGE_LIMIT])
    await anyio.lowlevel.checkpoint_if_cancelled()


class JobWatcher:
    """Records what becomes of the jobs one worker runs (see the module docstring)."""

    def __init__(self, app: App, store: ResultStore, interval: float) -> None:
        self.app = app
        self.store = store
        self.interval = interval
        self._held: Mapping[Delivery, Attempt] = {}
        self._progress: dict[str, dict[str, Any]] = {}  # job id -> running state / progress not written yet
        self._beating: tuple[anyio.Event, set[str]] | None = None  # the beat in flight and the jobs it writes
        self._watched: set[str] = set()  # jobs that reported progress: their outcome is recorded too
        self._marks: frozenset[str] | None = None  # every live cancel mark as of the last beat (None: ask)
        self._batch: _Batch | None = None  # outcome records waiting for the next group commit
        self._writing = anyio.Lock()  # held while a group commit is in flight

    async def _commit(self, write: Write) -> None:
        """Write one outcome record with those of every other runner settling now: a group commit.

        One store call is in flight at a time; the records that arrive meanwhile wait and go
        together in the next. The first to arrive at an empty batch writes it (shielded, bounded:
        the others wait on it) and each caller gets the batch's error, if any.
        """
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
        batch.writes.append(write)
        if len(batch.writes) > 1:  # another caller writes this batch
            await batch.written.wait()
        else:
            with anyio.CancelScope(shield=True):
                committed = False
                try:
                    with anyio.fail_after(COMMIT_SECONDS):
                        async with self._writing:  # the batch before is in flight: this one fills meanwhile
                            self._batch = None  # taken: who comes now starts the next
                            await self.store.write_many(batch.writes)
                    committed = True
                except Exception as exc:
                    batch.error = exc
                finally:
                    if self._batch is batch:  # never taken (timed out waiting): nobody may join it now
                        self._batch = None
                    if not committed and batch.error is None:
                        batch.error = ResultStoreError("the group commit of outcome records was interrupted")
                    batch.written.set()
        if batch.error is not None:
            raise batch.error

    def bind(self, held: Mapping[Delivery, Attempt]) -> None:
        """Watch the leases of this mapping (the lease keeper's, by delivery)."""
        self._held = held

    def _keep(self, task: str | None) -> float:
        spec = self.app.tasks.get(task) if task is not None else None
        return spec.options.keep_result if spec is not None else 0.0

    def wrap(self, call_next: Callable[[Job], Awaitable[Outcome]]) -> Callable[[Job], Awaitable[Outcome]]:
        """This layer around ``call_next``, composed once (see :class:`~asyncjobs.WrappingMiddleware`)."""

        async def call(job: Job) -> Outcome:
            return await self(job, call_next)

        return call

    async def __call__(self, job: Job, call_next: Callable[[Job], Awaitable[Outcome]]) -> Outcome:
        """Record the start (kept tasks), refuse a cancelled job, run it with progress reporting on."""
        if await self._marked(job):
            attempt = self._held.get(job.delivery)
            if attempt is not None:
                log.info("%s: cancelled before it started", attempt.describe())
                attempt.cancel("cancelled")
                await anyio.lowlevel.checkpoint()  # the attempt's scope is cancelled: this raises
        token = _current.set((self, job.id))
        try:
            return await call_next(job)
        finally:
            _current.reset(token)

    async def _marked(self, job: Job) -> bool:
        """Whether the job has a cancel mark; for kept tasks, its ``running`` state written or buffered.

        The store is asked only when the last beat could not list every mark (or it is in this
        process). A store that cannot be reached does not fail the job: it runs, its ``running``
        state waits for the next beat, and a cancel mark found by a later beat stops it then.
        """
        keep = job.spec.options.keep_result
        ask = self.store.local or self._marks is None
        fields: dict[str, Any] = {}
        if keep > 0:
            fields = {
                "status": "running",
                "task": job.task,
                "queue": job.queue,
                "attempt": job.attempt,
                "worker": WORKER_NAME,
                "started_at": job.started_at,
                "updated_at": wall_time(),
                "next_at": None,
            }
        if ask:
            try:
                return await (self.store.started(job.id, fields, keep) if keep > 0 else self.store.cancelled(job.id))
            except Exception as exc:
                log.warning(
                    "job %s: the result store could not be asked for its cancel mark (%s: %s); it runs, "
                    "and the next heartbeat of the store looks again",
                    job.id,
                    type(exc).__name__,
                    exc,
                )
        if keep > 0:  # rides on the next beat; progress reported meanwhile wins
            self._progress[job.id] = {**fields, **self._progress.get(job.id, {})}
        # The marks the last beat brought: a cancel newer than that stops the job at the next beat.
        return self._marks is not None and job.id in self._marks

    async def report(self, job_id: str, fraction: float, message: str) -> None:
        """Buffer a job's progress for the next beat (written at once to a store in this process)."""
        fields = {"progress": fraction, "message": message, "progress_at": wall_time()}
        self._watched.add(job_id)
        if self.store.local:
            await self.store.write(job_id, fields, self._ttl(job_id))
        else:
            self._progress[job_id] = fields

    def _ttl(self, job_id: str) -> float:
        for attempt in self._held.values():
            if attempt.delivery.job_id == job_id:
                return self._keep(attempt.task) or DEFAULT_TTL
        return DEFAULT_TTL

    async def run(self) -> None:
        """Beat until cancelled: at once, then every ``interval`` seconds."""
        while True:
            await self.beat()
            await anyio.sleep(self.interval)

    async def beat(self) -> None:
        """Write buffered progress and cancel the held jobs that have a cancel mark: one store call."""
        held = {a.delivery.job_id: a for a in self._held.values() if a.phase != "settling" and a.delivery.job_id}
        progress, self._progress = self._progress, {}
        self._beating = beating = (anyio.Event(), set(progress))
        try:
            marked, self._marks = await self.store.beat(progress, list(held), DEFAULT_TTL)
        except Exception as exc:
            log.warning("result store beat failed (%s: %s); trying again next beat", type(exc).__name__, exc)
            self._progress = {**progress, **self._progress}
            return
        finally:
            self._beating = None
            beating[0].set()
        for job_id in marked:
            attempt = held[job_id]
            if attempt.phase != "settling" and attempt.cancel_reason is None:
                log.warning("%s: cancel requested; cancelling it", attempt.describe())
                attempt.cancel("cancelled")

    async def record(self, attempt: Attempt, outcome: Outcome) -> Outcome:
        """Record a final (or retrying) outcome before the broker is told; the outcome to settle.

        A result the store refuses (too large, not JSON) turns the outcome into ``dead`` with
        that error. When the store fails, a ``done`` becomes a ``retry`` after
        :data:`RECORD_RETRY_SECONDS` (never acked without its result; the retry is counted, and
        settled on every broker at once, so no delivery waits unsettled); any other outcome is
        settled as it is.
        """
        env, job_id = attempt.envelope, attempt.delivery.job_id
        if env is None and outcome.kind == "cancelled":  # cancelled before it started: read what it was
            env = _decoded(attempt)
        if env is None or job_id is None:
            return outcome
        keep = self._keep(env.task)
        watched = job_id in self._watched
        self._watched.discard(job_id)
        pending = self._progress.pop(job_id, None)  # the latest progress goes with the outcome
        beating = self._beating
        if beating is not None and job_id in beating[1]:
            await beating[0].wait()  # a "running" in flight must not land after the outcome
        kind = outcome.kind
        if kind in ("skipped", "deferred") or (keep <= 0 and not watched and kind != "cancelled"):
            return outcome
        fields: dict[str, Any] = {"status": kind, "task": env.task, "attempt": attempt.number, "worker": WORKER_NAME}
        fields = {**(pending or {}), **fields}  # a running state or progress not written yet, under the outcome
        fields["updated_at"] = wall_time()
        fields["reason"] = outcome.reason
        if kind == "done":
            try:
                fields["result"] = encode_result(outcome.result, self.store.max_result_bytes)
            except (ResultTooLargeError, TypeError, ValueError) as exc:
                reason = "result_too_large" if isinstance(exc, ResultTooLargeError) else "result_not_json"
                log.error("%s: its result cannot be kept (%s); dead-lettered", attempt.describe(), exc)
                outcome = Outcome("dead", reason, exc)
                fields["status"], fields["reason"] = "dead", reason
        if outcome.error is not None:
            fields["error"] = f"{type(outcome.error).__name__}: {outcome.error}"[:MESSAGE_LIMIT]
        if kind == "retry":
            fields["status"], fields["next_at"] = "retrying", wall_time() + outcome.delay
        try:
            await self._commit((job_id, fields, keep or DEFAULT_TTL, fields["status"] != "retrying"))
        except Exception as exc:
            if kind != "done":  # the dead letter, the retry or the cancel goes ahead: it is a record of its own
                log.error(
                    "%s: could not record its outcome (%s) in the result store (%s: %s); settled all the same",
                    attempt.describe(),
                    kind,
                    type(exc).__name__,
                    exc,
                )
                return outcome
            log.error(
                "%s: could not record its result in the result store (%s: %s); never acked without it, it is "
                "retried in %gs (counted as an attempt)",
                attempt.describe(),
                type(exc).__name__,
                exc,
                RECORD_RETRY_SECONDS,
            )
            error = ResultStoreError(f"the result store could not record the result: {type(exc).__name__}: {exc}")
            return Outcome("retry", "result_store_unavailable", error, delay=RECORD_RETRY_SECONDS)
        return outcome


class _Batch:
    """Outcome records committed in one store call, and how that call ended."""

    __slots__ = ("error", "writes", "written")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.written = anyio.Event()
        self.error: BaseException | None = None


def _decoded(attempt: Attempt) -> Envelope | None:
    """The envelope of an attempt cancelled before it started (its task named in logs and metrics)."""
    delivery = attempt.delivery
    try:
        env = delivery.envelope or decode(delivery.body)
    except Exception:  # unreadable: acked as cancelled all the same, without a record
        return None
    attempt.envelope, attempt.task = env, env.task
    return env
