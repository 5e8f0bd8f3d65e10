"""Observability fixtures: an SDK tracer provider with an in-memory exporter, never set globally."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture
def anyio_backend() -> str:
    """asyncjobs runs on asyncio."""
    return "asyncio"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Finished spans of the test's tracer provider."""
    spans = InMemorySpanExporter()
    yield spans
    spans.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """A tracer provider passed explicitly to the layers under test (the global one is left alone)."""
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made
