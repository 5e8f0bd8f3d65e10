"""The worker: fetch under leases, run each job in its own cancel scope, settle, shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import anyio
import anyio.abc

from asyncjobs.app import App
from asyncjobs.attempt import Attempt
from asyncjobs.broker import Broker, Consumer, Delivery, safe_url
from asyncjobs.clock import wall_time
from asyncjobs.config import WorkerConfig
from asyncjobs.envelope import decode
from asyncjobs.errors import (
    AsyncJobsError,
    BadOutcomeError,
    EnvelopeError,
    PayloadTooLargeError,
    PermanentError,
    UnknownTaskError,
)
from asyncjobs.job import CURRENT, Job, Outcome
from asyncjobs.leases import LeaseKeeper, StallDetector
from asyncjobs.middleware.chain import CallNext, Middleware, build_chain, not_an_outcome
from asyncjobs.middleware.dedupe import DedupeMiddleware
from asyncjobs.middleware.retry import RetryMiddleware, classify_failure
from asyncjobs.middleware.timeout import TimeoutMiddleware
from asyncjobs.middleware.tracing import observability_layers
from asyncjobs.results.watch import JobWatcher
from asyncjobs.settle import Settler, WorkerStats
from asyncjobs.waiters import Waiters

log = logging.getLogger(__name__)

_FETCH_BACKOFF = (0.1, 5.0)  # first and longest wait (s) before fetching again after a broker error
_STUCK_GRACE = 5.0  # seconds cancelled jobs (and the last acks) may take to unwind before the worker stops anyway
_HARD_GRACE = 1.0  # the same after a second stop
_CLOSE_SECONDS = 5.0  # the consumer's close (giving back what it still holds) is abandoned after this
_NO_HEARTBEAT_SHARE = 0.9  # with heartbeats off, a job's timeout is capped at this share of the lease


_DONE = Outcome("done")  # most handlers return nothing: one shared (immutable) outcome for them all


async def invoke(job: Job) -> Outcome:
    """The innermost layer: call the handler; arguments that do not fit its signature are permanent."""
    env = job.envelope
    try:
        # An async def binds its arguments here and runs nothing yet.
        call = job.spec.fn(*env.args, **env.kwargs) if env.kwargs else job.spec.fn(*env.args)
    except TypeError as exc:
        raise PermanentError(f"bad arguments for task {env.task!r}: {exc}") from None
    token = CURRENT.set(job)  # asyncjobs.current_job() in the handler (and the tasks it starts)
    try:
        result = await call
    finally:
        CURRENT.reset(token)
    return _DONE if result is None else Outcome("done", "ok", None, 0.0, result)


class Worker:
    """Runs an :class:`App`'s tasks from its broker until stopped.

    Holds at most ``config.leases_held`` leases and runs ``config.concurrency`` jobs at once. One
    path per concern: the fetch loop is the only code that leases jobs, each runner takes one
    buffered delivery at a time and runs it in the delivery's own cancel scope
    (:class:`~asyncjobs.attempt.Attempt`), and :meth:`Settler.settle <asyncjobs.settle.Settler.settle>`
    is the only way a delivery leaves a runner. Whatever the chain produces (an outcome, an
    exception from any layer, ``None``, a cancellation the worker did not ask for) becomes one
    outcome there, counted once.

    :meth:`stop` (or SIGTERM/SIGINT) stops fetching, gives back jobs that have not started at
    once, lets running jobs finish for ``drain_seconds``, then cancels and gives back the rest; a
    second stop does that at once. :meth:`run` returns within the drain time plus a few seconds.
    """

    def __init__(self, app: App, config: WorkerConfig | None = None, *, middleware: Sequence[Middleware] = ()) -> None:
        self.app = app
        self.config = config or WorkerConfig()
        self.stats = WorkerStats()
        self._middleware = tuple(middleware)
        self._chain: CallNext = invoke  # the whole chain is composed by run(), after the startup hooks
        self._claim_keepers: list[DedupeMiddleware] = []  # the chain's dedupe layers, set with it
        store = app.results  # job handles: status, results, cancel marks, progress (None: the broker keeps none)
        beat, lease = self.config.heartbeat, self.config.lease_seconds
        self.jobs = JobWatcher(app, store, beat if beat > 0 else lease / 3) if store is not None else None
        self._stop_requests = 0
        self._stopping: anyio.Event | None = None
        self._hard: anyio.Event | None = None
        self._buffer: deque[Attempt] = deque()  # fetched, leased, not started yet
        self._idle = Waiters()  # runners waiting for the buffer to get jobs (or fetching to end)
        self._room = Waiters()  # the fetch loop, waiting for a lease slot to free up (or a stop)
        self._fetch_over = False
        self._fetch_scope: anyio.CancelScope | None = None  # the fetch in flight, cancelled by a hard stop
        self._work_scope: anyio.CancelScope | None = None  # runners and acks: cancelled only if they do not unwind
        self.keeper: LeaseKeeper | None = None
        self.stall = StallDetector(self.config.stall_seconds)
        self.ready = threading.Event()

    def _build_chain(self) -> CallNext:
        """Compose the middleware chain, noting its dedupe layers (once per run: an OpenTelemetry SDK set by then is used)."""
        app, middleware = self.app, self._middleware
        beat, lease = self.config.heartbeat, self.config.lease_seconds
        dedupe = (
            [DedupeMiddleware(app.dedupe, lease_seconds=lease, heartbeat_seconds=beat)]
            if app.dedupe is not None
            else []
        )
        outer = observability_layers(app.broker_url, middleware)  # empty unless an OTel SDK is set
        placed = [  # a dedupe layer placed by hand ties its claims to this worker's leases too
            layer.for_worker(lease, beat) if isinstance(layer, DedupeMiddleware) else layer
            for layer in (*middleware, *app.middleware)
        ]
        jobs = [self.jobs] if self.jobs is not None else []  # job handles: after dedupe, before retry
        layers = [*outer, *placed, *dedupe, *jobs, RetryMiddleware(), TimeoutMiddleware()]
        self._claim_keepers = [layer for layer in layers if isinstance(layer, DedupeMiddleware)]
        return build_chain(layers, invoke)

    @property
    def broker(self) -> Broker:
        """The app's broker."""
        return self.app.broker

    @property
    def stopping(self) -> bool:
        """Whether a shutdown has been asked for."""
        return self._stop_requests > 0

    def stop(self) -> None:
        """Begin a graceful shutdown; a second call stops at once. Call from the worker's event loop."""
        self._stop_requests += 1
        if self._stopping is None or self._hard is None:
            return  # not running yet: run() starts stopped
        self._stopping.set()
        if self._stop_requests > 1:
            self._hard.set()
        self._room.wake_all()
        self._idle.wake_all()

    async def run(self) -> WorkerStats:
        """Work until :meth:`stop` is called or a shutdown signal arrives; return the counts."""
        self.config.check_tasks(self.app.tasks.values())
        self._stopping, self._hard = anyio.Event(), anyio.Event()
        self._idle, self._room, self._fetch_over = Waiters(), Waiters(), False
        if self._stop_requests:
            self._stopping.set()
        if self._stop_requests > 1:
            self._hard.set()
        await self.broker.connect()
        with self._signal_receiver() as signals:  # handled until the consumer is closed: never a kill mid-close
            async with self.app.lifecycle.running():  # startup hooks before the first fetch, shutdown after
                self._chain = self._build_chain()  # a startup hook may have configured OpenTelemetry
                return await self._serve(signals)

    def _signal_receiver(self) -> contextlib.AbstractContextManager[AsyncIterator[int] | None]:
        """SIGTERM/SIGINT caught for the whole run (from the first fetch until the consumer has closed)."""
        if self.config.shutdown_signals and threading.current_thread() is threading.main_thread():
            return anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT)
        return contextlib.nullcontext()

    async def _serve(self, signals: AsyncIterator[int] | None = None) -> WorkerStats:
        """Consume until stopped; when it returns, every job it took is settled or given back."""
        consumer = await self.broker.consumer(
            self.config.queues, prefetch=self.config.leases_held, lease_seconds=self.config.lease_seconds
        )
        keeper = self.keeper = LeaseKeeper(consumer, self.config.lease_seconds, self.config.heartbeat)
        settler = Settler(consumer, self.stats, self._free, self.jobs.record if self.jobs else None)
        try:
            async with anyio.create_task_group() as services:
                services.start_soon(keeper.run)
                for layer in self._claim_keepers:  # dedupe claims: extended in one call per heartbeat
                    services.start_soon(layer.keep_claims)
                services.start_soon(self.stall.run)
                if self.jobs is not None:
                    self.jobs.bind(keeper.held)
                    services.start_soon(self.jobs.run)
                if signals is not None:
                    services.start_soon(self._watch_signals, signals)
                services.start_soon(self._stop_when_asked, keeper, settler)
                with anyio.CancelScope() as self._work_scope:
                    await self._work(consumer, keeper, settler)
                services.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_SECONDS):
                await consumer.close()  # gives back whatever is still leased (jobs abandoned by a hard stop)
        log.info("worker stopped: %s", self.stats)
        return self.stats

    async def _work(self, consumer: Consumer, keeper: LeaseKeeper, settler: Settler) -> None:
        """Fetch and run until stopped, then wait for the last acks."""
        async with anyio.create_task_group() as settling:
            settling.start_soon(settler.acks.run)
            try:
                async with anyio.create_task_group() as runners:
                    for _ in range(self.config.concurrency):
                        runners.start_soon(self._runner, settler)
                    self.ready.set()
                    self._log_start()
                    await self._fetch_loop(consumer, keeper, settler)
            finally:
                settler.acks.close()  # the batcher sends what is pending, waits for the answer, returns

    def _log_start(self) -> None:
        config = self.config
        log.info(
            "worker started: broker=%s queues=%s concurrency=%d prefetch=%d lease=%gs heartbeat=%s drain=%gs tasks=%s",
            safe_url(self.app.broker_url),
            ",".join(config.queues),
            config.concurrency,
            config.leases_held,
            config.lease_seconds,
            f"{config.heartbeat:g}s" if config.heartbeat > 0 else "off",
            config.drain_seconds,
            ",".join(sorted(self.app.tasks)) or "none",
        )

    def _free(self, attempts: Sequence[Attempt]) -> None:
        """Lease slots are free again (their jobs were settled, given back or lost)."""
        assert self.keeper is not None
        self.keeper.remove(attempts)
        if self._room:
            self._room.wake_all()

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            how = "stopping now" if self._stop_requests else "draining, send again to stop now"
            log.warning("received %s: %s", signal.Signals(signum).name, how)
            self.stop()

    async def _fetch_loop(self, consumer: Consumer, keeper: LeaseKeeper, settler: Settler) -> None:
        """The only code that leases jobs: as many as there are free slots, one broker call at a time."""
        assert self._stopping is not None
        stopping, wait = self._stopping, self.config.fetch_wait_seconds
        backoff = _FETCH_BACKOFF[0]
        most = self.config.leases_held
        batch = max(1, (most - self.config.concurrency) // 2)  # with prefetch > concurrency, fetch in batches
        try:
            while not self._stop_requests:
                free = most - len(keeper.held)
                if free <= 0 or (free < batch and self._buffer):  # runners still have work: let slots add up
                    await self._room.wait()  # woken when a slot frees or a stop is asked for
                    continue
                deliveries: list[Delivery] = []
                try:
                    with anyio.CancelScope() as self._fetch_scope:
                        deliveries = await consumer.fetch(free, wait)
                except Exception as exc:  # the broker is away: keep the leases we hold, try again later
                    log.error("fetch failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, backoff)
                    with anyio.move_on_after(backoff * (0.5 + random.random() / 2)):
                        await stopping.wait()
                    backoff = min(backoff * 2, _FETCH_BACKOFF[1])
                    continue
                finally:
                    self._fetch_scope = None
                backoff = _FETCH_BACKOFF[0]
                if deliveries:
                    self._buffer.extend(keeper.add(deliveries))  # kept alive from now on
                    self._idle.wake_one()  # it passes the baton on if more jobs wait (see _next)
        finally:
            self._fetch_over = True
            self._idle.wake_all()
            await self._give_back_buffer(settler)  # what a stop found fetched and not started

    async def _give_back_buffer(self, settler: Settler) -> None:
        rest = list(self._buffer)
        self._buffer.clear()
        await settler.give_back(rest)

    async def _stop_when_asked(self, keeper: LeaseKeeper, settler: Settler) -> None:
        """On a stop: give back unstarted jobs, wait out the drain, cancel the rest, and never wait for ever."""
        assert self._stopping is not None and self._hard is not None
        await self._stopping.wait()
        await self._give_back_buffer(settler)
        with anyio.move_on_after(self.config.drain_seconds):
            await self._hard.wait()
        running = [a for a in keeper.held.values() if a.phase == "running"]
        if running:
            log.warning("drain time over: cancelling %d running jobs and giving them back", len(running))
        for attempt in list(keeper.held.values()):
            if attempt.phase != "settling":
                attempt.cancel("shutdown")
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        with anyio.move_on_after(_STUCK_GRACE):
            await self._hard.wait()
        if self._hard.is_set():
            await anyio.sleep(_HARD_GRACE)
        stuck = [a.describe() for a in keeper.held.values() if a.phase == "running"]
        log.error(
            "jobs still running after they were cancelled (%s): stopping without them; "
            "the broker gets them back when this worker's consumer closes or their leases end",
            ", ".join(stuck) or "none; the last acks did not finish",
        )
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def _next(self) -> Attempt | None:
        """The next buffered delivery for a runner, or ``None`` once fetching is over (or stopping)."""
        buffer, idle = self._buffer, self._idle
        while not buffer or self._stop_requests:
            if self._fetch_over or self._stop_requests:
                return None
            await idle.wait()
        attempt = buffer.popleft()
        if buffer and idle.parked:  # pass the baton: another runner takes the next job if this one blocks
            idle.wake_one()
        return attempt

    async def _runner(self, settler: Settler) -> None:
        """Run buffered attempts one at a time until there are no more, each settled once.

        Every attempt runs in the runner's cancel scope, which the worker cancels (through
        :meth:`Attempt.cancel`) only while that attempt runs. A cancelled scope cannot be used
        again, so after one the attempt is settled outside it and the runner opens a new one: one
        scope per cancellation, not one per job.
        """
        task = asyncio.current_task()
        slot = self.stall.slot(task)
        try:
            while True:
                cancelled: tuple[Attempt, Outcome | None] | None = None
                with anyio.CancelScope() as scope:
                    while (attempt := await self._next()) is not None:
                        slot.held, attempt.scope = attempt, scope
                        try:
                            outcome = await self._run(attempt, scope)
                        finally:
                            slot.held = None
                        if scope.cancel_called:  # settle outside the cancelled scope, in a new one
                            cancelled = attempt, outcome
                            break
                        await settler.settle(attempt, outcome)
                if cancelled is None:
                    return  # no more work (the loop ended, not a cancellation)
                await settler.settle(*cancelled)
        finally:
            if task is not None:
                self.stall.slots.pop(task, None)

    async def _run(self, attempt: Attempt, scope: anyio.CancelScope) -> Outcome | None:
        """Run one attempt in ``scope``; the outcome to settle, or ``None`` if the worker stopped it first.

        Only a cancellation of this runner from outside (a hard stop, or the worker's caller
        cancelling :meth:`run`) propagates; the worker's cancellation of the attempt is caught by
        ``scope`` in :meth:`_runner`.
        """
        if attempt.cancel_reason is not None:  # lost or given back before it started
            return None
        attempt.phase = "running"
        prepared = self._prepare(attempt)
        if isinstance(prepared, Outcome):
            return prepared
        job = prepared
        task = asyncio.current_task()
        pending = task.cancelling() if task is not None else 0
        try:
            outcome = await self._chain(job)
            if not isinstance(outcome, Outcome):
                raise not_an_outcome("the middleware chain", outcome)
            return outcome
        except asyncio.CancelledError as exc:
            if scope.cancel_called and attempt.cancel_reason is not None:
                return None  # the worker cancelled it (lease lost, shutdown) before it produced an outcome
            if task is not None and task.cancelling() > pending:
                raise  # this runner is being cancelled, not the job
            return self._escaped(job, attempt, exc)
        except BaseException as exc:  # from a middleware (the retry layer classifies the handler's own errors)
            return self._escaped(job, attempt, exc)

    def _escaped(self, job: Job, attempt: Attempt, exc: BaseException) -> Outcome | None:
        """The outcome of an attempt whose chain raised instead of returning an outcome."""
        if attempt.cancel_reason is not None:
            return None  # raised while the worker was cancelling it: given back (shutdown) or left (lost)
        if isinstance(exc, BadOutcomeError):
            log.error("%s: %s; dead-lettered", attempt.describe(), exc)
            return Outcome("dead", "bad_outcome", exc)
        if isinstance(exc, asyncio.CancelledError):
            error: Exception = AsyncJobsError(
                "the job raised CancelledError although nothing cancelled it (did it await a task or "
                "future that someone else cancelled?)"
            )
            error.__cause__ = exc
        elif isinstance(exc, Exception):
            error = exc
        else:
            error = AsyncJobsError(f"{type(exc).__name__} raised by the job: {exc}")
            error.__cause__ = exc
        log.error("%s: %s escaped the middleware chain", attempt.describe(), type(exc).__name__, exc_info=exc)
        return classify_failure(job, error)

    def _prepare(self, attempt: Attempt) -> Job | Outcome:
        """Decode a delivery into the :class:`Job` to run, or the outcome of a job that must not run.

        Bad input (a body over ``max_payload_bytes``, a body that does not decode, an unknown task)
        and a job whose deliveries have used up its attempts are dead-lettered without reaching the
        middleware chain.
        """
        delivery = attempt.delivery
        attempt.started = started = wall_time()
        if delivery.unreadable is not None:  # the broker could not hand it over whole
            reason, message = delivery.unreadable
            return Outcome("dead", reason, EnvelopeError(message))
        limit = self.app.max_payload_bytes
        if len(delivery.body) > limit:  # a foreign producer's: ours check at enqueue
            too_large = PayloadTooLargeError(
                f"message of {len(delivery.body)} bytes is over this worker's max_payload_bytes={limit}; not run"
            )
            return Outcome("dead", "too_large", too_large)
        env = delivery.envelope  # the in-memory broker's: what decoding the body would give
        if env is None:
            try:
                env = decode(delivery.body)
            except Exception as exc:  # whatever a body provokes, it is bad input to dead-letter, never a crash
                unreadable = (
                    exc if isinstance(exc, EnvelopeError) else EnvelopeError(f"message could not be read: {exc!r}")
                )
                return Outcome("dead", "malformed", unreadable)
        attempt.envelope = env
        number = env.attempt + delivery.delivery_count - 1
        attempt.task, attempt.number = env.task, number
        spec = self.app.tasks.get(env.task)
        if spec is None:
            unknown = UnknownTaskError(f"no task named {env.task!r} is registered")
            return Outcome("dead", "unknown_task", unknown)
        job = Job(env, delivery, spec, number, started, {}, attempt)
        most = job.max_attempts
        if number > most:
            error = AsyncJobsError(
                f"delivered {delivery.delivery_count} times without being settled (crashed or lost its lease); "
                f"attempt {number} exceeds max_attempts={most}"
            )
            return Outcome("dead", "max_attempts", error)
        if self.config.heartbeat <= 0:
            job = self._capped(job)
        return job

    def _capped(self, job: Job) -> Job:
        """With heartbeats off nothing extends the lease: a job may not run longer than it lasts."""
        cap = self.config.lease_seconds * _NO_HEARTBEAT_SHARE
        timeout = job.timeout
        if timeout is not None and timeout <= cap:
            return job
        log.warning(
            "job %s (task %s): timeout %s capped to %.3gs: heartbeats are off and its lease lasts %gs",
            job.id,
            job.task,
            "none" if timeout is None else f"{timeout:g}s",
            cap,
            self.config.lease_seconds,
        )
        job.envelope = replace(job.envelope, timeout=cap)
        return job


async def run_worker(app: App, config: WorkerConfig | None = None) -> WorkerStats:
    """Run a worker for ``app`` until a shutdown signal; the CLI's entry point."""
    return await Worker(app, config).run()
