"""The worker: fetch under leases, run each job in its own cancel scope, settle, shut down cleanly."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import threading
from collections import deque
from collections.abc import Sequence

import anyio
import anyio.abc

from asyncjobs.app import App
from asyncjobs.broker import Broker, Consumer
from asyncjobs.clock import wall_time
from asyncjobs.config import WorkerConfig
from asyncjobs.envelope import decode
from asyncjobs.errors import AsyncJobsError, EnvelopeError, PermanentError, UnknownTaskError
from asyncjobs.job import Job, Outcome
from asyncjobs.leases import Held, Interrupted, LeaseKeeper, StallDetector
from asyncjobs.middleware.chain import CallNext, Middleware, build_chain
from asyncjobs.middleware.dedupe import DedupeMiddleware
from asyncjobs.middleware.retry import RetryMiddleware
from asyncjobs.middleware.timeout import TimeoutMiddleware
from asyncjobs.middleware.tracing import observability_layers
from asyncjobs.settle import Settler, WorkerStats
from asyncjobs.waiters import Waiters

log = logging.getLogger(__name__)

_FETCH_BACKOFF = (0.1, 5.0)  # first and longest wait (s) before fetching again after a broker error
_STUCK_GRACE = 5.0  # seconds a cancelled job may take to unwind before its runner is stopped


_DONE = Outcome("done")  # most handlers return nothing: one shared (immutable) outcome for them all


async def invoke(job: Job) -> Outcome:
    """The innermost layer: call the handler; arguments that do not fit its signature are permanent."""
    env = job.envelope
    try:
        # An async def binds its arguments here and runs nothing yet.
        call = job.spec.fn(*env.args, **env.kwargs) if env.kwargs else job.spec.fn(*env.args)
    except TypeError as exc:
        raise PermanentError(f"bad arguments for task {env.task!r}: {exc}") from None
    result = await call
    return _DONE if result is None else Outcome("done", "ok", None, 0.0, result)


class Worker:
    """Runs an :class:`App`'s tasks from its broker until stopped.

    Holds at most ``config.leases_held`` leases and runs ``config.concurrency`` jobs at once,
    each in its own cancel scope. One lease keeper extends every held lease per heartbeat.
    :meth:`stop` (or SIGTERM/SIGINT) stops fetching, gives back jobs that have not started,
    lets running jobs finish for ``drain_seconds``, then cancels and gives back the rest at
    once; a second stop gives everything back immediately.
    """

    def __init__(self, app: App, config: WorkerConfig | None = None, *, middleware: Sequence[Middleware] = ()) -> None:
        self.app = app
        self.config = config or WorkerConfig()
        self.stats = WorkerStats()
        dedupe = [DedupeMiddleware(app.dedupe)] if app.dedupe is not None else []
        outer = observability_layers(app.broker_url, middleware, self._cancel_reason)  # empty unless OTel SDK is set
        self._timeouts = TimeoutMiddleware()
        layers = [*outer, *middleware, *app.middleware, *dedupe, RetryMiddleware(), self._timeouts]
        self._chain: CallNext = build_chain(layers, invoke)
        self._stop_requests = 0
        self._stopping: anyio.Event | None = None
        self._drain_over: anyio.Event | None = None
        self._buffer: deque[Held] = deque()  # fetched, leased, not started yet
        self._idle = Waiters()  # runners waiting for the buffer to get jobs (or fetching to end)
        self._room = Waiters()  # the fetch loop, waiting for a lease slot to free up (or a stop)
        self._fetch_over = False
        self._fetching = False  # a fetch is in flight (the fetch loop's, or a runner's refill)
        self._consumer: Consumer | None = None
        self.keeper: LeaseKeeper | None = None
        self._runners: anyio.CancelScope | None = None
        self.stall = StallDetector(self.config.stall_seconds)
        self.ready = threading.Event()

    @property
    def broker(self) -> Broker:
        """The app's broker."""
        return self.app.broker

    def _cancel_reason(self, job: Job) -> str | None:
        """Why the worker cancelled ``job``: ``lease_lost``, ``shutdown``, or ``None`` (it did not)."""
        held = job.held
        if held is None:
            return None
        return "lease_lost" if held.lost else "shutdown" if held.stopping else None

    @property
    def stopping(self) -> bool:
        """Whether a shutdown has been asked for."""
        return self._stop_requests > 0

    def stop(self) -> None:
        """Begin a graceful shutdown; a second call stops at once. Call from the worker's loop."""
        self._stop_requests += 1
        if self._stopping is not None:
            self._stopping.set()
            self._room.wake_all()
            if self._stop_requests > 1 and self._drain_over is not None:
                self._drain_over.set()

    async def run(self) -> WorkerStats:
        """Work until :meth:`stop` is called or a shutdown signal arrives; return the counts."""
        self.config.check_tasks(self.app.tasks.values())
        self._stopping, self._drain_over = anyio.Event(), anyio.Event()
        self._idle, self._room, self._fetch_over = Waiters(), Waiters(), False
        if self._stop_requests:
            self._stopping.set()
        await self.broker.connect()
        self._timeouts.deadlines.bind(asyncio.get_running_loop())
        consumer = await self.broker.consumer(
            self.config.queues, prefetch=self.config.leases_held, lease_seconds=self.config.lease_seconds
        )
        self._consumer = consumer
        keeper = self.keeper = LeaseKeeper(consumer, self.config.lease_seconds, self.config.heartbeat)
        settler = Settler(consumer, self.stats, self._free)
        try:
            async with anyio.create_task_group() as services:
                services.start_soon(keeper.run)
                services.start_soon(settler.acks.run)
                services.start_soon(self.stall.run)
                services.start_soon(self._drain_deadline, keeper)
                if self.config.shutdown_signals and threading.current_thread() is threading.main_thread():
                    await services.start(self._watch_signals)
                async with anyio.create_task_group() as runners:
                    self._runners = runners.cancel_scope
                    for _ in range(self.config.concurrency):
                        runners.start_soon(self._runner, settler)
                    self.ready.set()
                    log.info(
                        "worker started: queues=%s concurrency=%d",
                        ",".join(self.config.queues),
                        self.config.concurrency,
                    )
                    await self._fetch_loop(consumer, keeper)
                with anyio.CancelScope(shield=True):
                    await settler.acks.flush()
                    await self._give_back_the_rest(settler, keeper)
                services.cancel_scope.cancel()
        finally:
            self._timeouts.deadlines.bind(None)
            with anyio.CancelScope(shield=True):
                await consumer.close()
        log.info("worker stopped: %s", self.stats)
        return self.stats

    async def _give_back_the_rest(self, settler: Settler, keeper: LeaseKeeper) -> None:
        """Release leases no runner settled (runners stopped while jobs were stuck or buffered)."""
        self._buffer.clear()
        for held in [h for h in keeper.held.values() if not h.settling and not h.lost]:
            await settler.release(held)

    def _free(self, helds: Sequence[Held]) -> None:
        """Lease slots are free again (their jobs were settled, given back or lost)."""
        assert self.keeper is not None
        self.keeper.remove(helds)
        if self._room:
            self._room.wake_all()

    async def _watch_signals(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                how = "stopping now" if self._stop_requests else "draining, send again to stop now"
                log.warning("received %s: %s", signal.Signals(signum).name, how)
                self.stop()

    async def _fetch_loop(self, consumer: Consumer, keeper: LeaseKeeper) -> None:
        """Lease as many jobs as there are free slots, one broker call at a time."""
        assert self._stopping is not None
        stopping, wait = self._stopping, self.config.fetch_wait_seconds
        backoff = _FETCH_BACKOFF[0]
        try:
            most = self.config.leases_held
            batch = max(1, (most - self.config.concurrency) // 2)  # with prefetch > concurrency, fetch in batches
            while not stopping.is_set():
                free = most - len(keeper.held)
                if free <= 0 or (free < batch and self._buffer):  # runners still have work: let slots add up
                    await self._room.wait()  # woken when a slot frees or a stop is asked for
                    continue
                if self._fetching:  # a runner is leasing jobs (see _refill): it wakes this loop when done
                    await self._room.wait()
                    continue
                try:
                    self._fetching = True
                    try:
                        deliveries = await consumer.fetch(free, wait)
                    finally:
                        self._fetching = False
                except Exception as exc:  # the broker is away: keep the leases we hold, try again later
                    log.error("fetch failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, backoff)
                    with anyio.move_on_after(backoff * (0.5 + random.random() / 2)):
                        await stopping.wait()
                    backoff = min(backoff * 2, _FETCH_BACKOFF[1])
                    continue
                backoff = _FETCH_BACKOFF[0]
                if deliveries:
                    self._buffer.extend(keeper.add(deliveries))  # kept alive from now on
                    self._idle.wake_one()  # it passes the baton on if more jobs wait (see _runner)
        finally:
            self._fetch_over = True
            self._idle.wake_all()

    async def _refill(self, settler: Settler) -> bool:
        """Lease the next jobs from a runner that ran out of work while the fetch loop waits for free slots.

        The runner settles the acks in hand (freeing their slots) and fetches without waiting, in
        its own task, instead of waking the ack batcher and the fetch loop in turn and parking: a
        worker of short jobs goes round the event loop once per batch rather than three times.
        Whether or not it found jobs, the fetch loop is woken afterwards to wait for the next ones.
        """
        assert self.keeper is not None and self._consumer is not None
        keeper, found = self.keeper, False
        self._fetching = True
        try:
            await settler.acks.flush()
            free = self.config.leases_held - len(keeper.held)
            if free > 0 and not self._stop_requests:
                deliveries = await self._consumer.fetch(free, 0.0)
                if deliveries:
                    self._buffer.extend(keeper.add(deliveries))
                    found = True
        except Exception as exc:  # nothing was leased: the fetch loop, woken below, tries again
            log.warning(
                "a runner's fetch of the next jobs failed (%s: %s); the fetch loop goes on", type(exc).__name__, exc
            )
        finally:
            self._fetching = False
            self._room.wake_all()
        return found

    async def _drain_deadline(self, keeper: LeaseKeeper) -> None:
        assert self._stopping is not None
        assert self._drain_over is not None
        await self._stopping.wait()
        with anyio.move_on_after(self.config.drain_seconds):
            await self._drain_over.wait()
        running = [h for h in keeper.held.values() if h.running]
        if running:
            log.warning("drain time over: cancelling %d running jobs and giving them back", len(running))
        for held in running:
            held.stopping = True
            held.cancel()
        # A job stuck in middleware outside its own scope does not hold the worker up for long.
        with anyio.move_on_after(_STUCK_GRACE):
            while any(h.running for h in keeper.held.values()):  # noqa: ASYNC110 - a short, bounded poll
                await anyio.sleep(0.05)
        if self._runners is not None and any(h.running for h in keeper.held.values()):
            log.error("jobs still running %ss after they were cancelled: stopping their runners", _STUCK_GRACE)
            self._runners.cancel()

    async def _runner(self, settler: Settler) -> None:
        assert self._stopping is not None
        task = asyncio.current_task()
        slot = self.stall.slot(task)
        buffer, idle, chain, acks = self._buffer, self._idle, self._chain, settler.acks
        try:
            while True:
                if not buffer:
                    if self._fetch_over:
                        return
                    if self._room and not self._fetching and await self._refill(settler):
                        await asyncio.sleep(0)  # the loop's other tasks (heartbeats, acks, signals) get their turn
                        continue
                    await idle.wait()
                    continue
                held = buffer.popleft()
                if buffer and idle.parked:  # pass the baton: another runner takes the next job if this one blocks
                    idle.wake_one()
                if held.lost:
                    self.stats.lease_lost += 1
                    self._free((held,))
                elif self._stop_requests:
                    await settler.release(held)
                else:
                    slot.held = held
                    held.running = True
                    try:
                        job = self._prepare(held)
                        outcome: Outcome | None = await chain(job) if isinstance(job, Job) else job
                    except Interrupted:
                        outcome = None
                    finally:
                        held.running = False
                        slot.held = None
                    if outcome is not None and outcome.kind in ("done", "skipped") and not held.lost:
                        held.settling = True  # the common case: acked in the next batch, no await
                        held.outcome = outcome.kind
                        acks.push(held)
                    else:
                        await self._settle(held, outcome, settler)
        finally:
            if task is not None:
                self.stall.slots.pop(task, None)

    def _prepare(self, held: Held) -> Job | Outcome:
        """Decode a delivery into the :class:`Job` to run, or the outcome of a job that must not run.

        Bad input (a body that does not decode, an unknown task) and a job whose deliveries have
        used up its attempts are dead-lettered without reaching the middleware chain.
        """
        delivery = held.delivery
        held.started = started = wall_time()
        env = delivery.envelope  # the in-memory broker's: what decoding the body would give
        if env is None:
            try:
                env = decode(delivery.body)
            except Exception as exc:  # whatever a body provokes, it is bad input to dead-letter, never a crash
                unreadable = (
                    exc if isinstance(exc, EnvelopeError) else EnvelopeError(f"message could not be read: {exc!r}")
                )
                return Outcome("dead", "malformed", unreadable)
        held.envelope = env
        attempt = env.attempt + delivery.delivery_count - 1
        held.task, held.attempt = env.task, attempt
        spec = self.app.tasks.get(env.task)
        if spec is None:
            unknown = UnknownTaskError(f"no task named {env.task!r} is registered")
            return Outcome("dead", "unknown_task", unknown)
        job = Job(env, delivery, spec, attempt, started, {}, held)
        most = job.max_attempts
        if attempt > most:
            error = AsyncJobsError(
                f"delivered {delivery.delivery_count} times without being settled (crashed or lost its lease); "
                f"attempt {attempt} exceeds max_attempts={most}"
            )
            return Outcome("dead", "max_attempts", error)
        return job

    async def _settle(self, held: Held, outcome: Outcome | None, settler: Settler) -> None:
        if held.lost:  # the job may run elsewhere now: never settle it here
            self.stats.lease_lost += 1
            self._free((held,))
        elif outcome is None:  # cancelled by shutdown before an outcome: give it back now
            await settler.release(held)
        else:
            held.settling = True
            with anyio.CancelScope(shield=True):
                await settler.settle(held, held.envelope, outcome, held.started)


async def run_worker(app: App, config: WorkerConfig | None = None) -> WorkerStats:
    """Run a worker for ``app`` until a shutdown signal; the CLI's entry point."""
    return await Worker(app, config).run()
