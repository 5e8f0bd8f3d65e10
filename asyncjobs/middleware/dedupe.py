"""Execution-time dedupe: claim a job's idempotency key before its handler runs.

Only jobs with a key (``task.options(key=...)``) are touched; the layer is in the chain only when
the app has a dedupe store (``App(dedupe=...)``).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

import anyio
from opentelemetry import metrics

from asyncjobs import instruments
from asyncjobs.clock import wall_time
from asyncjobs.dedupe.store import (
    ActiveClaim,
    DedupeStore,
    Status,
    extend_claims,
    reset_current_claim,
    set_current_claim,
)
from asyncjobs.errors import ConfigError
from asyncjobs.job import Job, Outcome
from asyncjobs.middleware.chain import CallNext

log = logging.getLogger(__name__)

_deferred = metrics.get_meter("asyncjobs").create_counter(
    "asyncjobs.dedupe.deferred", description="Duplicates of a running job put back until its claim ends"
)

# Lease tokens are unique per broker, not per process (the in-memory broker counts them), so an
# owner also names the process: it tells, in a key's history, which worker held it.
_PROCESS = f"{socket.gethostname()}:{os.getpid()}.{uuid.uuid4().hex[:4]}"


class DedupeMiddleware:
    """Run each keyed job at most once to completion per key (within the record's TTL).

    * The key is claimed atomically before the rest of the chain runs. With ``heartbeat_seconds``
      (a worker gives every dedupe layer its own lease and heartbeat, unless the layer was given
      values of its own: :meth:`for_worker`) the claim lasts as long as the job's lease,
      ``lease_seconds``, and is extended at the same pace, so the claim of a crashed worker's job
      ends when its lease does and the redelivery runs at once. Without a heartbeat the claim lasts
      the job's timeout plus ``grace_seconds`` (``lease_seconds`` plus grace, kept extended, for a
      job without timeout).
    * A key already ``done``: outcome ``skipped`` (acked without running, counted).
    * A key another attempt holds: outcome ``deferred`` until that claim's lease ends (at most
      ``max_defer_seconds`` before looking again).
    * The attempt's outcome settles the record: ``done`` completes it; a retry, a cancellation
      (lease lost, shutdown) or an error releases it for the next attempt; a dead letter marks
      it ``dead`` so a replay or a new enqueue may run it.
    * When the store cannot be reached the job is deferred by ``unavailable_delay`` seconds:
      nothing runs without its claim, and nothing is lost.
    """

    def __init__(
        self,
        store: DedupeStore,
        *,
        grace_seconds: float = 10.0,
        lease_seconds: float | None = None,
        max_defer_seconds: float = 2.0,
        unavailable_delay: float = 5.0,
        heartbeat_seconds: float | None = None,
    ) -> None:
        self.store = store
        self._given = (lease_seconds, heartbeat_seconds)
        self.heartbeat_seconds = 0.0 if heartbeat_seconds is None else heartbeat_seconds
        self.grace_seconds = grace_seconds
        self.lease_seconds = 300.0 if lease_seconds is None else lease_seconds
        self.max_defer_seconds = max_defer_seconds
        self.unavailable_delay = unavailable_delay
        self._kept: dict[tuple[str, str], Job] = {}  # claims the keeper extends: (key, owner) -> its job
        self._keepers = 0

    def for_worker(self, lease_seconds: float, heartbeat_seconds: float) -> DedupeMiddleware:
        """This layer with a worker's lease and heartbeat wherever it was not given its own.

        A :class:`~asyncjobs.Worker` calls it for every dedupe layer in its chain, so a layer placed
        by hand ties its claims to the worker's leases as ``App(dedupe=...)`` does. The layer
        itself is left as it is (an app may serve workers of different settings).
        """
        lease, beat = self._given
        if lease is not None and beat is not None:
            return self
        return DedupeMiddleware(
            self.store,
            grace_seconds=self.grace_seconds,
            lease_seconds=lease_seconds if lease is None else lease,
            max_defer_seconds=self.max_defer_seconds,
            unavailable_delay=self.unavailable_delay,
            heartbeat_seconds=heartbeat_seconds if beat is None else beat,
        )

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        """Claim the job's key, run the rest of the chain under it, and record how it ended."""
        key = job.envelope.key
        if key is None:
            return await call_next(job)
        timeout = job.timeout
        beat = self.heartbeat_seconds
        if beat > 0:
            lease = self.lease_seconds
        else:
            lease = (timeout if timeout is not None else self.lease_seconds) + self.grace_seconds
        ttl = job.spec.options.unique_ttl
        owner = f"{_PROCESS}:{job.lease_token}"
        try:
            claim = await self.store.claim(key, owner, lease_seconds=lease, ttl=ttl, job_id=job.id, attempt=job.attempt)
        except Exception as exc:
            log.error("job %s (task %s): dedupe store failed (%s); trying again later", job.id, job.task, exc)
            return Outcome("deferred", "dedupe_unavailable", exc, delay=self.unavailable_delay)
        if claim.status == "done":
            instruments.dedupe_skips.add(1, {"task": job.task})
            job.state["dedupe"] = "skipped"
            log.info("job %s (task %s, attempt %d): key %r already done; acked without running", *_ids(job), key)
            return Outcome("skipped", "duplicate")
        if claim.status == "running":
            remaining = (claim.lease_until or 0.0) - wall_time()
            delay = min(max(remaining, 0.0) + 0.05, self.max_defer_seconds)
            _deferred.add(1, {"task": job.task})
            job.state["dedupe"] = "deferred"
            log.info("job %s (task %s, attempt %d): key %r running elsewhere; again in %.2fs", *_ids(job), key, delay)
            return Outcome("deferred", "running_elsewhere", delay=delay)
        job.state["dedupe"] = "claimed"
        token = set_current_claim(ActiveClaim(self.store, key, owner, ttl))
        kept = beat > 0 or timeout is None  # else the claim outlasts the job's timeout by itself
        if kept:
            if not self._keepers:
                reset_current_claim(token)
                await self._record(job, key, owner, ttl, "retrying", "no claim keeper")
                raise ConfigError(
                    "DedupeMiddleware extends its claims from keep_claims(), which a Worker runs; "
                    "run the chain in a Worker (or run keep_claims beside it)"
                )
            self._kept[key, owner] = job
        try:
            outcome = await call_next(job)
        except BaseException as exc:  # cancelled (lease lost, shutdown): the next delivery may claim at once
            await self._record(job, key, owner, ttl, "retrying", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._kept.pop((key, owner), None)
            reset_current_claim(token)
        if outcome.kind in ("done", "skipped"):
            await self._record(job, key, owner, ttl, "done", "")
        else:
            error = f"{type(outcome.error).__name__}: {outcome.error}" if outcome.error else outcome.reason
            await self._record(job, key, owner, ttl, "dead" if outcome.kind == "dead" else "retrying", error)
        return outcome

    async def _record(self, job: Job, key: str, owner: str, ttl: float, status: Status, error: str) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            try:
                if status == "done":
                    ok = await self.store.complete(key, owner, ttl)
                else:
                    ok = await self.store.release(key, owner, ttl, status=status, error=error)
            except Exception as exc:
                log.error(
                    "job %s (task %s, attempt %d): could not record key %r as %s: %s", *_ids(job), key, status, exc
                )
                return
            if not ok:
                log.warning(
                    "job %s (task %s, attempt %d): claim of key %r was lost before it could be marked %s "
                    "(it outlived its claim lease)",
                    *_ids(job),
                    key,
                    status,
                )

    def _claim_seconds(self) -> float:
        """How long a claim the keeper extends lasts: the lease, or with heartbeats off lease + grace."""
        return self.lease_seconds if self.heartbeat_seconds > 0 else self.lease_seconds + self.grace_seconds

    async def keep_claims(self) -> None:
        """Extend every claim this layer holds, in one store call per heartbeat, until cancelled.

        A :class:`~asyncjobs.Worker` runs it beside its lease heartbeat for each dedupe layer of its
        chain. The claim of a job whose lease was lost is extended no more: it ends with the
        lease, so another worker may take the job over.
        """
        every = self.heartbeat_seconds if self.heartbeat_seconds > 0 else self.lease_seconds / 3
        self._keepers += 1
        try:
            while True:
                await anyio.sleep(every)
                items = [(claim, job) for claim, job in self._kept.items() if job.cancel_reason != "lease_lost"]
                if not items:
                    continue
                try:
                    results = await extend_claims(self.store, [claim for claim, _ in items], self._claim_seconds())
                except Exception as exc:
                    log.warning("could not extend %d dedupe claims: %s", len(items), exc)
                    continue
                for ((key, owner), job), ok in zip(items, results, strict=True):
                    if not ok and self._kept.pop((key, owner), None) is not None:
                        log.warning("job %s: claim of key %r was taken over while it runs", job.id, key)
        finally:
            self._keepers -= 1


def _ids(job: Job) -> tuple[str, str, int]:
    return job.id, job.task, job.attempt
