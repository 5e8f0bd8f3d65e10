"""Settling: carry out an attempt's :class:`Outcome` on the broker, exactly one of ack, retry or dead-letter."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio

from asyncjobs import instruments
from asyncjobs.broker import Consumer, DeadLetterInfo
from asyncjobs.clock import monotonic, wall_time
from asyncjobs.envelope import Envelope, decode
from asyncjobs.errors import BrokerConnectionError, JobTimeout
from asyncjobs.job import Outcome
from asyncjobs.leases import Held
from asyncjobs.waiters import Waiters

log = logging.getLogger(__name__)

HISTORY_LIMIT = 20


@dataclass(slots=True)
class WorkerStats:
    """What one worker did, by outcome."""

    done: int = 0
    retried: int = 0
    timed_out: int = 0
    dead: int = 0
    skipped: int = 0
    deferred: int = 0
    lease_lost: int = 0
    released: int = 0


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
        entry["error"] = f"{type(outcome.error).__name__}: {outcome.error}"
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
    """What a dead letter keeps of the failure."""
    error = outcome.error
    return DeadLetterInfo(
        reason=outcome.reason,
        error_type=type(error).__name__ if error is not None else "",
        error_message=str(error) if error is not None else "",
        traceback="".join(traceback.format_exception(error)) if error is not None else "",
        attempts=attempts,
        history=tuple(history),
        failed_at=wall_time(),
        task=task,
    )


RETRYABLE = (BrokerConnectionError, ConnectionError, OSError, TimeoutError)


class AckBatcher:
    """Groups the acks of jobs that finished close together into one broker call.

    ``push`` returns at once, so a runner goes on to its next job while the ack is in flight; the
    lease stays held (and heartbeated) until the broker has answered, then ``on_acked`` is told
    about the whole batch.
    """

    def __init__(self, consumer: Consumer, on_acked: Callable[[list[Held], list[bool]], None]) -> None:
        self._consumer = consumer
        self._on_acked = on_acked
        self._pending: list[Held] = []
        self._idle = Waiters()  # this batcher's own task, parked while there is nothing to ack

    def push(self, held: Held) -> None:
        """Ack ``held`` in the next batch."""
        if not self._pending:
            self._idle.wake_one()
        self._pending.append(held)

    async def run(self) -> None:
        """Flush pending acks, one batch at a time, until cancelled."""
        while True:
            if not self._pending:
                await self._idle.wait()
            await self.flush()

    async def _ack(self, batch: list[Held]) -> list[bool]:
        """Ack ``batch``; on a connection error retry with backoff while the leases last.

        The leases stay heartbeated meanwhile, and an ack is conditional on the lease token, so a
        retry never acks a job that was delivered again elsewhere.
        """
        delay = 0.05
        while True:
            try:
                return await self._consumer.ack([h.delivery for h in batch])
            except RETRYABLE as exc:
                if monotonic() + delay >= min(h.confirmed_until for h in batch):
                    log.error(
                        "ack of %d jobs failed (%s) until their leases ran out; they will run again", len(batch), exc
                    )
                    return [False] * len(batch)
                log.warning("ack of %d jobs failed (%s); retrying in %.2fs", len(batch), exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:  # the broker refused: the leases will expire and the jobs return
                log.error("ack of %d jobs failed (%s); they will be redelivered", len(batch), exc)
                return [False] * len(batch)

    async def flush(self) -> None:
        """Send every pending ack now."""
        while self._pending:
            batch, self._pending = self._pending, []
            self._on_acked(batch, await self._ack(batch))


class Settler:
    """Turns outcomes into broker operations, counts them, and frees the lease slot afterwards."""

    def __init__(self, consumer: Consumer, stats: WorkerStats, free: Callable[[Sequence[Held]], None]) -> None:
        self._consumer = consumer
        self._free = free
        self.stats = stats
        self.acks = AckBatcher(consumer, self._acked)

    def _acked(self, batch: list[Held], results: list[bool]) -> None:
        self._free(batch)
        stats = self.stats
        for held, ok in zip(batch, results, strict=True):
            if not ok:
                self._lost(held, held.outcome)
            elif held.outcome == "done":
                stats.done += 1
            else:
                stats.skipped += 1

    def _lost(self, held: Held, what: str) -> None:
        self.stats.lease_lost += 1
        log.error("%s: lease lost before it could be settled (%s); it will run again", held.describe(), what)

    async def settle(self, held: Held, env: Envelope | None, outcome: Outcome, started: float) -> None:
        """Carry out ``outcome``: exactly one of ack, retry (or defer) and dead-letter."""
        held.outcome = outcome.kind
        if outcome.kind in ("done", "skipped"):
            self.acks.push(held)
            return
        try:
            if outcome.kind in ("retry", "deferred") and env is not None:
                ok = await self._retry(held, env, outcome, started)
            else:
                ok = await self._dead_letter(held, env, outcome, started)
        except Exception as exc:  # the broker failed: the lease will expire and the job return
            log.error("%s: could not settle (%s: %s); it will run again", held.describe(), outcome.kind, exc)
            ok = True
        self._free((held,))
        if not ok:
            self._lost(held, outcome.kind)

    async def _retry(self, held: Held, env: Envelope, outcome: Outcome, started: float) -> bool:
        # The next attempt gets the arguments as they were enqueued: the handler may have changed a
        # list or dict argument in place, so they are read again from the body (a shared envelope
        # only holds immutable values).
        delivery = held.delivery
        as_enqueued = delivery.envelope or decode(delivery.body)
        entry = history_entry(held.attempt, outcome, started)
        next_attempt = held.attempt + 1 if outcome.kind == "retry" else held.attempt
        not_before = wall_time() + outcome.delay if outcome.delay > 0 else None
        nxt = replace(with_history(as_enqueued, entry), attempt=next_attempt, not_before=not_before)
        ok = await self._consumer.retry(held.delivery, nxt.encode(), not_before)
        if ok and outcome.kind == "retry":
            self.stats.retried += 1
            self.stats.timed_out += isinstance(outcome.error, JobTimeout)
            error = type(outcome.error).__name__ if outcome.error else "none"
            instruments.retries.add(1, {"task": env.task, "error": error})
            log.warning("%s failed (%s: %s); retry in %.2fs", held.describe(), error, outcome.error, outcome.delay)
        elif ok:
            self.stats.deferred += 1
        return ok

    async def _dead_letter(self, held: Held, env: Envelope | None, outcome: Outcome, started: float) -> bool:
        history = prior_history(env)
        if env is not None:
            history.append(history_entry(held.attempt, outcome, started))
        info = dead_letter_info(outcome, held.attempt, env.task if env else None, history)
        ok = await self._consumer.dead_letter(held.delivery, info)
        if ok:
            self.stats.dead += 1
            self.stats.timed_out += isinstance(outcome.error, JobTimeout)
            instruments.dead_letters.add(1, {"reason": outcome.reason})
            log.error(
                "%s dead-lettered (%s): %s: %s", held.describe(), outcome.reason, info.error_type, info.error_message
            )
        return ok

    async def release(self, held: Held) -> None:
        """Give a job back to the broker now (shutdown), shielded from cancellation."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            try:
                await self._consumer.release([held.delivery])
                self.stats.released += 1
            except Exception as exc:
                log.error("could not release %s (%s); it returns when its lease expires", held.describe(), exc)
        self._free((held,))
