"""Settling: carry out an attempt's :class:`Outcome` on the broker, exactly one of ack, retry or dead-letter."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio

from asyncjobs import instruments
from asyncjobs.broker import Consumer, DeadLetterInfo, Delivery
from asyncjobs.clock import wall_time
from asyncjobs.envelope import Envelope
from asyncjobs.errors import JobTimeout
from asyncjobs.job import Outcome

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


def with_history(env: Envelope, entry: dict[str, Any]) -> Envelope:
    """``env`` with ``entry`` appended to its ``history`` field (bounded)."""
    history = list(env.extra.get("history") or [])[-(HISTORY_LIMIT - 1) :]
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


class AckBatcher:
    """Groups the acks of concurrently finishing jobs into one broker call (a group commit)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._pending: list[tuple[Delivery, list[bool], anyio.Event]] = []
        self._wakeup = anyio.Event()

    async def ack(self, delivery: Delivery) -> bool:
        """Ack ``delivery`` in the next batch and wait for the broker's answer."""
        result: list[bool] = []
        done = anyio.Event()
        self._pending.append((delivery, result, done))
        self._wakeup.set()
        await done.wait()
        return bool(result and result[0])

    async def run(self) -> None:
        """Flush pending acks, one batch at a time, until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                results = await self._consumer.ack([d for d, _, _ in batch])
            except Exception as exc:  # the broker failed: the leases will expire and the jobs return
                log.error("ack of %d jobs failed (%s); they will be redelivered", len(batch), exc)
                results = [False] * len(batch)
            for (_, result, done), ok in zip(batch, results, strict=True):
                result.append(ok)
                done.set()


class Settler:
    """Turns outcomes into broker operations and counts them."""

    def __init__(self, consumer: Consumer, acks: AckBatcher, stats: WorkerStats) -> None:
        self._consumer = consumer
        self._acks = acks
        self.stats = stats

    async def settle(
        self, delivery: Delivery, env: Envelope | None, attempt: int, outcome: Outcome, started: float
    ) -> bool:
        """Carry out ``outcome``; ``False`` when the lease was lost before it could be settled."""
        label = f"job {delivery.job_id} (task {env.task if env else '?'}, attempt {attempt})"
        if outcome.kind in ("done", "skipped"):
            ok = await self._acks.ack(delivery)
            if ok:
                if outcome.kind == "done":
                    self.stats.done += 1
                else:
                    self.stats.skipped += 1
        elif outcome.kind in ("retry", "deferred") and env is not None:
            entry = history_entry(attempt, outcome, started)
            next_attempt = attempt + 1 if outcome.kind == "retry" else attempt
            not_before = wall_time() + outcome.delay if outcome.delay > 0 else None
            nxt = replace(with_history(env, entry), attempt=next_attempt, not_before=not_before)
            ok = await self._consumer.retry(delivery, nxt.encode(), not_before)
            if ok and outcome.kind == "retry":
                self.stats.retried += 1
                self.stats.timed_out += isinstance(outcome.error, JobTimeout)
                error = type(outcome.error).__name__ if outcome.error else "none"
                instruments.retries.add(1, {"task": env.task, "error": error})
                log.warning("%s failed (%s: %s); retry in %.2fs", label, error, outcome.error, outcome.delay)
            elif ok:
                self.stats.deferred += 1
        else:
            history = list(env.extra.get("history") or []) if env else []
            if env is not None:
                history.append(history_entry(attempt, outcome, started))
            info = dead_letter_info(outcome, attempt, env.task if env else None, history)
            ok = await self._consumer.dead_letter(delivery, info)
            if ok:
                self.stats.dead += 1
                self.stats.timed_out += isinstance(outcome.error, JobTimeout)
                instruments.dead_letters.add(1, {"reason": outcome.reason})
                log.error("%s dead-lettered (%s): %s: %s", label, outcome.reason, info.error_type, info.error_message)
        if not ok:
            self.stats.lease_lost += 1
            log.error("%s: lease lost before it could be settled (%s); it will run again", label, outcome.kind)
        return ok

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries back to the broker now (shutdown), shielded from cancellation."""
        if not deliveries:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            try:
                await self._consumer.release(deliveries)
                self.stats.released += len(deliveries)
            except Exception as exc:
                log.error("could not release %d jobs (%s); they return when their leases expire", len(deliveries), exc)
