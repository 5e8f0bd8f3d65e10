"""Run by test_global_provider in a process of its own: the global tracer provider can be set once."""

from __future__ import annotations

import uuid

import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from asyncjobs import App, Worker, WorkerConfig
from asyncjobs.memory import MemoryBroker


async def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # configured before the app and the worker are built

    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"))

    @app.task(name="auto")
    async def auto() -> None:
        pass

    await auto.enqueue()
    worker = Worker(app, WorkerConfig(shutdown_signals=False))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(10):
            while worker.stats.done < 1:  # noqa: ASYNC110 - polls a counter
                await anyio.sleep(0.02)
        worker.stop()
    spans = exporter.get_finished_spans()
    [send] = [s for s in spans if s.kind == SpanKind.PRODUCER]
    [process] = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert send.context is not None
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert (process.attributes or {})["messaging.system"] == "memory"
    print("traced:", send.name, "->", process.name)


anyio.run(main)
