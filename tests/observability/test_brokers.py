"""Dedupe and tracing end to end on every broker (in-memory, Redis, RabbitMQ)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from asyncjobs import App, Broker, Worker, WorkerConfig
from asyncjobs.broker import OutgoingJob
from asyncjobs.dedupe import MemoryDedupeStore
from asyncjobs.middleware.tracing import TracingMiddleware, TracingProducerMiddleware
from asyncjobs.task import CallOptions
from tests.harness import require_server
from tests.observability.conventions import check_messaging_span
from tests.runtime.helpers import eventually

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def working(app: App, *middleware: TracingMiddleware) -> AsyncIterator[Worker]:
    queue = app.default_queue
    worker = Worker(app, WorkerConfig(queues=(queue,), shutdown_signals=False, lease_seconds=5), middleware=middleware)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        try:
            yield worker
        finally:
            worker.stop()


async def test_a_job_continues_its_producers_trace_on_every_broker(
    broker: Broker, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    app = App(broker, producer_middleware=[TracingProducerMiddleware(provider)], default_queue=queue)

    @app.task(name="traced")
    async def traced() -> None:
        pass

    await traced.enqueue()
    async with working(app, TracingMiddleware(provider)) as worker:
        await eventually(lambda: worker.stats.done == 1)
        await eventually(lambda: any(s.kind == SpanKind.CONSUMER for s in exporter.get_finished_spans()))
    [send] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    [process] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert send.context is not None
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    scheme = broker.url.partition("://")[0]
    system = {"memory": "memory", "redis": "redis", "amqp": "rabbitmq"}[scheme]
    real_name = broker.topology.names(queue).work if scheme == "amqp" else queue  # type: ignore[attr-defined]
    for span, operation in ((send, "send"), (process, "process")):
        attrs = check_messaging_span(span, operation)
        assert attrs["messaging.system"] == system
        assert attrs["messaging.destination.name"] == real_name  # on amqp:// with the URL's queue_prefix
        assert span.name == f"{operation} {real_name}"
        assert attrs["asyncjobs.queue"] == queue
        if scheme != "memory":
            assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.1", 5672 if scheme == "amqp" else 6379)
        if scheme == "amqp":
            assert real_name != queue
            assert attrs["messaging.rabbitmq.destination.routing_key"] == real_name


async def test_a_duplicate_delivery_of_a_done_job_is_skipped_on_every_broker(broker: Broker) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    app = App(broker, dedupe=MemoryDedupeStore(), default_queue=queue)
    runs: list[int] = []

    @app.task(name="once")
    async def once() -> None:
        runs.append(1)

    env = app.build(once.spec, CallOptions(key="k-1"), (), {})
    async with working(app) as worker:
        await broker.enqueue([OutgoingJob(env.id, queue, env.encode())])
        await eventually(lambda: worker.stats.done == 1)
        await broker.enqueue([OutgoingJob(uuid.uuid4().hex, queue, env.encode())])  # the same message again
        await eventually(lambda: worker.stats.skipped == 1)
    assert runs == [1]


async def test_a_key_is_enqueued_once_on_every_broker(broker: Broker) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    app = App(broker, dedupe=MemoryDedupeStore(), default_queue=queue)

    @app.task(name="welcome")
    async def welcome() -> None:
        pass

    refs = [await welcome.options(key="welcome-1").enqueue() for _ in range(3)]
    assert [r.accepted for r in refs] == [True, False, False]
    stats = await broker.stats(queue)
    assert stats.ready + stats.scheduled == 1


async def test_a_duplicate_of_a_running_job_waits_then_is_skipped_on_every_broker(broker: Broker) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    app = App(broker, dedupe=MemoryDedupeStore(), default_queue=queue)
    runs: list[int] = []
    release = anyio.Event()

    @app.task(name="slow", timeout=5)
    async def slow() -> None:
        runs.append(1)
        await release.wait()

    env = app.build(slow.spec, CallOptions(key="slow-1"), (), {})
    async with working(app) as worker:
        await broker.enqueue([OutgoingJob(env.id, queue, env.encode())])
        await eventually(lambda: runs == [1])
        await broker.enqueue([OutgoingJob(uuid.uuid4().hex, queue, env.encode())])  # delivered while it runs
        await eventually(lambda: worker.stats.deferred >= 1)
        release.set()
        await eventually(lambda: worker.stats.done == 1 and worker.stats.skipped == 1, within=15)
    assert runs == [1]


async def test_a_job_published_by_an_instrumented_aio_pika_producer_continues_its_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A publisher outside asyncjobs puts ``traceparent`` in the AMQP headers (as
    opentelemetry-instrumentation-aio-pika does) and none in the envelope: the worker continues it."""
    require_server("rabbitmq")
    aio_pika = pytest.importorskip("aio_pika")
    pytest.importorskip("asyncjobs_rabbitmq")
    from opentelemetry import propagate

    from tests.harness.rabbitmq import URL, rabbitmq_harness

    async with rabbitmq_harness(f"t{uuid.uuid4().hex[:12]}") as broker:
        queue = f"q{uuid.uuid4().hex[:8]}"
        app = App(broker, default_queue=queue)

        @app.task(name="from_outside")
        async def from_outside() -> None:
            pass

        env = app.build(from_outside.spec, CallOptions(), (), {})
        assert not env.headers
        async with working(app, TracingMiddleware(provider)) as worker:  # declares the queue
            await eventually(lambda: worker.ready.is_set())
            amqp_queue = broker.topology.names(queue).work  # type: ignore[attr-defined]
            connection = await aio_pika.connect(URL)
            try:
                channel = await connection.channel()
                tracer = provider.get_tracer("outside-publisher")
                with tracer.start_as_current_span("orders publish", kind=SpanKind.PRODUCER) as publish:
                    headers: dict[str, str] = {}
                    propagate.inject(headers)
                    await channel.default_exchange.publish(
                        aio_pika.Message(env.encode(), headers=headers, message_id=env.id), routing_key=amqp_queue
                    )
            finally:
                await connection.close()
            await eventually(lambda: worker.stats.done == 1)
            await eventually(lambda: any(s.kind == SpanKind.CONSUMER for s in exporter.get_finished_spans()))
    [process] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert process.parent is not None
    assert process.context is not None
    assert process.context.trace_id == publish.get_span_context().trace_id
    assert process.parent.span_id == publish.get_span_context().span_id
