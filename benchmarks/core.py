"""The measuring frame every scenario shares: one workload, one set of phases, one result shape.

A scenario is a :class:`System` (a way to enqueue jobs and a worker that runs them). The runner
puts the same workload through each one:

1. **enqueue**: ``N // 10`` jobs one call at a time (``enqueue 1x1``), then the other jobs with the
   system's bulk API (``enqueue bulk``) when it has one; a system without a bulk API enqueues all
   ``N`` one at a time. The worker is not running yet.
2. **drain**: the worker starts on the pre-filled queue; the drain rate is
   ``(N - 1) / (start of the N-th handler - start of the first handler)``.
3. **latency**: with the worker running, ``max(100, N // 10)`` jobs are enqueued one at a time,
   paced at a fixed rate; each job's latency is the time from just before its enqueue call to
   the start of its handler, both read with ``time.monotonic`` (``CLOCK_MONOTONIC``, shared by all
   processes of the machine, so it also holds for a worker in a subprocess).

Every job is a no-op that records when it started. Every scenario runs on its own queue names or
keys (a unique prefix), is cleaned up afterwards and is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import socket
import statistics
import sys
import time
import traceback
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True, slots=True)
class Workload:
    """What every scenario of a run does."""

    jobs: int = 10_000
    concurrency: int = 10
    rate: float = 500.0  # jobs/s of the paced enqueue in the latency phase
    batch: int = 1_000  # jobs per bulk enqueue call
    timeout: float = 180.0  # seconds one scenario may take in all

    @property
    def single(self) -> int:
        """Jobs enqueued one call at a time before the bulk part (systems with a bulk API)."""
        return max(1, self.jobs // 10)

    @property
    def paced(self) -> int:
        """Jobs of the latency phase."""
        return max(100, self.jobs // 10)


class Recorder:
    """When each job's handler started; wakes the runner when the expected count is reached.

    Handlers running on the event loop call :meth:`mark`; handlers in other threads call
    :meth:`mark_threadsafe`; a worker in another process reports over UDP (:func:`udp_listener`).
    """

    def __init__(self, size: int) -> None:
        self.starts: list[float] = [math.nan] * size
        self.count = 0
        self.target = size
        self.duplicates = 0
        self.duplicated: list[int] = []  # the first few indices that started twice
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def expect(self, target: int) -> None:
        """Wake :meth:`wait` once ``target`` jobs in all have started."""
        self.target = target
        self._event = asyncio.Event()
        if self.count >= target:
            self._event.set()

    def mark(self, index: int) -> None:
        """Job ``index`` starts now (call from the event loop)."""
        self.mark_at(index, time.monotonic())

    def mark_at(self, index: int, when: float) -> None:
        """Job ``index`` started at ``when`` (monotonic seconds)."""
        if not math.isnan(self.starts[index]):
            self.duplicates += 1
            if len(self.duplicated) < 10:
                self.duplicated.append(index)
            return
        self.starts[index] = when
        self.count += 1
        if self.count >= self.target:
            self._event.set()

    def mark_threadsafe(self, index: int) -> None:
        """Job ``index`` starts now (call from any thread)."""
        self._loop.call_soon_threadsafe(self.mark_at, index, time.monotonic())

    async def wait(self) -> None:
        """Until the expected count is reached."""
        await self._event.wait()


class System(ABC):
    """One way of running the workload: an enqueue side and a worker."""

    #: short stable id used by ``--only`` and in the JSON
    key: str = ""
    #: the row's label in the table
    label: str = ""
    #: "ceiling", "raw", "peer" or "asyncjobs"
    role: str = "peer"
    #: how the rows compare; shown under the table
    note: str = ""
    has_bulk: bool = False

    def __init__(self, workload: Workload, recorder: Recorder, prefix: str) -> None:
        self.workload = workload
        self.recorder = recorder
        self.prefix = prefix  # unique per scenario run: every queue name / key contains it

    async def check(self) -> str | None:
        """``None`` when the scenario can run here, else why not (missing package, no server)."""
        return None

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Connect and declare whatever the producer needs."""

    @abstractmethod
    async def enqueue_one(self, index: int) -> None:
        """Enqueue job ``index`` with one call."""

    async def enqueue_series(self, indices: range) -> None:
        """Enqueue ``indices`` one call at a time, each awaited before the next."""
        for index in indices:
            await self.enqueue_one(index)

    async def enqueue_bulk(self, indices: range) -> None:
        """Enqueue ``indices`` with the bulk API, ``workload.batch`` jobs per call."""
        raise NotImplementedError

    @abstractmethod
    def worker(self) -> Any:
        """An async context manager: the worker runs (in the background) while it is entered."""

    async def cleanup(self) -> None:  # noqa: B027 - optional hook
        """Delete everything this scenario created and close connections. Must not raise."""


@asynccontextmanager
async def in_background(
    work: Callable[[], Coroutine[Any, Any, Any]], stop: Callable[[], Any] | None = None, grace: float = 5.0
) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``work()`` while the block runs; then ``stop()``, and cancel it if it has not ended after ``grace`` s.

    A peer's worker that ignores cancellation (a shielded wait in its shutdown) is abandoned after
    a second ``grace`` with a warning, so it cannot stall the run.
    """
    task = asyncio.ensure_future(work())
    try:
        yield task
    finally:
        with anyio.CancelScope(shield=True):
            if stop is not None and not task.done():
                with anyio.move_on_after(grace):
                    try:
                        outcome = stop()
                        if inspect.isawaitable(outcome):
                            await outcome
                    except (Exception, asyncio.CancelledError) as exc:  # shielded: never our own cancellation
                        print(f"warning: stopping the worker failed: {exc!r}", file=sys.stderr)
            for _ in range(2):
                if task.done():
                    break
                await asyncio.wait({task}, timeout=grace)
                task.cancel()
            if not task.done():
                print(f"warning: abandoned a worker that ignored cancellation ({work})", file=sys.stderr)
            elif not task.cancelled() and task.exception() is not None:
                print(f"warning: worker failed: {task.exception()!r}", file=sys.stderr)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(slots=True)
class Result:
    """The figures of one scenario run (rates in jobs/s, latencies in ms)."""

    broker: str
    key: str
    label: str
    role: str
    status: str = "ok"
    jobs: int = 0
    enqueue_one: float | None = None
    enqueue_bulk: float | None = None
    drain: float | None = None
    latency_p50: float | None = None
    latency_p99: float | None = None
    latency_max: float | None = None
    duplicates: int = 0
    duplicated: list[int] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def rate(count: int, seconds: float) -> float:
    """``count / seconds``, guarded against a zero interval."""
    return count / seconds if seconds > 0 else math.inf


async def measure(system: System, broker: str, progress: Callable[[str, int, int], None]) -> Result:
    """Run the workload once through ``system``; never raises (a failure becomes the status)."""
    w, rec = system.workload, system.recorder
    result = Result(broker, system.key, system.label, system.role, jobs=w.jobs, note=system.note)
    began = time.monotonic()
    try:
        reason = await system.check()
        if reason is not None:
            result.status = f"not available: {reason}"
            return result
        with anyio.fail_after(w.timeout):
            await _phases(system, result, progress)
    except TimeoutError:
        result.status = f"timeout after {w.timeout:.0f}s ({rec.count} jobs had started)"
    except Exception as exc:
        result.status = f"error: {type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        with anyio.move_on_after(30, shield=True):
            try:
                await system.cleanup()
            except Exception as exc:
                result.status += f" (cleanup failed: {exc})"
        result.seconds = time.monotonic() - began
        result.duplicates = rec.duplicates
        result.duplicated = rec.duplicated
    return result


async def _phases(system: System, result: Result, progress: Callable[[str, int, int], None]) -> None:
    w, rec = system.workload, system.recorder
    await system.setup()
    single = w.single if system.has_bulk else w.jobs
    progress("enqueue", 0, w.jobs)
    t0 = time.monotonic()
    for start in range(0, single, 500):
        await system.enqueue_series(range(start, min(start + 500, single)))
        progress("enqueue", min(start + 500, single), w.jobs)
    result.enqueue_one = rate(single, time.monotonic() - t0)
    if system.has_bulk:
        t0 = time.monotonic()
        for start in range(single, w.jobs, w.batch):
            await system.enqueue_bulk(range(start, min(start + w.batch, w.jobs)))
            progress("enqueue", min(start + w.batch, w.jobs), w.jobs)
        result.enqueue_bulk = rate(w.jobs - single, time.monotonic() - t0)
    rec.expect(w.jobs)
    async with system.worker():
        async with anyio.create_task_group() as tg:
            tg.start_soon(_ticker, rec, progress, "drain", 0, w.jobs)
            await rec.wait()
            tg.cancel_scope.cancel()
        drained = rec.starts[: w.jobs]
        result.drain = rate(w.jobs - 1, max(drained) - min(drained))
        rec.expect(w.jobs + w.paced)
        stamps = [math.nan] * w.paced
        async with anyio.create_task_group() as tg:
            tg.start_soon(_ticker, rec, progress, "latency", w.jobs, w.paced)
            t0 = time.monotonic()
            for k in range(w.paced):
                delay = t0 + k / w.rate - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                stamps[k] = time.monotonic()
                await system.enqueue_one(w.jobs + k)
            await rec.wait()
            tg.cancel_scope.cancel()
    latencies = [(rec.starts[w.jobs + k] - stamps[k]) * 1000 for k in range(w.paced)]
    result.latency_p50 = percentile(latencies, 0.5)
    result.latency_p99 = percentile(latencies, 0.99)
    result.latency_max = max(latencies)


async def _ticker(rec: Recorder, progress: Callable[[str, int, int], None], phase: str, base: int, total: int) -> None:
    while True:
        progress(phase, rec.count - base, total)
        await anyio.sleep(0.1)


def new_prefix(key: str) -> str:
    """A unique name prefix for one scenario run."""
    return f"ajbench-{key}-{uuid.uuid4().hex[:8]}"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def summarize(runs: Sequence[Result]) -> Result:
    """One row from repeated runs: the median of each figure; the worst status if any failed."""
    first = runs[0]
    failed = [r for r in runs if r.status != "ok"]
    out = Result(first.broker, first.key, first.label, first.role, jobs=first.jobs, note=first.note)
    out.status = failed[0].status if failed else "ok"
    out.runs = [{k: v for k, v in r.to_json().items() if k != "runs"} for r in runs]
    ok = [r for r in runs if r.status == "ok"] or list(runs)

    def med(name: str) -> float | None:
        values = [getattr(r, name) for r in ok if getattr(r, name) is not None]
        return statistics.median(values) if values else None

    for name in ("enqueue_one", "enqueue_bulk", "drain", "latency_p50", "latency_p99", "latency_max"):
        setattr(out, name, med(name))
    out.duplicates = max(r.duplicates for r in runs)
    out.duplicated = sorted({i for r in runs for i in r.duplicated})
    out.seconds = sum(r.seconds for r in runs)
    return out


@asynccontextmanager
async def udp_listener(recorder: Recorder) -> AsyncIterator[int]:
    """A loopback UDP port on which a worker in another process reports ``b"<index> <monotonic>"`` per job start."""
    loop = asyncio.get_running_loop()

    class Receive(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            index, when = data.split()
            recorder.mark_at(int(index), float(when))

    transport, _ = await loop.create_datagram_endpoint(Receive, local_addr=("127.0.0.1", 0))
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    try:
        yield sock.getsockname()[1]
    finally:
        transport.close()
