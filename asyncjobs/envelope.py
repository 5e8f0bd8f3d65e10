"""The wire format of a job: a versioned JSON object (version 1).

Any producer that can write JSON can enqueue a job (``redis-cli``, another language). The
format is documented in ``docs/envelope.md``. Decoding is strict about what the runtime needs
and lenient about the rest: unknown fields are kept and written back unchanged, an unknown
version is refused with :class:`~asyncjobs.errors.EnvelopeError` (the worker dead-letters it).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from asyncjobs.clock import wall_time
from asyncjobs.errors import EnvelopeError

VERSION = 1
_KNOWN = frozenset(
    {
        "v",
        "id",
        "task",
        "args",
        "kwargs",
        "attempt",
        "enqueued_at",
        "not_before",
        "timeout",
        "key",
        "queue",
        "headers",
    }
)


def new_id() -> str:
    """Return a fresh job id (32 lowercase hex digits)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Envelope:
    """One job as it travels through a broker.

    ``attempt`` starts at 1 and grows by one on each retry the runtime schedules; crash
    redeliveries are counted by the broker (``Delivery.delivery_count``) and added to it.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    queue: str = "default"
    attempt: int = 1
    enqueued_at: float = field(default_factory=wall_time)
    not_before: float | None = None
    timeout: float | None = None
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        """Serialise to compact UTF-8 JSON; unknown fields read earlier are written back."""
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            v=VERSION,
            id=self.id,
            task=self.task,
            args=list(self.args),
            kwargs=self.kwargs,
            attempt=self.attempt,
            enqueued_at=self.enqueued_at,
            queue=self.queue,
        )
        if self.not_before is not None:
            doc["not_before"] = self.not_before
        if self.timeout is not None:
            doc["timeout"] = self.timeout
        if self.key is not None:
            doc["key"] = self.key
        if self.headers:
            doc["headers"] = self.headers
        try:
            return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise EnvelopeError(f"job {self.task!r}: arguments are not JSON-serialisable: {exc}") from exc

    def next_attempt(self, not_before: float | None) -> Envelope:
        """The envelope of the following attempt, due at ``not_before`` (wall clock)."""
        return replace(self, attempt=self.attempt + 1, not_before=not_before)


def _check(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EnvelopeError(f"envelope field {name!r} has type {type(value).__name__}")
    return value


def decode(body: bytes) -> Envelope:
    """Parse ``body`` into an :class:`Envelope` or raise :class:`EnvelopeError` saying why."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EnvelopeError(f"message is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise EnvelopeError("message is not a JSON object")
    version = doc.get("v")
    if version != VERSION or isinstance(version, bool):
        raise EnvelopeError(f"unsupported envelope version {version!r} (this worker reads {VERSION})")
    get = doc.get
    task, job_id = get("task"), get("id")
    if not isinstance(task, str) or not task or not isinstance(job_id, str) or not job_id:
        raise EnvelopeError("envelope needs non-empty string fields 'id' and 'task'")
    args, kwargs, queue, attempt = get("args", ()), get("kwargs", {}), get("queue", "default"), get("attempt", 1)
    args = tuple(_check(args, (list, tuple), "args"))
    _check(kwargs, dict, "kwargs")
    _check(queue, str, "queue")
    if _check(attempt, int, "attempt") < 1:
        raise EnvelopeError("envelope field 'attempt' must be >= 1")
    headers = get("headers")
    if headers is None:
        headers = {}
    elif not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise EnvelopeError("envelope field 'headers' must map strings to strings")
    optional = {}
    for name in ("enqueued_at", "not_before", "timeout"):
        value = get(name)
        optional[name] = None if value is None else float(_check(value, (int, float), name))
    key = get("key")
    if key is not None:
        _check(key, str, "key")
    extra = {k: v for k, v in doc.items() if k not in _KNOWN} if len(doc) > len(_KNOWN.intersection(doc)) else {}
    return Envelope(
        task=task,
        args=args,
        kwargs=kwargs,
        id=job_id,
        queue=queue,
        attempt=attempt,
        enqueued_at=optional["enqueued_at"] or 0.0,
        not_before=optional["not_before"],
        timeout=optional["timeout"],
        key=key,
        headers=headers,
        extra=extra,
    )


def peek_id(body: bytes) -> str | None:
    """Best-effort job id of a message that may not decode; ``None`` when there is none."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    job_id = doc.get("id") if isinstance(doc, dict) else None
    return job_id if isinstance(job_id, str) else None
