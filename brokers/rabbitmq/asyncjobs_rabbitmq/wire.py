"""Message properties and headers this broker writes and reads.

Headers (all optional, so any AMQP producer can enqueue a bare envelope):

* ``x-aj-due-ms``: the job's ``not_before`` as epoch milliseconds (the publisher's clock); a job
  that arrives earlier is put back into a delay bucket by the consumer.
* ``x-aj-delay-ms``: the delay still to wait when the message was published (no clock in it). With
  the time the message spent in delay buckets since (the server's ``x-death`` records), it bounds
  how long the job may still have to wait whatever the two hosts' clocks say (:func:`remaining_of`).
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
from asyncjobs.clock import wall_time
from asyncjobs.envelope import peek_id
from asyncjobs.settle import clip

DUE = "x-aj-due-ms"
DELAY = "x-aj-delay-ms"
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


SKEW_BOUND = 60.0
"""Seconds by which the due time read from the clock may undercut the bound the buckets give before
the clocks are taken to disagree (see :func:`remaining_of`)."""


def due_headers(not_before: float | None) -> dict[str, Any] | None:
    """Headers carrying ``not_before`` (wall clock seconds) and the delay from now, or ``None``."""
    if not_before is None:
        return None
    return _due(not_before - wall_time())


def _due(remaining: float) -> dict[str, Any]:
    now = wall_time()
    return {DUE: math.ceil((now + remaining) * 1000), DELAY: max(math.ceil(remaining * 1000), 0)}  # never earlier


def _ms(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None  # absent, or not a time a job could wait for
    return value / 1000


def waited_in_buckets(headers: dict[str, Any]) -> float:
    """Seconds the message spent in delay buckets since it was published (the server's ``x-death`` records)."""
    total = 0.0
    deaths = headers.get("x-death")
    for death in deaths if isinstance(deaths, list) else ():
        if not isinstance(death, dict):
            continue
        queue, count = death.get("queue"), death.get("count", 1)
        queue = queue.decode("utf-8", "replace") if isinstance(queue, bytes) else queue
        ms = queue.rpartition(".delay.")[2] if isinstance(queue, str) and ".delay." in queue else ""
        if ms.isdigit() and isinstance(count, int) and not isinstance(count, bool) and count > 0:
            total += int(ms) * count / 1000
    return total


def remaining_of(headers: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds until the message is due (``None``: it carries no due time; ``<= 0``: due now).

    The due time is the publisher's wall clock read by this host's. The relative delay minus the
    time spent in buckets is an upper bound of the true wait (time in a work queue only adds to the
    elapsed time). When the clock's answer is above that bound (the publisher's clock is ahead) or
    more than :data:`SKEW_BOUND` below it (its clock is behind, or the job waited in a work queue
    that long between two buckets), the bound is trusted: the job never waits longer than asked,
    and is early by at most :data:`SKEW_BOUND` whatever the clocks.
    """
    due, delay = _ms(headers.get(DUE)), _ms(headers.get(DELAY))
    if due is None and delay is None:
        return None
    by_clock = due - (wall_time() if now is None else now) if due is not None else None
    if delay is None:
        return by_clock
    bound = delay - waited_in_buckets(headers)
    if by_clock is None or by_clock > bound + 1.0 or by_clock < bound - SKEW_BOUND:
        return bound
    return by_clock


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
    return _ms(headers.get(DUE))


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

    A due time is written again as due time and delay from now on this host's clock (what
    :func:`remaining_of` makes of it); due now, the message goes without them.

    The copy number goes up by one, so the new copy is never taken for a redelivery of the message
    it replaces (same body, same job id) whose ack went out on a channel that then closed.
    """
    remaining = remaining_of(headers)
    kept: dict[str, Any] = {}
    cut: list[str] = []
    room = CARRIED_LIMIT
    for name, value in headers.items():
        if name.startswith(_SERVER_HEADERS) or name in (DUE, DELAY):
            continue
        size = encoded_size(name, value)
        if size > room:
            cut.append(name)
            continue
        room -= size
        kept[name] = value
    if cut:
        kept[CUT] = clip(",".join(cut), 500)
    if remaining is not None and remaining > 0:
        kept.update(_due(remaining))
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
