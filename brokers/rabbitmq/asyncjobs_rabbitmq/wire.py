"""Message properties and headers this broker writes and reads.

Headers (all optional, so any AMQP producer can enqueue a bare envelope):

* ``x-aj-due-ms``: the job's ``not_before`` as epoch milliseconds; a job that arrives earlier is
  put back into a delay bucket by the consumer.
* ``x-aj-deliveries``: earlier deliveries of this body that ended unsettled (crash, lost channel),
  carried over when the broker re-publishes a message, so crash counts survive re-publishing.
* ``x-aj-dead``: on dead letters, the JSON of :class:`~asyncjobs.broker.DeadLetterInfo`.

Every byte of a message may come from a foreign producer, and RabbitMQ closes the whole connection
when a frame exceeds ``frame_max`` (131,072 by default): everything written into properties and
headers is bounded here far below that. A job id longer than :data:`ID_LIMIT` bytes becomes a marked,
shortened ``message_id`` (the body keeps the whole id); the dead-letter header is at most
:data:`DEAD_LIMIT` bytes (texts clipped with a marker, oversize history entries replaced by a clipped
form, the oldest entries dropped, ``"truncated": true`` set); headers carried over on a re-publish are
kept up to :data:`CARRIED_LIMIT` bytes, the rest dropped and named in ``x-aj-headers-cut``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from aiormq.abc import DeliveredMessage
from pamqp import encode
from pamqp.commands import Basic

from asyncjobs.broker import DeadLetterInfo
from asyncjobs.envelope import peek_id
from asyncjobs.settle import clip

DUE = "x-aj-due-ms"
PRIOR = "x-aj-deliveries"
DEAD = "x-aj-dead"
COPY = "x-aj-copy"  # how many times this body was re-published by a consumer (moved, given back)
CUT = "x-aj-headers-cut"  # names of carried headers dropped to keep the header frame small
_SERVER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count", PRIOR, CUT)
PERSISTENT = 2

ID_LIMIT = 200
"""Bytes of a job id sent as ``message_id`` (an AMQP short string holds 255)."""
DEAD_LIMIT = 32_000
"""Bytes of the ``x-aj-dead`` header at most."""
CARRIED_LIMIT = 16_000
"""Bytes of a producer's own headers carried over when the broker re-publishes a message."""
_ENTRY_LIMIT = 1_000  # characters of one history entry's JSON kept in a dead-letter header
_TEXT_LIMITS = {"reason": 300, "error_type": 300, "error_message": 4_000, "traceback": 16_000, "task": 300}


def message_id(job_id: str | None) -> str | None:
    """``job_id`` fit for ``message_id``: itself when short, else its head and a digest, marked with ``…#``."""
    if job_id is None:
        return None
    try:
        if len(job_id.encode()) <= ID_LIMIT:
            return job_id
    except UnicodeEncodeError:  # a lone surrogate: AMQP cannot carry it
        pass
    raw = job_id.encode("utf-8", "surrogatepass")
    head = raw[: ID_LIMIT - 40].decode("utf-8", "ignore").encode("utf-8", "ignore").decode()
    return f"{head}…#{hashlib.sha256(raw).hexdigest()[:32]}"


def properties(job_id: str | None, headers: dict[str, Any] | None = None) -> Basic.Properties:
    """Persistent message properties; the id bounded by :func:`message_id`."""
    return Basic.Properties(delivery_mode=PERSISTENT, message_id=message_id(job_id), headers=headers or None)


def encoded_size(name: str, value: Any) -> int:
    """Bytes one header takes in a content header frame (more than the limit for a value AMQP cannot carry)."""
    try:
        return len(encode.field_table({name: value})) - 4
    except (TypeError, ValueError):
        return CARRIED_LIMIT + 1


def due_headers(not_before: float | None) -> dict[str, Any] | None:
    """Headers carrying ``not_before`` (wall clock seconds), or ``None``."""
    return None if not_before is None else {DUE: math.ceil(not_before * 1000)}  # never earlier


def headers_of(message: DeliveredMessage) -> dict[str, Any]:
    """The message's headers (empty when it has none)."""
    return message.header.properties.headers or {}


TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def trace_headers_of(headers: dict[str, Any]) -> dict[str, str] | None:
    """W3C trace context an instrumented publisher put in the AMQP headers (e.g. OpenTelemetry's aio-pika one)."""
    found: dict[str, str] = {}
    for name in TRACE_HEADERS:
        value = headers.get(name)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            found[name] = value
    return found or None


def job_id_of(message: DeliveredMessage) -> str | None:
    """The job id: the AMQP ``message_id``, else the envelope's ``id``."""
    return message.header.properties.message_id or peek_id(message.body)


def due_of(headers: dict[str, Any]) -> float | None:
    """``not_before`` in wall-clock seconds, if the message carries one."""
    due = headers.get(DUE)
    if not isinstance(due, int | float) or isinstance(due, bool) or not math.isfinite(due):
        return None  # absent, or not a time a job could wait for: due now
    return due / 1000


def prior_of(headers: dict[str, Any]) -> int:
    """Earlier unsettled deliveries recorded by a re-publish."""
    value = headers.get(PRIOR, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def server_count_of(headers: dict[str, Any]) -> int | None:
    """A quorum queue's ``x-delivery-count`` (earlier deliveries of this message), if present."""
    value = headers.get("x-delivery-count")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def carried_headers(headers: dict[str, Any], prior: int) -> dict[str, Any] | None:
    """Headers for a re-publish: ours and the producer's kept, the server's dropped, ``prior`` recorded.

    The copy number goes up by one, so the new copy is never taken for a redelivery of the message
    it replaces (same body, same job id) whose ack went out on a channel that then closed.
    """
    kept: dict[str, Any] = {}
    cut: list[str] = []
    room = CARRIED_LIMIT
    for name, value in headers.items():
        if name.startswith(_SERVER_HEADERS):
            continue
        size = encoded_size(name, value)
        if size > room:
            cut.append(name)
            continue
        room -= size
        kept[name] = value
    if cut:
        kept[CUT] = clip(",".join(cut), 500)
    if prior:
        kept[PRIOR] = prior
    kept[COPY] = copy_of(headers) + 1
    return kept


def copy_of(headers: dict[str, Any]) -> int:
    """Which copy of its body a message is: 0 as enqueued, one more per re-publish by a consumer."""
    value = headers.get(COPY, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def dead_headers(info: DeadLetterInfo) -> dict[str, Any]:
    """Headers of a dead letter: ``info`` as JSON, at most :data:`DEAD_LIMIT` bytes (see the module doc)."""
    doc = info.to_json()
    text = _dump(doc)  # ASCII: its length is its size
    if len(text) <= DEAD_LIMIT:
        return {DEAD: text}
    history: list[Any] = []
    for entry in doc["history"]:
        dumped = _dump(entry)
        history.append(entry if len(dumped) <= _ENTRY_LIMIT else {"truncated": clip(dumped, _ENTRY_LIMIT)})
    doc["history"], doc["truncated"] = history, True
    for shrink in (1, 4, 16, 64):
        for name, limit in _TEXT_LIMITS.items():
            if isinstance(doc.get(name), str):
                doc[name] = clip(doc[name], limit // shrink)
        text = _dump(doc)
        while len(text) > DEAD_LIMIT and doc["history"]:
            doc["history"] = doc["history"][1:]  # the oldest first
            doc["history_cut"] = doc.get("history_cut", 0) + 1
            text = _dump(doc)
        if len(text) <= DEAD_LIMIT:
            break
    return {DEAD: text}


def _dump(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), default=repr)


def dead_info_of(message: DeliveredMessage) -> DeadLetterInfo:
    """Why a dead letter died: our header, or the server's ``x-death`` record for messages it moved."""
    headers = headers_of(message)
    raw = headers.get(DEAD)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            return DeadLetterInfo.from_json(doc)
    reason = headers.get("x-first-death-reason", "unknown")
    reason = reason.decode() if isinstance(reason, bytes) else str(reason)
    return DeadLetterInfo(
        reason=reason,
        error_type="RabbitMQ",
        error_message=f"dead-lettered by the server ({reason})",
        attempts=server_count_of(headers) or 0,
    )
