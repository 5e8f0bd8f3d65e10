"""Message properties and headers this broker writes and reads.

Headers (all optional, so any AMQP producer can enqueue a bare envelope):

* ``x-aj-due-ms``: the job's ``not_before`` as epoch milliseconds; a job that arrives earlier is
  put back into a delay bucket by the consumer.
* ``x-aj-deliveries``: earlier deliveries of this body that ended unsettled (crash, lost channel),
  carried over when the broker re-publishes a message, so crash counts survive re-publishing.
* ``x-aj-dead``: on dead letters, the JSON of :class:`~asyncjobs.broker.DeadLetterInfo`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from asyncjobs.broker import DeadLetterInfo
from asyncjobs.envelope import peek_id

DUE = "x-aj-due-ms"
PRIOR = "x-aj-deliveries"
DEAD = "x-aj-dead"
COPY = "x-aj-copy"  # how many times this body was re-published by a consumer (moved, given back)
_SERVER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count", PRIOR)
PERSISTENT = 2


def properties(message_id: str | None, headers: dict[str, Any] | None = None) -> Basic.Properties:
    """Persistent message properties."""
    return Basic.Properties(delivery_mode=PERSISTENT, message_id=message_id, headers=headers or None)


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
    kept = {k: v for k, v in headers.items() if not k.startswith(_SERVER_HEADERS)}
    if prior:
        kept[PRIOR] = prior
    kept[COPY] = copy_of(headers) + 1
    return kept


def copy_of(headers: dict[str, Any]) -> int:
    """Which copy of its body a message is: 0 as enqueued, one more per re-publish by a consumer."""
    value = headers.get(COPY, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def dead_headers(info: DeadLetterInfo) -> dict[str, Any]:
    """Headers of a dead letter."""
    return {DEAD: json.dumps(info.to_json(), separators=(",", ":"))}


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
