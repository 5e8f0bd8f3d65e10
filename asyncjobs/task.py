"""Task handles: a registered ``async def`` plus its options, typed with its own signature."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from asyncjobs.errors import ConfigError
from asyncjobs.retrying import RetryPolicy

if TYPE_CHECKING:
    from asyncjobs.app import App, JobRef

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task defaults; every field but ``retry`` can be overridden per call.

    ``timeout`` is seconds per attempt (``None``: no limit, the lease heartbeat keeps it alive).
    ``unique_ttl`` is how long an idempotency key blocks a second enqueue.
    ``keep_result`` is how many seconds a job's status and result are kept (0: not kept).
    """

    queue: str = "default"
    timeout: float | None = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    unique_ttl: float = 3600.0
    keep_result: float = 0.0

    @property
    def max_attempts(self) -> int:
        """Attempts allowed in all (from the retry policy)."""
        return self.retry.max_attempts

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds or None, got {self.timeout}")
        if not self.queue:
            raise ConfigError("queue must be a non-empty name")
        if self.keep_result < 0:
            raise ConfigError(f"keep_result must be >= 0 seconds, got {self.keep_result}")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What the registry keeps of a task: its name, handler, signature and options (and its app)."""

    name: str
    fn: Callable[..., Awaitable[Any]]
    options: TaskOptions
    signature: inspect.Signature
    app: App | None = field(default=None, repr=False, compare=False)  # the app it is registered on
    positional: tuple[int, float] | None = field(init=False, repr=False, compare=False)
    max_attempts: int = field(init=False, repr=False, compare=False)  # the retry policy's, read once per job

    def __post_init__(self) -> None:
        object.__setattr__(self, "positional", positional_arity(self.signature))
        object.__setattr__(self, "max_attempts", self.options.max_attempts)

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` (as a call of the handler would) unless the arguments fit its signature."""
        bounds = self.positional
        if bounds is not None and not kwargs and bounds[0] <= len(args) <= bounds[1]:
            return  # positional arguments only, as many as the handler takes: they bind
        self.signature.bind(*args, **kwargs)


def positional_arity(signature: inspect.Signature) -> tuple[int, float] | None:
    """How many positional arguments alone make a valid call: (fewest, most), or ``None`` if none do.

    A call with positional arguments only binds exactly when their number lies in that range; every
    other call is checked by :meth:`inspect.Signature.bind`, which also says what is wrong.
    """
    fewest, most = 0, 0.0
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            most += 1
            if param.default is param.empty:
                fewest = int(most)
        elif param.kind is param.VAR_POSITIONAL:
            most = float("inf")
        elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            return None  # needs a keyword argument
    return fewest, most


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Options of one enqueue call (``None``: the task's default).

    ``at`` is the wall time (seconds since the epoch) before which the job does not run; ``delay``
    counts from the enqueue. At most one of them is set.
    """

    delay: float | None = None
    at: float | None = None
    key: str | None = None
    timeout: float | None = None
    queue: str | None = None
    max_attempts: int | None = None
    job_id: str | None = None
    headers: dict[str, str] | None = None


class Task(Generic[P, R]):
    """A registered task. Call ``await task.enqueue(...)`` with the handler's own arguments.

    Calling the task object directly (``await task(...)``) runs the handler in-process, which is
    handy in tests.
    """

    def __init__(self, app: App, spec: TaskSpec, call: CallOptions | None = None) -> None:
        self.app = app
        self.spec = spec
        self._call = call or CallOptions()

    @property
    def name(self) -> str:
        """The registered name."""
        return self.spec.name

    def options(
        self,
        *,
        delay: float | None = None,
        at: datetime | None = None,
        key: str | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        job_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Task[P, R]:
        """A handle whose enqueues use these options (per-call overrides of the task's).

        ``delay`` (seconds from the enqueue) or ``at`` (a timezone-aware :class:`~datetime.datetime`)
        hold the job back until then; a time already past runs it at once. Give one of them, not both.
        """
        if delay is not None and delay < 0:
            raise ConfigError(f"delay must be >= 0 seconds, got {delay}")
        if at is not None and delay is not None:
            raise ConfigError("give either delay= (seconds from now) or at= (a datetime), not both")
        if at is not None and (not isinstance(at, datetime) or at.utcoffset() is None):
            raise ConfigError(
                f"at= must be a timezone-aware datetime, got {at!r}: "
                "use datetime.now(timezone.utc) + timedelta(...) or a datetime with tzinfo"
            )
        if max_attempts is not None and max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        given = {"key": key, "timeout": timeout, "queue": queue, "max_attempts": max_attempts}
        changes: dict[str, object] = {k: v for k, v in given.items() if v is not None}
        if job_id is not None:
            changes["job_id"] = job_id
        if headers is not None:
            changes["headers"] = headers
        if delay is not None:  # the latest of delay / at wins on a handle made from another
            changes.update(delay=delay, at=None)
        if at is not None:
            changes.update(at=at.timestamp(), delay=None)
        return Task(self.app, self.spec, replace(self._call, **changes))  # type: ignore[arg-type]

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobRef[R]:
        """Validate the arguments against the handler's signature and enqueue one job.

        The :class:`JobRef` it returns reads the job's status and (with ``keep_result``) its result.
        """
        return await self.app.enqueue_call(self.spec, self._call, args, kwargs)

    def call(self, *args: P.args, **kwargs: P.kwargs) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Bundle arguments for :meth:`App.enqueue_many`, checked by the type checker."""
        return args, kwargs

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the handler here and now, without a broker."""
        result: R = await self.spec.fn(*args, **kwargs)
        return result
