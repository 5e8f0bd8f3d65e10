"""Tracing after the OpenTelemetry messaging conventions: producer and consumer spans, one trace."""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from asyncjobs import App, PermanentError, Worker, WorkerConfig
from asyncjobs.broker import Delivery, OutgoingJob
from asyncjobs.dedupe import MemoryDedupeStore
from asyncjobs.envelope import Envelope
from asyncjobs.job import Job, Outcome
from asyncjobs.memory import MemoryBroker
from asyncjobs.middleware.tracing import (
    TracingMiddleware,
    TracingProducerMiddleware,
    observability_layers,
    tracing_enabled,
)
from asyncjobs.retrying import Backoff
from asyncjobs.task import CallOptions, TaskOptions, TaskSpec
from tests.observability.conventions import check_messaging_span
from tests.runtime.helpers import eventually

pytestmark = pytest.mark.anyio
QUICK = Backoff(base=0.01, cap=0.05)


def traced_app(provider: TracerProvider, **options: object) -> App:
    return App(
        MemoryBroker(f"memory://{uuid.uuid4().hex}"),
        producer_middleware=[TracingProducerMiddleware(provider, system="memory")],
        **options,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def traced_worker(app: App, provider: TracerProvider, **config: object) -> AsyncIterator[Worker]:
    config.setdefault("shutdown_signals", False)
    worker = Worker(app, WorkerConfig(**config), middleware=[TracingMiddleware(provider)])  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        try:
            yield worker
        finally:
            worker.stop()


def by_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == kind]


async def test_processing_continues_the_producers_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = traced_app(provider)

    @app.task(name="greet")
    async def greet(name: str) -> None:
        pass

    ref = await greet.enqueue("ada")
    async with traced_worker(app, provider) as worker:
        await eventually(lambda: worker.stats.done == 1)
        await eventually(lambda: len(by_kind(exporter, SpanKind.CONSUMER)) == 1)
    [send] = by_kind(exporter, SpanKind.PRODUCER)
    [process] = by_kind(exporter, SpanKind.CONSUMER)
    assert send.name == "send default"  # {operation} {destination}
    assert process.name == "process default"
    assert process.context is not None
    assert send.context is not None
    assert process.parent is not None
    assert process.context.trace_id == send.context.trace_id
    assert process.parent.span_id == send.context.span_id
    assert dict(send.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "default",
        "messaging.message.id": ref.id,
        "asyncjobs.task": "greet",
        "asyncjobs.queue": "default",
        "asyncjobs.attempt": 1,
        "asyncjobs.accepted": True,
    }
    [link] = process.links  # the creation context, as the conventions ask
    assert (link.context.trace_id, link.context.span_id) == (send.context.trace_id, send.context.span_id)
    attrs = dict(process.attributes or {})
    assert attrs["messaging.system"] == "memory"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == "default"
    assert attrs["messaging.message.id"] == ref.id
    assert attrs["asyncjobs.attempt"] == 1
    assert attrs["asyncjobs.outcome"] == "done"
    assert process.status.status_code == StatusCode.UNSET


async def test_a_foreign_producer_that_only_sets_traceparent_continues_its_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = traced_app(provider)

    @app.task(name="ingest")
    async def ingest(n: int) -> None:
        pass

    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    body = json.dumps(
        {
            "v": 1,
            "id": "from-go-1",
            "task": "ingest",
            "args": [1],
            "headers": {"traceparent": f"00-{trace_id}-{span_id}-01"},
        }
    ).encode()
    await app.broker.enqueue([OutgoingJob("from-go-1", "default", body)])
    async with traced_worker(app, provider) as worker:
        await eventually(lambda: worker.stats.done == 1)
        await eventually(lambda: len(by_kind(exporter, SpanKind.CONSUMER)) == 1)
    [process] = by_kind(exporter, SpanKind.CONSUMER)
    assert process.context is not None
    assert process.parent is not None
    assert f"{process.context.trace_id:032x}" == trace_id
    assert f"{process.parent.span_id:016x}" == span_id
    assert process.parent.is_remote


async def test_each_attempt_has_its_span_with_the_error_recorded_and_a_retry_event(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = traced_app(provider)
    calls: list[int] = []

    @app.task(name="flaky", backoff=QUICK)
    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("upstream down")

    await flaky.enqueue()
    async with traced_worker(app, provider) as worker:
        await eventually(lambda: worker.stats.done == 1)
        await eventually(lambda: len(by_kind(exporter, SpanKind.CONSUMER)) == 2)
    [send] = by_kind(exporter, SpanKind.PRODUCER)
    first, second = sorted(by_kind(exporter, SpanKind.CONSUMER), key=lambda s: s.start_time or 0)
    assert send.context is not None
    assert {s.context.trace_id for s in (first, second) if s.context} == {send.context.trace_id}
    assert first.status.status_code == StatusCode.ERROR
    assert (first.attributes or {})["asyncjobs.outcome"] == "retry"
    assert (first.attributes or {})["error.type"] == "ConnectionError"
    names = [e.name for e in first.events]
    assert names == ["exception", "asyncjobs.retry"]
    assert (first.events[0].attributes or {})["exception.message"] == "upstream down"
    assert (second.attributes or {})["asyncjobs.attempt"] == 2
    assert (second.attributes or {})["asyncjobs.outcome"] == "done"
    check_messaging_span(send, "send")
    for span in (first, second):  # the failed attempt has error.type, the done one none
        check_messaging_span(span, "process")


async def test_timeout_and_dead_letter_are_span_events(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = traced_app(provider)

    @app.task(name="stuck", queue="stuck", timeout=0.1, max_attempts=1)
    async def stuck() -> None:
        await anyio.sleep(5)

    @app.task(name="bad", queue="bad")
    async def bad() -> None:
        raise PermanentError("no such user")

    await stuck.enqueue()
    await bad.enqueue()
    async with traced_worker(app, provider, queues=("stuck", "bad")) as worker:
        await eventually(lambda: worker.stats.dead == 2)
        await eventually(lambda: len(by_kind(exporter, SpanKind.CONSUMER)) == 2)
    spans = {s.name: s for s in by_kind(exporter, SpanKind.CONSUMER)}
    assert [e.name for e in spans["process stuck"].events] == [
        "exception",
        "asyncjobs.timeout",
        "asyncjobs.dead_letter",
    ]
    assert (spans["process stuck"].attributes or {})["asyncjobs.outcome.reason"] == "max_attempts"
    assert (spans["process bad"].attributes or {})["asyncjobs.outcome.reason"] == "permanent"
    assert (spans["process bad"].attributes or {})["error.type"] == "PermanentError"
    for span in spans.values():
        check_messaging_span(span, "process")


async def test_a_dedupe_skip_is_a_span_event(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    app = traced_app(provider, dedupe=MemoryDedupeStore())

    @app.task(name="pay")
    async def pay() -> None:
        pass

    env = app.build(pay.spec, CallOptions(key="pay-1"), (), {})
    for _ in range(2):  # the same message delivered twice
        await app.broker.enqueue([OutgoingJob(uuid.uuid4().hex, "default", env.encode())])
    async with traced_worker(app, provider, concurrency=1) as worker:
        await eventually(lambda: worker.stats.done == 1 and worker.stats.skipped == 1)
        await eventually(lambda: len(by_kind(exporter, SpanKind.CONSUMER)) == 2)
    outcomes = sorted((s.attributes or {})["asyncjobs.outcome"] for s in by_kind(exporter, SpanKind.CONSUMER))
    assert outcomes == ["done", "skipped"]
    [skipped] = [
        s for s in by_kind(exporter, SpanKind.CONSUMER) if (s.attributes or {})["asyncjobs.outcome"] == "skipped"
    ]
    assert [e.name for e in skipped.events] == ["asyncjobs.dedupe.skipped"]


async def test_a_lost_lease_is_a_span_event(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    app = traced_app(provider)
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    started = anyio.Event()

    @app.task(name="victim", timeout=None)
    async def victim() -> None:
        started.set()
        await anyio.sleep(30)

    await victim.enqueue()
    async with traced_worker(app, provider, lease_seconds=0.6) as worker:
        with anyio.fail_after(5):
            await started.wait()
        assert broker.expire_leases() == 1  # the lease expires under the worker's feet
        thief = await broker.consumer(["default"], prefetch=1, lease_seconds=30)
        assert len(await thief.fetch(1, 1.0)) == 1
        await eventually(lambda: worker.stats.lease_lost == 1)
        await eventually(lambda: len(by_kind(exporter, SpanKind.CONSUMER)) == 1)
    [span] = by_kind(exporter, SpanKind.CONSUMER)
    assert [e.name for e in span.events] == ["asyncjobs.lease_lost"]
    assert (span.attributes or {})["asyncjobs.outcome"] == "cancelled"


async def test_without_an_sdk_provider_nothing_is_traced_and_headers_stay_untouched() -> None:
    assert not tracing_enabled(), "the test session never installs a global tracer provider"
    layers = observability_layers("memory://", [])
    assert not any(isinstance(layer, TracingMiddleware) for layer in layers)
    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"))

    @app.task(name="quiet")
    async def quiet() -> None:
        pass

    await quiet.enqueue()
    consumer = await app.broker.consumer(["default"], prefetch=1, lease_seconds=5)
    [delivery] = await consumer.fetch(1, 1.0)
    assert "headers" not in json.loads(delivery.body)


async def test_a_job_without_trace_headers_starts_its_own_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"))  # an untraced producer

    @app.task(name="orphan")
    async def orphan() -> None:
        pass

    await orphan.enqueue()
    with provider.get_tracer("test").start_as_current_span("around the worker"):
        async with traced_worker(app, provider) as worker:
            await eventually(lambda: worker.stats.done == 1)
            await eventually(lambda: len(by_kind(exporter, SpanKind.CONSUMER)) == 1)
    [process] = by_kind(exporter, SpanKind.CONSUMER)
    assert process.parent is None


async def test_the_consumer_layer_traces_the_same_called_directly_or_composed_ahead(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """``TracingMiddleware`` offers ``wrap`` (how the worker composes it) and still honours ``__call__``."""

    async def handler() -> None:
        return None

    spec = TaskSpec("t", handler, TaskOptions(), inspect.signature(handler))
    layer = TracingMiddleware(provider, system="memory")

    async def innermost(job: Job) -> Outcome:
        return Outcome("done")

    names = []
    for run in (lambda job: layer(job, innermost), layer.wrap(innermost)):
        env = Envelope(task="t")
        job = Job(env, Delivery("q", env.id, env.encode(), "tok"), spec, 1, 0.0)
        assert (await run(job)).kind == "done"
        [span] = exporter.get_finished_spans()
        names.append(
            (span.name, span.kind, span.attributes["messaging.message.id"], span.attributes["asyncjobs.outcome"])
        )
        exporter.clear()
        assert names[-1][2] == env.id
    assert [n[:2] for n in names] == [("process q", SpanKind.CONSUMER)] * 2
    assert [n[3] for n in names] == ["done", "done"]
