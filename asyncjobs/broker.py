"""The broker contract: one protocol every broker implements, and URL -> broker.

A broker stores jobs and hands them out under leases. It knows nothing of tasks, handlers,
retries policies or middleware: the runtime decides, the broker carries out atomic steps.

Vocabulary:

* **ready**: a job that may be fetched now.
* **scheduled**: a job whose ``not_before`` (wall clock) is in the future; it becomes ready then.
* **leased** (in flight): a job handed to a consumer. The lease has a token and a deadline. While
  the lease holds nobody else gets the job; when it expires the job is ready again and the next
  delivery has ``delivery_count`` raised by one.
* **dead**: a job the runtime gave up on, kept with its reason until replayed or purged.

A broker is chosen by URL scheme. ``memory://`` is built in; other schemes come from the entry
point group ``asyncjobs.brokers`` (name = scheme, value = a callable taking the URL and returning
a :class:`Broker`). The Redis and RabbitMQ brokers ship with asyncjobs and register there;
their client libraries come with the ``redis`` and ``rabbitmq`` extras. Third parties plug in
the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from asyncjobs.errors import BrokerURLError
from asyncjobs.extras import install_command

if TYPE_CHECKING:
    from asyncjobs.envelope import Envelope

ENTRY_POINT_GROUP = "asyncjobs.brokers"

# Schemes of the brokers that ship with asyncjobs -> the extra that brings their client library.
KNOWN_EXTRAS = {
    "redis": "redis",
    "rediss": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
}

_CLIENT_MODULES = {"redis", "aio_pika", "aiormq", "pamqp"}


def _missing_client(scheme: str) -> BrokerURLError:
    extra = KNOWN_EXTRAS[scheme]
    return BrokerURLError(f"broker URL scheme {scheme!r} needs the {extra} client library: {install_command(extra)}")


@dataclass(frozen=True, slots=True)
class OutgoingJob:
    """A job handed to :meth:`Broker.enqueue`.

    ``not_before`` is a wall-clock time (``None``: ready at once). ``unique_key``, when set and
    the broker has ``supports_unique``, makes the enqueue a no-op while another job with the same
    key was accepted less than ``unique_ttl`` seconds ago.

    ``envelope`` is the envelope ``body`` was encoded from, when the producer has it (``None``
    otherwise). A broker that sends bytes elsewhere ignores it; one that keeps jobs in this process
    (``memory://``) may hand it back on :attr:`Delivery.envelope`, so the worker skips a parse that
    would only rebuild it (see :func:`~asyncjobs.envelope.reads_back_equal`).
    """

    id: str
    queue: str
    body: bytes
    not_before: float | None = None
    unique_key: str | None = None
    unique_ttl: float = 0.0
    envelope: Envelope | None = None


@dataclass(slots=True, eq=False)
class Delivery:
    """One job handed to a consumer under a lease.

    ``token`` identifies this lease: an extend, ack, retry or dead-letter with a token that is no
    longer current (the lease expired and the job went elsewhere) fails. ``delivery_count`` is 1
    on the first delivery of this body and grows with every redelivery after a lost lease or a
    crash (a retry scheduled by the runtime starts a new body at 1). ``job_id`` is ``None`` only
    for a message whose id cannot be read. ``handle`` is private to the broker. ``headers`` are
    the transport's own message headers when it has them (AMQP), as strings: a producer
    instrumented outside asyncjobs puts its W3C ``traceparent`` there rather than in the envelope.
    ``envelope``, when not ``None``, is what decoding ``body`` gives (the in-memory broker's
    shortcut, see :class:`OutgoingJob`): the worker uses it instead of parsing ``body``.
    ``unreadable``, when not ``None``, is ``(reason, message)`` for a message the broker could not
    hand over whole (a Redis handle whose id is not UTF-8, or whose body never came): the worker
    dead-letters it with that reason, counted like any other dead letter, without running it.
    """

    queue: str
    job_id: str | None
    body: bytes
    token: str
    delivery_count: int = 1
    handle: Any = None
    headers: Mapping[str, str] | None = None
    envelope: Envelope | None = None
    unreadable: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """Why a job was dead-lettered, kept beside its body."""

    reason: str
    error_type: str
    error_message: str
    traceback: str = ""
    attempts: int = 0
    history: tuple[dict[str, Any], ...] = ()
    failed_at: float = 0.0
    task: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "reason": self.reason,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "history": list(self.history),
            "failed_at": self.failed_at,
            "task": self.task,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DeadLetterInfo:
        """Inverse of :meth:`to_json`; tolerant of missing fields."""
        return cls(
            reason=str(doc.get("reason", "")),
            error_type=str(doc.get("error_type", "")),
            error_message=str(doc.get("error_message", "")),
            traceback=str(doc.get("traceback", "")),
            attempts=int(doc.get("attempts", 0)),
            history=tuple(doc.get("history", ())),
            failed_at=float(doc.get("failed_at", 0.0)),
            task=doc.get("task"),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered job: its body exactly as it was received, and why it died."""

    id: str
    queue: str
    body: bytes
    info: DeadLetterInfo


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts of one queue. ``oldest_ready_age`` is seconds, ``None`` when unknown or empty."""

    ready: int
    scheduled: int
    in_flight: int
    dead: int
    oldest_ready_age: float | None = None


COMES_BACK = "the broker delivers it again when its lease ends"
"""What becomes of a delivery a worker leaves unsettled, for a consumer that does not say (see :func:`comes_back`)."""


def comes_back(consumer: object) -> str:
    """How a delivery this worker could not settle comes back, in the words of its consumer (for logs).

    A consumer may say it in a ``comes_back`` attribute (a clause such as :data:`COMES_BACK`);
    one whose deliveries end otherwise than with a lease deadline (RabbitMQ: with the channel)
    should, so the log tells what happens.
    """
    text = getattr(consumer, "comes_back", None)
    return text if isinstance(text, str) and text else COMES_BACK


@runtime_checkable
class Consumer(Protocol):
    """The leasing side of a broker, owned by one worker.

    All leases a consumer hands out have the length given when it was opened. Every method is
    safe to call concurrently from many tasks of one event loop. Optionally, ``comes_back`` says
    how a delivery left unsettled comes back (see :func:`comes_back`).
    """

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """Lease up to ``max_count`` ready jobs, waiting up to ``wait_seconds`` for the first.

        Returns an empty list when nothing became ready in time. Atomic per job: a job is leased
        to exactly one consumer. Scheduled jobs that are due and expired leases of any consumer
        become ready as part of fetching (or of a reaper the consumer runs), so nothing waits
        on a process that is gone.
        """
        ...

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Push back the deadline of every given lease by the lease length, in one round trip.

        Returns, per delivery, ``True`` when the lease is still held by that token, ``False``
        when it was lost (expired and taken, settled, or its channel is gone). A lost lease must
        never be acked: the job may be running elsewhere.
        """
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Remove finished jobs for good, in one round trip. ``False`` for a stale token."""
        ...

    async def retry(self, delivery: Delivery, body: bytes, not_before: float | None) -> bool:
        """Replace the leased job by ``body`` (the next attempt), ready at ``not_before``.

        Atomic where the broker allows it (the old delivery is gone exactly when the new body is
        stored); otherwise the new body is stored first, so a crash in between duplicates and
        never loses. ``False`` (and nothing stored) for a stale token.
        """
        ...

    async def dead_letter(self, delivery: Delivery, info: DeadLetterInfo) -> bool:
        """Move the leased job, body intact, to the queue's dead letters with ``info``.

        Same atomicity rule as :meth:`retry`. ``False`` for a stale token.
        """
        ...

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give leased jobs back to ready at once (shutdown), without waiting for expiry.

        Where the broker can express it the release does not count as a delivery.
        Stale tokens are ignored.
        """
        ...

    async def close(self) -> None:
        """Stop fetching and release whatever this consumer still holds. Idempotent."""
        ...


@runtime_checkable
class Broker(Protocol):
    """Producer and admin side of a broker. Created from a URL, then :meth:`connect` ed."""

    url: str
    supports_unique: bool
    """Whether :meth:`enqueue` itself enforces ``OutgoingJob.unique_key``."""

    async def connect(self) -> None:
        """Open connections and declare what is needed. Idempotent."""
        ...

    async def close(self) -> None:
        """Close every connection this broker opened. Idempotent."""
        ...

    async def enqueue(self, jobs: Sequence[OutgoingJob]) -> list[bool]:
        """Store jobs durably before returning (as durable as the broker is configured).

        Returns, per job, ``True`` when it was stored and ``False`` when its unique key was
        already taken. Raises :class:`~asyncjobs.errors.BrokerError` when the broker did not
        accept a job; a job that was not accepted is never silently dropped.
        """
        ...

    async def consumer(self, queues: Sequence[str], *, prefetch: int, lease_seconds: float) -> Consumer:
        """Open a consumer over ``queues`` holding at most ``prefetch`` leases at once."""
        ...

    async def stats(self, queue: str) -> QueueStats:
        """Counts of ``queue``; cheap (no scan of the jobs)."""
        ...

    async def list_dead(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` dead letters of ``queue``, newest first."""
        ...

    async def get_dead(self, queue: str, dead_id: str) -> DeadLetter | None:
        """One dead letter by id, or ``None``."""
        ...

    async def replay_dead(self, queue: str, dead_id: str, body: bytes) -> bool:
        """Remove a dead letter and enqueue ``body`` (ready now) in its place.

        Atomic where the broker allows it; otherwise enqueue first. ``False`` if it is gone.
        """
        ...

    async def purge_dead(self, queue: str, dead_ids: Sequence[str] | None = None) -> int:
        """Delete the given dead letters (all when ``None``); returns how many were deleted."""
        ...


BrokerFactory = Callable[[str], Broker]


def _memory_factory(url: str) -> Broker:
    from asyncjobs.memory import MemoryBroker

    return MemoryBroker.from_url(url)


_BUILTIN: dict[str, BrokerFactory] = {"memory": _memory_factory}


def safe_url(url: str) -> str:
    """``url`` fit to show: its password replaced by ``***`` (a URL that does not parse is shown as ``<url>``).

    Works on URLs with other faults too (a port that is not a number), so error messages about
    them can quote the URL without its secret.
    """
    try:
        parts = urlsplit(url)
    except (ValueError, TypeError):
        return "<url>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostport}").geturl()


def scheme_of(url: str) -> str:
    """The scheme of a broker URL, or :class:`BrokerURLError` when it has none."""
    if not isinstance(url, str) or "://" not in url:
        raise BrokerURLError(f"broker URL {url!r} has no scheme; expected e.g. memory://, redis://host:6379/0")
    return urlsplit(url).scheme.lower()


def from_url(url: str) -> Broker:
    """Create (but do not connect) the broker a URL names.

    Raises :class:`BrokerURLError` naming the install command when the scheme belongs to a
    broker whose client library is not installed, or listing the known schemes when nobody handles it.
    """
    scheme = scheme_of(url)
    factory = _BUILTIN.get(scheme)
    if factory is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == scheme:
                try:
                    factory = ep.load()
                except ImportError as exc:
                    if scheme in KNOWN_EXTRAS and (exc.name or "").partition(".")[0] in _CLIENT_MODULES:
                        raise _missing_client(scheme) from None
                    raise
                break
    if factory is None:
        if scheme in KNOWN_EXTRAS:
            raise _missing_client(scheme)
        known = sorted({*_BUILTIN, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
        raise BrokerURLError(f"no broker handles URL scheme {scheme!r}; installed schemes: {', '.join(known)}")
    return factory(url)


def register_scheme(scheme: str, factory: BrokerFactory) -> None:
    """Register a broker factory for ``scheme`` in this process (entry points need no call)."""
    _BUILTIN[scheme.lower()] = factory
