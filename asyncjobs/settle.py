"""Settling: carry out an attempt's :class:`Outcome` on the broker, exactly one of ack, retry or dead-letter."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio

from asyncjobs import instruments, joblog
from asyncjobs.attempt import Attempt
from asyncjobs.broker import Consumer, DeadLetterInfo, comes_back
from asyncjobs.clock import monotonic, wall_time
from asyncjobs.envelope import Envelope, decode
from asyncjobs.errors import BrokerConnectionError, JobTimeout
from asyncjobs.job import Outcome
from asyncjobs.waiters import Waiters

log = logging.getLogger(__name__)

HISTORY_LIMIT = 20
MESSAGE_LIMIT = 2_000  # characters of an error message kept in a dead letter or a history entry
TRACEBACK_LIMIT = 8_000  # characters of a traceback kept in a dead letter (its first and last lines)
ENTRY_LIMIT = 300  # characters of the error kept in one history entry (it travels in the job's body)
TASK_LIMIT = 300  # characters of a task name kept in a dead letter (a foreign producer may send any)


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, its head and tail kept and the cut marked."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 5
    tail = limit - head
    return f"{text[:head]}…[{len(text) - limit} characters cut]…{text[-tail:]}"


def describe_error(error: BaseException) -> tuple[str, str]:
    """``(message, traceback)`` of ``error``, bounded, whatever its ``__str__`` does."""
    try:
        message = str(error)
    except Exception as exc:  # a user's exception whose __str__ raises
        message = f"<str() of the error failed: {type(exc).__name__}>"
    try:
        text = "".join(traceback.format_exception(error))
    except Exception as exc:
        text = f"<the traceback could not be formatted: {type(exc).__name__}>"
    return clip(message, MESSAGE_LIMIT), clip(text, TRACEBACK_LIMIT)


@dataclass(slots=True)
class WorkerStats:
    """What one worker did: every delivery it took ends in exactly one of these counts.

    ``done`` (acked), ``skipped`` (acked without running: a duplicate of a finished job),
    ``retried`` (stored as its next attempt), ``deferred`` (stored again, same attempt),
    ``dead`` (dead-lettered), ``lease_lost`` (left alone: the lease was no longer ours),
    ``released`` (given back by a shutdown, not counted as an attempt), ``cancelled`` (acked: a
    user cancelled it) and ``settle_failed`` (the broker failed the settle:
    the job comes back, counted, as its consumer says: :func:`~asyncjobs.broker.comes_back`).
    ``timed_out`` counts the retried or dead attempts that ended in their timeout.
    """

    done: int = 0
    retried: int = 0
    timed_out: int = 0
    dead: int = 0
    skipped: int = 0
    deferred: int = 0
    lease_lost: int = 0
    released: int = 0
    settle_failed: int = 0
    cancelled: int = 0

    @property
    def settled(self) -> int:
        """Deliveries that left this worker, however they ended (``timed_out`` is counted within others)."""
        return (
            self.done
            + self.retried
            + self.dead
            + self.skipped
            + self.deferred
            + self.lease_lost
            + self.released
            + self.settle_failed
            + self.cancelled
        )

    def __str__(self) -> str:
        parts = [f"{name.replace('_', ' ')} {getattr(self, name)}" for name in self.__slots__ if getattr(self, name)]
        return ", ".join(parts) or "no jobs"


def history_entry(attempt: int, outcome: Outcome, started_at: float) -> dict[str, Any]:
    """One line of a job's attempt history."""
    entry: dict[str, Any] = {
        "attempt": attempt,
        "outcome": outcome.kind,
        "reason": outcome.reason,
        "started_at": started_at,
        "ended_at": wall_time(),
    }
    if outcome.error is not None:
        entry["error"] = clip(f"{type(outcome.error).__name__}: {describe_error(outcome.error)[0]}", ENTRY_LIMIT)
    return entry


def prior_history(env: Envelope | None) -> list[dict[str, Any]]:
    """The attempt history the envelope carries: its ``history`` entries that are objects.

    A producer may have written anything there; what is not a list of objects is left out rather
    than allowed to break the settling of the job.
    """
    found = env.extra.get("history") if env is not None else None
    return [entry for entry in found if isinstance(entry, dict)] if isinstance(found, list) else []


def with_history(env: Envelope, entry: dict[str, Any]) -> Envelope:
    """``env`` with ``entry`` appended to its ``history`` field (bounded)."""
    history = prior_history(env)[-(HISTORY_LIMIT - 1) :]
    history.append(entry)
    return replace(env, extra={**env.extra, "history": history})


def dead_letter_info(
    outcome: Outcome, attempts: int, task: str | None, history: Sequence[dict[str, Any]]
) -> DeadLetterInfo:
    """What a dead letter keeps of the failure: every text bounded (see :func:`clip`), the last history entries."""
    error = outcome.error
    message, text = describe_error(error) if error is not None else ("", "")
    return DeadLetterInfo(
        reason=outcome.reason,
        error_type=clip(type(error).__name__, TASK_LIMIT) if error is not None else "",
        error_message=message,
        traceback=text,
        attempts=attempts,
        history=tuple(history[-HISTORY_LIMIT:]),
        failed_at=wall_time(),
        task=clip(task, TASK_LIMIT) if task is not None else None,
    )


RETRYABLE = (BrokerConnectionError, ConnectionError, OSError, TimeoutError)


RETRYABLE = (BrokerConnectionError, ConnectionError, OSError, TimeoutError)

Acked = Callable[[list[tuple[Attempt, str]], list[bool], bool], None]


class AckBatcher:
    """Groups the acks of jobs that finished close together into one broker call.

    ``push`` returns at once, so a runner goes on to its next job while the ack is in flight; the
    lease stays held (and heartbeated) until the broker has answered, then ``on_acked`` is told
    about the whole batch. :meth:`run` is the only task that sends acks; after :meth:`close` it
    sends what is pending, waits for the answer, and returns.
    """

    def __init__(self, consumer: Consumer, on_acked: Acked) -> None:
        self._consumer = consumer
        self._on_acked = on_acked
        self._pending: list[tuple[Attempt, str]] = []
        self._idle = Waiters()  # this batcher's own task, parked while there is nothing to ack
        self._closed = False

    def push(self, attempt: Attempt, kind: str) -> None:
        """Ack ``attempt`` (outcome ``kind``: ``done``, ``skipped`` or ``cancelled``) in the next batch."""
        if not self._pending:
            self._idle.wake_one()
        self._pending.append((attempt, kind))

    def close(self) -> None:
        """No more pushes: :meth:`run` returns once every pending ack is answered."""
        self._closed = True
        self._idle.wake_all()

    async def run(self) -> None:
        """Send pending acks, one batch at a time, until closed and nothing is pending."""
        while self._pending or not self._closed:
            if not self._pending:
                await self._idle.wait()
                continue
            batch, self._pending = self._pending, []
            results, retried = await self._ack([attempt for attempt, _ in batch])
            self._on_acked(batch, results, retried)

    async def _ack(self, batch: list[Attempt]) -> tuple[list[bool], bool]:
        """Ack ``batch``; on a connection error retry with backoff while the leases last.

        Returns the broker's answers and whether the call was retried (an earlier try's reply may
        have been lost after the broker acted on it). The leases stay heartbeated meanwhile, and
        an ack is conditional on the lease token, so a retry never acks a job that was delivered
        again elsewhere.
        """
        delay, retried = 0.05, False
        while True:
            try:
                return await self._consumer.ack([a.delivery for a in batch]), retried
            except RETRYABLE as exc:
                if monotonic() + delay >= min(a.confirmed_until for a in batch):
                    log.error(
                        "ack of %d jobs failed (%s) until their leases ran out; they will run again", len(batch), exc
                    )
                    return [False] * len(batch), False
                log.warning("ack of %d jobs failed (%s); retrying in %.2fs", len(batch), exc, delay)
                await anyio.sleep(delay)
                delay, retried = min(delay * 2, 2.0), True
            except Exception as exc:  # the broker refused: the leases will expire and the jobs return
                log.error("ack of %d jobs failed (%s); they will be redelivered", len(batch), exc)
                return [False] * len(batch), False


class Settler:
    """The one way out of an attempt: turns its result into a broker operation, counts it, frees the slot.

    :meth:`settle` is called exactly once per delivery a runner took; :meth:`release` gives back
    deliveries that never started (shutdown).
    """

    def __init__(
        self,
        consumer: Consumer,
        stats: WorkerStats,
        free: Callable[[Sequence[Attempt]], None],
        record: Record | None = None,
    ) -> None:
        self._consumer = consumer
        self._free = free
        self.stats = stats
        self.acks = AckBatcher(consumer, self._acked)
        self._record = record  # the result store's writer (job handles), called before the broker is told

    def _acked(self, batch: list[tuple[Attempt, str]], results: list[bool], retried: bool) -> None:
        self._free([attempt for attempt, _ in batch])
        stats = self.stats
        for (attempt, kind), ok in zip(batch, results, strict=True):
            if ok:
                if kind == "done":
                    stats.done += 1
                elif kind == "cancelled":
                    stats.cancelled += 1
                    instruments.cancelled.add(1, {"task": attempt.task})
                else:
                    stats.skipped += 1
                joblog.settled(attempt, kind)
                continue
            stats.lease_lost += 1
            if retried:
                log.warning(
                    "%s: the reply to its ack was lost and the lease is no longer held: either that ack went "
                    "through, or the lease ended and the job will run again",
                    attempt.describe(),
                )
            else:
                log.error("%s: lease lost before it could be acked (%s); it will run again", attempt.describe(), kind)

    async def settle(self, attempt: Attempt, outcome: Outcome | None) -> None:
        """Carry out how ``attempt`` ended: exactly one of ack, retry/defer, dead-letter, give back, leave.

        ``outcome`` is ``None`` when the attempt produced none because the worker cancelled it
        (shutdown: given back, not counted; a user's cancel: acked as ``cancelled``). A lost lease
        is left alone whatever the outcome: the job may be running elsewhere. With a result store,
        the outcome is recorded there first (a kill before the broker hears of it runs the job again).
        """
        attempt.phase = "settling"
        if attempt.lost:
            self.stats.lease_lost += 1
            self._free((attempt,))
            return
        if outcome is None and attempt.cancel_reason == "cancelled":
            outcome = _CANCELLED
        if outcome is None:
            await self.release([attempt])
            return
        if self._record is not None:  # a result the store could not take turns the outcome into a retry
            outcome = await self._record(attempt, outcome)
        kind = outcome.kind
        if kind in ("done", "skipped", "cancelled"):
            self.acks.push(attempt, kind)
            return
        env = attempt.envelope
        try:
            if kind in ("retry", "deferred") and env is not None:
                ok = await self._retry(attempt, env, outcome)
            else:
                ok = await self._dead_letter(attempt, env, outcome)
        except Exception as exc:  # the broker failed: the job comes back as its consumer says
            self.stats.settle_failed += 1
            log.error(
                "%s: could not %s it (%s: %s); %s",
                attempt.describe(),
                "dead-letter" if kind == "dead" else "retry",
                type(exc).__name__,
                exc,
                comes_back(self._consumer),
            )
            ok = True
        self._free((attempt,))
        if not ok:
            self.stats.lease_lost += 1
            log.error("%s: lease lost before it could be settled (%s); it will run again", attempt.describe(), kind)

    async def _retry(self, attempt: Attempt, env: Envelope, outcome: Outcome) -> bool:
        # The next attempt gets the arguments as they were enqueued: the handler may have changed a
        # list or dict argument in place, so they are read again from the body (a shared envelope
        # only holds immutable values).
        delivery = attempt.delivery
        as_enqueued = delivery.envelope or decode(delivery.body)
        entry = history_entry(attempt.number, outcome, attempt.started)
        next_attempt = attempt.number + 1 if outcome.kind == "retry" else attempt.number
        not_before = wall_time() + outcome.delay if outcome.delay > 0 else None
        nxt = replace(with_history(as_enqueued, entry), attempt=next_attempt, not_before=not_before)
        ok = await self._consumer.retry(delivery, nxt.encode(), not_before)
        if ok and outcome.kind == "retry":
            self.stats.retried += 1
            self.stats.timed_out += isinstance(outcome.error, JobTimeout)
            error = type(outcome.error).__name__ if outcome.error else "none"
            instruments.retries.add(1, {"task": env.task, "error": error})
            joblog.settled(attempt, "retried", outcome, f"retry in {outcome.delay:.2f}s")
        elif ok:
            self.stats.deferred += 1
            joblog.settled(attempt, "deferred", outcome, f"again in {outcome.delay:.2f}s")
        return ok

    async def _dead_letter(self, attempt: Attempt, env: Envelope | None, outcome: Outcome) -> bool:
        history = prior_history(env)
        if env is not None:
            history.append(history_entry(attempt.number, outcome, attempt.started))
        info = dead_letter_info(outcome, attempt.number, env.task if env else None, history)
        ok = await self._consumer.dead_letter(attempt.delivery, info)
        if ok:
            self.stats.dead += 1
            self.stats.timed_out += isinstance(outcome.error, JobTimeout)
            instruments.dead_letters.add(1, {"reason": outcome.reason})
            joblog.settled(attempt, "dead", outcome, "" if outcome.error else f"{info.error_type}: {info.error_message}")
        return ok

    async def give_back(self, attempts: Sequence[Attempt]) -> None:
        """Give deliveries that never started back to the broker now (shutdown), in one call.

        One whose lease was lost meanwhile is left alone and counted as such. Shielded from
        cancellation and bounded in time: a give-back that cannot be made is logged, and those
        jobs come back as their consumer says (:func:`~asyncjobs.broker.comes_back`).
        """
        lost = [a for a in attempts if a.lost]
        if lost:
            self.stats.lease_lost += len(lost)
            self._free(lost)
        await self.release([a for a in attempts if not a.lost])

    async def release(self, attempts: Sequence[Attempt]) -> None:
        """Give these deliveries back to the broker now, not counted as an attempt (see :meth:`give_back`)."""
        if not attempts:
            return
        for attempt in attempts:
            attempt.phase = "settling"
        released, why = False, f"no answer within {_RELEASE_SECONDS:g}s"
        with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_SECONDS):
            try:
                await self._consumer.release([a.delivery for a in attempts])
                released = True
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
        if released:
            self.stats.released += len(attempts)
            for attempt in attempts:
                joblog.settled(attempt, "released")
        else:
            self.stats.settle_failed += len(attempts)
            log.error("could not give back %d jobs (%s); for each, %s", len(attempts), why, comes_back(self._consumer))
        self._free(attempts)


_CANCELLED = Outcome("cancelled", "cancelled")
Record = Callable[[Attempt, Outcome], Awaitable[Outcome]]
_RELEASE_SECONDS = 5.0  # a give-back that takes longer is abandoned: the jobs come back as their consumer says
