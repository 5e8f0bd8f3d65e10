"""The convention check itself: it refuses what the spans of earlier versions carried."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind

from tests.observability.conventions import check_messaging_span, known_attributes

GOOD = {
    "messaging.system": "redis",
    "messaging.operation.type": "send",
    "messaging.operation.name": "send",
    "messaging.destination.name": "email",
    "server.address": "127.0.0.1",
    "server.port": 6379,
    "asyncjobs.task": "send_email",
}


def span(name: str, **changes: object) -> ReadableSpan:
    attributes = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    context = SpanContext(trace_id=1, span_id=2, is_remote=False)
    return ReadableSpan(name=name, context=context, kind=SpanKind.PRODUCER, attributes=attributes)  # type: ignore[arg-type]


def test_the_registry_is_read_from_the_installed_conventions() -> None:
    names = known_attributes()
    assert {"messaging.destination.name", "messaging.message.id", "server.address", "error.type"} <= names
    assert "messaging.operation" not in names  # deprecated: replaced by messaging.operation.type


def test_a_conforming_send_span_passes() -> None:
    check_messaging_span(span("send email"), "send")


@pytest.mark.parametrize(
    ("name", "changes", "complaint"),
    [
        ("send send_email", {}, "span.name"),  # named after the task, not the destination
        ("send email", {"server.address": None, "server.port": None}, "server.address"),
        ("send email", {"messaging.operation": "publish"}, "outside the conventions"),
        ("send email", {"queue": "email"}, "outside the conventions"),
        ("send email", {"error.type": "ConnectionError"}, "error.type"),
    ],
)
def test_the_check_refuses_spans_that_stray(name: str, changes: dict[str, object], complaint: str) -> None:
    with pytest.raises(AssertionError, match=complaint):
        check_messaging_span(span(name, **changes), "send")
