"""Dead-letter operations behind the CLI: filter, replay and purge, on any broker."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace

from asyncjobs.broker import Broker, DeadLetter
from asyncjobs.clock import wall_time
from asyncjobs.envelope import decode
from asyncjobs.errors import EnvelopeError
from asyncjobs.settle import prior_history


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead letters to act on: by id, task name pattern, reason or error class (all ``None``: every one)."""

    ids: tuple[str, ...] = ()
    task: str | None = None
    reason: str | None = None
    error_type: str | None = None

    def matches(self, dead: DeadLetter) -> bool:
        """Whether ``dead`` passes every given criterion."""
        if self.ids and dead.id not in self.ids:
            return False
        if self.task is not None and not fnmatch.fnmatch(dead.info.task or "", self.task):
            return False
        if self.reason is not None and dead.info.reason != self.reason:
            return False
        return self.error_type is None or dead.info.error_type == self.error_type


def replay_body(dead: DeadLetter) -> bytes:
    """The body to enqueue again: a fresh first attempt, history kept; undecodable bodies as they are."""
    try:
        env = decode(dead.body)
        history = [*prior_history(env), {"replayed_at": wall_time(), "dead_reason": dead.info.reason}]
        return replace(env, attempt=1, not_before=None, extra={**env.extra, "history": history}).encode()
    except (EnvelopeError, ValueError, OverflowError, RecursionError, TypeError):
        return dead.body  # as it came: the worker dead-letters it again with the reason


async def select(broker: Broker, queue: str, where: DeadFilter, limit: int = 10_000) -> list[DeadLetter]:
    """The dead letters of ``queue`` that ``where`` matches, newest first."""
    if where.ids and where == DeadFilter(ids=where.ids):
        found = [await broker.get_dead(queue, dead_id) for dead_id in where.ids]
        return [d for d in found if d is not None]
    return [d for d in await broker.list_dead(queue, limit=limit) if where.matches(d)]


async def replay(
    broker: Broker, queue: str, where: DeadFilter, failures: list[tuple[str, str]] | None = None
) -> int:
    """Put matching dead letters back to ready as first attempts; how many were replayed.

    One dead letter that cannot be replayed does not stop the others: ``(id, why)`` of each is
    appended to ``failures`` (when given).
    """
    count = 0
    for dead in await select(broker, queue, where):
        try:
            count += await broker.replay_dead(queue, dead.id, replay_body(dead))
        except Exception as exc:
            if failures is None:
                raise
            failures.append((dead.id, f"{type(exc).__name__}: {exc}"))
    return count


async def purge(broker: Broker, queue: str, where: DeadFilter) -> int:
    """Delete matching dead letters; how many were deleted."""
    if where == DeadFilter():
        return await broker.purge_dead(queue)
    return await broker.purge_dead(queue, [d.id for d in await select(broker, queue, where)])
