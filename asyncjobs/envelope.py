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


def _field(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = doc.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise EnvelopeError(f"envelope field {name!r} must be {kind}, got a boolean")
    if not isinstance(value, kind):
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
    if version != VERSION:
        raise EnvelopeError(f"unsupported envelope version {version!r} (this worker reads {VERSION})")
    task = _field(doc, "task", str)
    job_id = _field(doc, "id", str)
    if not task or not job_id:
        raise EnvelopeError("envelope needs non-empty 'id' and 'task'")
    headers = _field(doc, "headers", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise EnvelopeError("envelope field 'headers' must map strings to strings")
    attempt = _field(doc, "attempt", int, 1)
    if attempt < 1:
        raise EnvelopeError("envelope field 'attempt' must be >= 1")
    return Envelope(
        task=task,
        args=tuple(_field(doc, "args", list, [])),
        kwargs=_field(doc, "kwargs", dict, {}),
        id=job_id,
        queue=_field(doc, "queue", str, "default"),
        attempt=attempt,
        enqueued_at=float(_field(doc, "enqueued_at", (int, float), 0.0)),
        not_before=_float_or_none(_field(doc, "not_before", (int, float))),
        timeout=_float_or_none(_field(doc, "timeout", (int, float))),
        key=_field(doc, "key", str),
        headers=headers,
        extra={k: v for k, v in doc.items() if k not in _KNOWN},
    )


def _float_or_none(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def peek_id(body: bytes) -> str | None:
    """Best-effort job id of a message that may not decode; ``None`` when there is none."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    job_id = doc.get("id") if isinstance(doc, dict) else None
    return job_id if isinstance(job_id, str) else None
