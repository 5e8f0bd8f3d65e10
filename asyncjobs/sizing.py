"""Sizing timeouts, leases and heartbeats from how long a task really takes.

Feed it durations, either measured here by running the task's own handler on sample payloads
(:func:`measure`) or recorded in production (:func:`read_durations`). It reports the
distribution, recommends a timeout, a lease and a heartbeat, and flags settings that will
produce duplicates or lost time: a job longer than its lease with heartbeats off, a loop
stall longer than the lease can absorb, a task without idempotency keys, a drain shorter than
the jobs it must let finish.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio

from asyncjobs.broker import Delivery
from asyncjobs.envelope import Envelope
from asyncjobs.errors import ConfigError
from asyncjobs.job import CURRENT, Job
from asyncjobs.task import TaskSpec

ROUND_TRIP = 0.05  # seconds: a broker round trip on a bad day, for the lease margin
NICE = (1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600)


def nice_ceil(seconds: float) -> float:
    """Round ``seconds`` up to a value people write in configs (1, 2, 3, 5, 10, 15, 20, 30, 45, 60, ...)."""
    for value in NICE:
        if seconds <= value:
            return float(value)
    return float(math.ceil(seconds / 3600) * 3600)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, by linear interpolation."""
    if not ordered:
        raise ValueError("no values")
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Summary of processing durations in seconds."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, durations: Iterable[float]) -> Distribution:
        """Summarise ``durations``; refuses an empty or negative sample."""
        ordered = sorted(durations)
        if not ordered:
            raise ConfigError("no durations to size from")
        if ordered[0] < 0:
            raise ConfigError(f"durations must be >= 0 seconds, got {ordered[0]}")
        return cls(
            count=len(ordered),
            mean=sum(ordered) / len(ordered),
            p50=percentile(ordered, 0.50),
            p95=percentile(ordered, 0.95),
            p99=percentile(ordered, 0.99),
            max=ordered[-1],
        )


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings being checked: the task's timeout and the worker's lease, heartbeat and drain."""

    timeout: float | None
    lease: float = 30.0
    heartbeat: float | None = None  # None: lease/3, 0: off
    drain: float = 30.0
    keyed: bool = False  # jobs of this task carry an idempotency key (dedupe on)

    @property
    def beat(self) -> float:
        """The effective heartbeat interval (0: off)."""
        return self.lease / 3 if self.heartbeat is None else self.heartbeat


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Recommended settings, each with the reason it was chosen."""

    timeout: float
    lease: float
    heartbeat: float
    reasons: dict[str, str] = field(default_factory=dict)


Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem with the current settings: ``error`` will cause duplicates or lost jobs."""

    severity: Severity
    message: str


def recommend(dist: Distribution, *, max_stall: float = 0.0, round_trip: float = ROUND_TRIP) -> Recommendation:
    """Recommend a timeout, a lease and a heartbeat for jobs distributed like ``dist``.

    * timeout: twice the p99, and at least a quarter above the longest run seen.
    * heartbeat and lease: the lease must outlast one missed beat plus the worst loop stall and a
      round trip, so lease = 3 x heartbeat with the heartbeat covering the stall; the lease does
      not need to cover the job (heartbeats do), and a short lease brings a crashed worker's jobs
      back sooner. 30 s is the floor.
    """
    timeout = nice_ceil(max(dist.p99 * 2, dist.max * 1.25, 1.0))
    margin = max_stall + round_trip
    lease = nice_ceil(max(30.0, 4 * margin))
    heartbeat = round(lease / 3, 3)
    return Recommendation(
        timeout=timeout,
        lease=lease,
        heartbeat=heartbeat,
        reasons={
            "timeout": f"2 x p99 ({dist.p99:.3g}s) and 1.25 x max ({dist.max:.3g}s), rounded up",
            "lease": (
                f"survives a loop stall of {max_stall:.3g}s plus a {round_trip:g}s round trip between beats; "
                "heartbeats keep longer jobs alive, a short lease returns a dead worker's jobs sooner"
            ),
            "heartbeat": "lease / 3: two beats may fail before the lease runs out",
        },
    )


def check(dist: Distribution, settings: Settings, *, max_stall: float = 0.0) -> list[Finding]:
    """Findings for ``settings`` given the durations ``dist`` and the worst loop stall seen."""
    found: list[Finding] = []
    beat, lease, timeout = settings.beat, settings.lease, settings.timeout
    if beat == 0:
        longest = dist.max if timeout is None else min(dist.max, timeout)
        if timeout is None or longest >= lease:
            found.append(
                Finding(
                    "error",
                    f"processing takes up to {dist.max:.3g}s (timeout {timeout}) but the lease is {lease:g}s with "
                    "heartbeats off: the lease expires while the job runs and another worker runs it again "
                    "(duplicate processing). Turn heartbeats on, or give the task a timeout below the lease",
                )
            )
    elif max_stall > 0 and max_stall + ROUND_TRIP >= lease - beat:
        found.append(
            Finding(
                "error",
                f"the handler blocked the event loop for {max_stall:.3g}s, longer than the lease ({lease:g}s) minus "
                f"the heartbeat ({beat:.3g}s): leases expire during the stall and jobs run twice. "
                "Run blocking code with asyncjobs.run_sync (a thread)",
            )
        )
    if max_stall >= 0.1:
        found.append(
            Finding(
                "warning",
                f"the handler blocked the event loop for up to {max_stall:.3g}s: every job and heartbeat of the "
                "worker stopped meanwhile. Run blocking code with asyncjobs.run_sync (a thread)",
            )
        )
    if timeout is None:
        found.append(
            Finding("warning", "no timeout: a hung job holds a slot (and a heartbeated lease) until the worker stops")
        )
    elif dist.p99 >= timeout or dist.max >= timeout:
        share = "over 1%" if dist.p99 >= timeout else "some"
        found.append(
            Finding(
                "warning",
                f"timeout {timeout:g}s is below the longest runs (p99 {dist.p99:.3g}s, max {dist.max:.3g}s): "
                f"{share} of the jobs will time out and be retried",
            )
        )
    if not settings.keyed:
        found.append(
            Finding(
                "warning",
                "no idempotency key: delivery is at-least-once, so a worker killed after the side effect and "
                "before the ack (a crash, a deploy past its drain time) runs the job again. Enqueue with key=...",
            )
        )
    if settings.drain < dist.p99:
        found.append(
            Finding(
                "warning",
                f"drain time {settings.drain:g}s is shorter than the p99 ({dist.p99:.3g}s): on every deploy, "
                "running jobs are cancelled and run again from the start",
            )
        )
    return found


def read_durations(path: Path) -> list[float]:
    """Durations recorded elsewhere: one number (seconds) per line, or JSON lines with a ``duration`` field."""
    values: list[float] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            value: Any = json.loads(text)
            if isinstance(value, dict):
                value = value["duration"]
            values.append(float(value))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{number}: not a duration in seconds ({exc}): {text[:60]!r}") from None
    return values


def read_payloads(path: Path) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Sample payloads: JSON lines, each ``{"args": [...], "kwargs": {...}}`` or a list of arguments."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: not JSON ({exc})") from None
        if isinstance(doc, list):
            calls.append((tuple(doc), {}))
        elif isinstance(doc, dict) and set(doc) <= {"args", "kwargs"}:
            calls.append((tuple(doc.get("args", [])), dict(doc.get("kwargs", {}))))
        else:
            raise ConfigError(f'{path}:{number}: expected a list of arguments or {{"args": [...], "kwargs": {{...}}}}')
    return calls


@dataclass(slots=True)
class Measured:
    """What running a handler on samples produced."""

    durations: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    max_stall: float = 0.0


async def measure(
    spec: TaskSpec,
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    runs: int = 1,
    concurrency: int = 1,
    limit: float | None = None,
    on_done: Callable[[], object] | None = None,
) -> Measured:
    """Run ``spec``'s handler ``runs`` times per sample, ``concurrency`` at a time, timing each run.

    Failed runs are counted by error class and their durations kept (a failure costs time too).
    A ticker measures how long the event loop was blocked. ``limit`` (seconds) caps each run so a
    hung handler cannot hang the measurement. The app's startup hooks run first and its shutdown
    hooks last, and each run sees a job of its own in :func:`~asyncjobs.current_job`, as under a worker.
    """
    result = Measured()
    work = [call for call in calls for _ in range(runs)]
    limiter = anyio.CapacityLimiter(max(concurrency, 1))

    async def one(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        async with limiter:
            env = Envelope(task=spec.name, args=args, kwargs=kwargs, queue=spec.options.queue, timeout=limit)
            delivery = Delivery(env.queue, env.id, b"", f"size-{env.id}")
            token = CURRENT.set(Job(env, delivery, spec, 1, time.time()))
            started = time.perf_counter()
            try:
                with anyio.fail_after(limit):
                    await spec.fn(*args, **kwargs)
            except Exception as exc:
                name = type(exc).__name__
                result.errors[name] = result.errors.get(name, 0) + 1
            finally:
                CURRENT.reset(token)
            result.durations.append(time.perf_counter() - started)
            if on_done is not None:
                on_done()

    async def ticker() -> None:
        step = 0.01
        while True:
            before = time.perf_counter()
            await anyio.sleep(step)
            result.max_stall = max(result.max_stall, time.perf_counter() - before - step)

    hooks = spec.app.lifecycle.running() if spec.app is not None else nullcontext()
    async with hooks, anyio.create_task_group() as outer:
        outer.start_soon(ticker)
        async with anyio.create_task_group() as tg:
            for args, kwargs in work:
                tg.start_soon(one, args, kwargs)
        outer.cancel_scope.cancel()
    return result
