"""An app that configures OpenTelemetry in a startup hook, the way to do it for ``asyncjobs worker``.

Its spans go to the file ``$SPANS_FILE``, one JSON object per line (a real app would use an OTLP
exporter there). The shutdown hook flushes them after the last job.
"""

from __future__ import annotations

import json
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from asyncjobs import App

app = App()


def one_line(span: ReadableSpan) -> str:
    """A span as one JSON line."""
    return json.dumps(json.loads(span.to_json())) + "\n"


@app.on_startup
async def configure_tracing() -> None:
    """Install the SDK before the worker composes its middleware (so its tracing layer is in)."""
    spans = open(os.environ["SPANS_FILE"], "a")  # noqa: SIM115, ASYNC230 - kept open for the exporter
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=spans, formatter=one_line)))
    trace.set_tracer_provider(provider)
    app.state.tracer_provider, app.state.spans = provider, spans


@app.on_shutdown
async def flush_tracing() -> None:
    """Flush the spans of the last jobs."""
    app.state.tracer_provider.shutdown()
    app.state.spans.close()


@app.task(name="otel.work", queue="email")
async def work(n: int) -> None:
    """Do nothing, traced."""
