"""The App: task registry, broker selection and the enqueue API."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any, Generic, Protocol, TypeVar, overload

import anyio

from asyncjobs.broker import Broker, OutgoingJob, from_url
from asyncjobs.clock import wall_time
from asyncjobs.dedupe.store import DedupeStore, key_for
from asyncjobs.envelope import Envelope, new_id
from asyncjobs.errors import ConfigError, PayloadTooLargeError
from asyncjobs.lifecycle import Hook, Lifecycle
from asyncjobs.middleware.chain import Middleware
from asyncjobs.middleware.messaging import Messaging, messaging_for
from asyncjobs.middleware.tracing import TracingProducerMiddleware, tracing_enabled
from asyncjobs.results import handle as _jobs
from asyncjobs.results.store import JobStatus, ResultStore
from asyncjobs.retrying import DEFAULT_PERMANENT, DEFAULT_RETRYABLE, Backoff, RetryPolicy
from asyncjobs.task import CallOptions, P, R, Task, TaskOptions, TaskSpec

DEFAULT_BROKER_URL = "memory://"
BROKER_URL_ENV = "ASYNCJOBS_BROKER_URL"

Publish = Callable[[Sequence[Envelope]], Awaitable[list[bool]]]
F = TypeVar("F")
H = TypeVar("H", bound=Hook)
log = logging.getLogger(__name__)


class ProducerMiddleware(Protocol):
    """Wraps every enqueue: may replace envelopes (e.g. add trace headers) before publishing."""

    async def __call__(self, envelopes: Sequence[Envelope], call_next: Publish) -> list[bool]:
        """Publish ``envelopes`` through ``call_next``, returning its result."""
        ...


class EnqueueGuard(Protocol):
    """Enqueue-time dedupe for brokers that cannot do it themselves (see ``DedupeStore``)."""

    async def claim_enqueue(self, key: str, ttl: float) -> bool:
        """Claim ``key`` for ``ttl`` seconds; ``False`` when it is taken."""
        ...

    async def release_enqueue(self, key: str) -> None:
        """Undo :meth:`claim_enqueue` of a job the broker did not accept, so a later enqueue may claim it."""
        ...


@dataclass(frozen=True, slots=True)
class JobRef(Generic[R]):
    """What an enqueue returns (and :meth:`App.job` gives for a known id): a handle on one job.

    ``accepted`` is ``False`` when an idempotency key blocked the enqueue. ``JobRef[R]`` is typed
    with the handler's return type; :meth:`result` gives a JSON round trip of that value.
    """

    id: str
    task: str
    queue: str
    accepted: bool = True
    app: App | None = field(default=None, repr=False, compare=False)

    def _app(self) -> App:
        if self.app is None:
            raise ConfigError("this JobRef has no app; get one from App.job(job_id)")
        return self.app

    async def status(self) -> JobStatus:
        """What became of the job: queued, scheduled, running, retrying, done, dead, cancelled or unknown."""
        return await _jobs.status(self._app(), self.id)

    async def result(self, timeout: float | None = None) -> R:  # noqa: ASYNC109 - a wait, not a scope
        """The handler's return value, waiting up to ``timeout`` seconds (``None``: no limit).

        Raises :class:`~asyncjobs.errors.JobFailedError` (with the failure) for a dead job,
        :class:`~asyncjobs.errors.JobCancelledError` for a cancelled one and
        :class:`~asyncjobs.errors.ResultTimeoutError` when time runs out.
        """
        value: R = await _jobs.result(self._app(), self.id, self.task or None, timeout)
        return value

    async def cancel(self) -> JobStatus:
        """Cancel the job: a queued or scheduled job will not run, a running one is cancelled within a heartbeat."""
        return await _jobs.cancel(self._app(), self.id)


class App:
    """A set of tasks bound to a broker.

    ``broker`` is a URL (``memory://``, ``redis://...``, ``amqp://...``) or a broker object;
    by default ``$ASYNCJOBS_BROKER_URL``, else ``memory://``. ``middleware`` wraps every handler
    (outermost first) inside the built-in tracing layer and outside dedupe, retry and timeout.

    ``dedupe`` is the store of idempotency records: with it, a job enqueued with a ``key`` runs
    to completion at most once per key within the task's ``unique_ttl``, and it guards enqueues
    on brokers that cannot refuse a duplicate key themselves. ``deterministic_keys=True`` gives
    every call without an explicit key the key :func:`asyncjobs.dedupe.key_for` derives from the
    task name and its arguments, so the same call is not enqueued (nor run) twice.

    ``state`` is a namespace for what the app's startup hooks open (a database pool, a client):
    handlers reach it as ``asyncjobs.current_job().app.state`` (see :meth:`on_startup`).
    """

    def __init__(
        self,
        broker: str | Broker | None = None,
        *,
        middleware: Sequence[Middleware] = (),
        producer_middleware: Sequence[ProducerMiddleware] = (),
        enqueue_guard: EnqueueGuard | None = None,
        max_payload_bytes: int = 1024 * 1024,
        default_queue: str = "default",
        dedupe: DedupeStore | None = None,
        deterministic_keys: bool = False,
        results: ResultStore | None = None,
    ) -> None:
        if max_payload_bytes <= 0:
            raise ConfigError(f"max_payload_bytes must be > 0, got {max_payload_bytes}")
        self._broker: Broker | None = None if broker is None or isinstance(broker, str) else broker
        self.broker_url = broker if isinstance(broker, str) else os.environ.get(BROKER_URL_ENV, DEFAULT_BROKER_URL)
        if self._broker is not None:
            self.broker_url = self._broker.url
        self.tasks: dict[str, TaskSpec] = {}
        self.middleware = list(middleware)
        self.producer_middleware = list(producer_middleware)
        self._tracing: TracingProducerMiddleware | None = None  # outermost; used only while an SDK is set
        given = [m for m in self.producer_middleware if isinstance(m, TracingProducerMiddleware)]
        for layer in given:  # completed with what the app knows of its broker
            if layer.system == "unknown":
                layer.messaging = self._messaging
        if not given:
            self._tracing = TracingProducerMiddleware(messaging=self._messaging)
        self.dedupe = dedupe
        self.deterministic_keys = deterministic_keys
        self.enqueue_guard = enqueue_guard if enqueue_guard is not None else dedupe
        self.max_payload_bytes = max_payload_bytes
        self.default_queue = default_queue
        self._results = results
        self._results_chosen = self._results_given = results is not None

        self.state = SimpleNamespace()
        self.lifecycle = Lifecycle()

    def on_startup(self, hook: H) -> H:
        """Register an ``async def`` of no arguments that every worker runs before its first fetch.

        Keep what it opens on :attr:`state`. Hooks run in the order they were registered; one that
        raises stops the worker with :class:`~asyncjobs.errors.StartupError` (see
        :mod:`asyncjobs.lifecycle`).
        """
        self.lifecycle.add(self.lifecycle.startup, hook)
        return hook

    def on_shutdown(self, hook: H) -> H:
        """Register an ``async def`` of no arguments that every worker runs after its last job is settled.

        Shutdown hooks run in the reverse order of registration, after a startup that succeeded.
        """
        self.lifecycle.add(self.lifecycle.shutdown, hook)
        return hook

    def _messaging(self) -> Messaging:
        return messaging_for(self.broker_url)

    @property
    def results(self) -> ResultStore | None:
        """The result store: the one passed as ``results=``, else the broker's natural one (none for ``amqp://``)."""
        if not self._results_chosen:
            self._results, self._results_chosen = _jobs.natural_store(self), True
        return self._results

    def job(self, job_id: str, task: str = "") -> JobRef[Any]:
        """A handle on the job ``job_id`` (enqueued here or by another process)."""
        return JobRef(job_id, task, "", True, self)

    @property
    def broker(self) -> Broker:
        """The broker, created from :attr:`broker_url` on first use (not yet connected)."""
        if self._broker is None:
            self._broker = from_url(self.broker_url)
        return self._broker

    def use_broker(self, broker: str | Broker) -> None:
        """Switch to another broker (a URL or an object) before connecting."""
        self._broker = None if isinstance(broker, str) else broker
        self.broker_url = broker if isinstance(broker, str) else broker.url
        self._results_chosen = self._results_given  # a natural result store follows the broker

    async def __aenter__(self) -> App:
        await self.broker.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.close()

    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        timeout: float | None = 60.0,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        retry_on: Sequence[type[BaseException]] = (),
        permanent_on: Sequence[type[BaseException]] = (),
        retry_unknown: bool = True,
        unique_ttl: float = 3600.0,
        keep_result: float | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], Task[P, R]]: ...

    def task(  # type: ignore[misc]
        self,
        fn: Callable[P, Awaitable[R]] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        timeout: float | None = 60.0,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        retry_on: Sequence[type[BaseException]] = (),
        permanent_on: Sequence[type[BaseException]] = (),
        retry_unknown: bool = True,
        unique_ttl: float = 3600.0,
        keep_result: float | None = None,
    ) -> Task[P, R] | Callable[[Callable[P, Awaitable[R]]], Task[P, R]]:
        """Register an ``async def`` as a task (``@app.task`` or ``@app.task(timeout=...)``).

        ``retry_on`` / ``permanent_on`` extend the default classification (timeouts, connection
        errors and ``Retry`` retry; ``PermanentError``, bad payloads and unknown tasks do not);
        ``retry_unknown`` decides for every other exception. ``keep_result`` is how many seconds
        the job's status and result are kept (0: not kept); by default an hour for a handler
        annotated to return a value, off for ``-> None`` or no annotation.
        """
        options = TaskOptions(
            queue=queue or self.default_queue,
            timeout=timeout,
            retry=RetryPolicy(
                max_attempts=max_attempts,
                backoff=backoff or Backoff(),
                retry_on=(*DEFAULT_RETRYABLE, *retry_on),
                permanent_on=(*DEFAULT_PERMANENT, *permanent_on),
                retry_unknown=retry_unknown,
            ),
            unique_ttl=unique_ttl,
        )

        def register(handler: Callable[P, Awaitable[R]]) -> Task[P, R]:
            if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(inspect.unwrap(handler))):
                raise ConfigError(
                    f"task {getattr(handler, '__name__', handler)!r} must be an 'async def' function "
                    "(run blocking code inside one with asyncjobs.run_sync)"
                )
            task_name = name or f"{handler.__module__}.{handler.__qualname__}"
            if task_name in self.tasks and self.tasks[task_name].fn is not handler:
                raise ConfigError(f"a different task is already registered as {task_name!r}; pass name=...")
            keep = keep_result if keep_result is not None else _jobs.default_keep(handler)
            spec = TaskSpec(task_name, handler, replace(options, keep_result=keep), inspect.signature(handler), app=self)
            self.tasks[task_name] = spec
            return Task(self, spec)

        return register(fn) if fn is not None else register

    def build(self, spec: TaskSpec, call: CallOptions, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Envelope:
        """The envelope of one call, with its arguments checked against the handler's signature."""
        try:
            spec.check_arguments(args, kwargs)
        except TypeError as exc:
            raise TypeError(f"task {spec.name!r}: {exc}") from None
        now = wall_time()
        extra: dict[str, Any] = {}
        if call.max_attempts is not None:
            extra["max_attempts"] = call.max_attempts
        return Envelope(
            task=spec.name,
            args=tuple(args),
            kwargs=dict(kwargs),
            id=call.job_id or new_id(),
            queue=call.queue or spec.options.queue,
            enqueued_at=now,
            not_before=call.at if call.at is not None else now + call.delay if call.delay else None,
            timeout=call.timeout,
            key=call.key or (key_for(spec.name, args, kwargs) if self.deterministic_keys else None),
            headers=dict(call.headers or {}),
            extra=extra,
        )

    async def enqueue_call(
        self, spec: TaskSpec, call: CallOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> JobRef[Any]:
        """Enqueue one call of a registered task (what :meth:`Task.enqueue` does)."""
        [ref] = await self.publish([self.build(spec, call, args, kwargs)])
        return ref

    async def enqueue_many(
        self, task: Task[P, R], calls: Iterable[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> list[JobRef[R]]:
        """Enqueue many calls of one task in as few broker round trips as the broker allows.

        Build each call with ``task.call(...)`` so the type checker sees the handler's signature.
        """
        envelopes = [self.build(task.spec, task._call, args, kwargs) for args, kwargs in calls]
        return await self.publish(envelopes)

    async def enqueue(self, task_name: str, *args: Any, **kwargs: Any) -> JobRef[Any]:
        """Enqueue by task name (when the handler is not importable here); not type-checked."""
        spec = self.tasks.get(task_name)
        if spec is None:
            spec = TaskSpec(task_name, _unknown, TaskOptions(queue=self.default_queue), inspect.signature(_unknown))
        return await self.enqueue_call(spec, CallOptions(), args, kwargs)

    async def publish(self, envelopes: Sequence[Envelope]) -> list[JobRef[Any]]:
        """Send built envelopes through the producer middleware to the broker."""
        call: Publish = self._send
        for layer in reversed(self.producer_middleware):
            call = _bind_producer(layer, call)
        if self._tracing is not None and tracing_enabled():
            call = _bind_producer(self._tracing, call)
        accepted = await call(envelopes)
        await _jobs.record_enqueued(self, envelopes, accepted)  # job handles: "queued" for tasks that keep results
        return [JobRef(e.id, e.task, e.queue, ok, self) for e, ok in zip(envelopes, accepted, strict=True)]

    async def _send(self, envelopes: Sequence[Envelope]) -> list[bool]:
        jobs: list[OutgoingJob] = []
        blocked: set[int] = set()
        claimed: list[str] = []  # enqueue-guard keys to give back if the broker does not take the jobs
        try:
            for index, env in enumerate(envelopes):
                body = env.encode()
                if len(body) > self.max_payload_bytes:
                    raise PayloadTooLargeError(
                        f"job {env.task!r} encodes to {len(body)} bytes, over max_payload_bytes={self.max_payload_bytes}"
                    )
                ttl = self.tasks[env.task].options.unique_ttl if env.task in self.tasks else 3600.0
                guard = self.enqueue_guard if env.key and not self.broker.supports_unique else None
                if env.key and guard is None and not self.broker.supports_unique and not self._dedupes_at_run():
                    raise ConfigError(unguarded_key_message(env.task, env.key, self.broker_url))
                if guard is not None and env.key:
                    if not await guard.claim_enqueue(env.key, ttl):
                        blocked.add(index)
                        continue
                    claimed.append(env.key)
                jobs.append(OutgoingJob(env.id, env.queue, body, env.not_before, env.key, ttl if env.key else 0.0, env))
            stored = iter(await self.broker.enqueue(jobs) if jobs else [])
        except BaseException:
            if claimed:
                await self._unclaim(claimed)
            raise
        return [False if i in blocked else next(stored) for i in range(len(envelopes))]

    def _dedupes_at_run(self) -> bool:
        """Whether a worker of this app skips a duplicate of a done job (a dedupe store or layer)."""
        from asyncjobs.middleware.dedupe import DedupeMiddleware

        return self.dedupe is not None or any(isinstance(m, DedupeMiddleware) for m in self.middleware)

    async def _unclaim(self, keys: Sequence[str]) -> None:
        """Give back enqueue-guard keys of jobs that were not enqueued (else a retry would be refused)."""
        assert self.enqueue_guard is not None
        with anyio.CancelScope(shield=True):
            for key in keys:
                try:
                    await self.enqueue_guard.release_enqueue(key)
                except Exception as exc:
                    log.error("could not release idempotency key %r of a job that was not enqueued: %s", key, exc)


def unguarded_key_message(task: str, key: str, broker_url: str) -> str:
    """Why a job with an idempotency key is refused on a broker that cannot dedupe it, and the fix."""
    scheme = broker_url.partition("://")[0]
    return (
        f"job {task!r} has key={key!r}, but {scheme}:// cannot refuse a duplicate at enqueue and this app has no "
        "dedupe store, so the key would be ignored: give the app one (App(dedupe=RedisDedupeStore.from_url(...)) "
        "or PostgresDedupeStore(...)), an enqueue_guard, or the DedupeMiddleware its workers run; or drop the key"
    )


def _bind_producer(layer: ProducerMiddleware, call_next: Publish) -> Publish:
    async def call(envelopes: Sequence[Envelope]) -> list[bool]:
        return await layer(envelopes, call_next)

    return call


async def _unknown(*args: Any, **kwargs: Any) -> None:  # placeholder signature for by-name enqueue
    raise NotImplementedError
