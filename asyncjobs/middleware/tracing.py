"""OpenTelemetry tracing after the messaging semantic conventions.

* Producer: one ``PRODUCER`` span per enqueued job, ``send DESTINATION``, whose W3C context
  (``traceparent``/``tracestate``, through the globally configured propagator) is injected into
  the envelope's headers: it is the job's creation context.
* Consumer: one ``CONSUMER`` span per processing attempt, ``process DESTINATION``. The creation
  context extracted from the headers is its parent (one message per span: the conventions allow
  it) and its link, so a job continues its producer's trace, including a producer in another
  process or language that only set ``traceparent``.

``DESTINATION`` is the queue's name on the broker (on ``amqp://`` with the URL's ``queue_prefix``).
Attributes: ``messaging.system`` (``rabbitmq``, ``redis``, ``memory``), ``server.address``,
``server.port``, ``messaging.destination.name``, ``messaging.message.id``,
``messaging.operation.type``/``.name`` (``send``, ``process``), ``messaging.message.body.size``
(consumer), ``messaging.rabbitmq.destination.routing_key`` (RabbitMQ, when the job goes straight to
its queue), ``error.type`` when an attempt failed, and ``asyncjobs.task``, ``asyncjobs.queue``,
``asyncjobs.attempt``, at the end ``asyncjobs.outcome`` and ``asyncjobs.outcome.reason``. Handler
errors are recorded as exceptions with an error status; retry, timeout, dead letter, dedupe skip
or deferral, lease loss and shutdown are span events.

With no SDK tracer provider configured, the worker leaves this layer out and the producer layer
returns at once: tracing costs nothing unless it is on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status, StatusCode

from asyncjobs.clock import wall_time
from asyncjobs.errors import JobTimeout
from asyncjobs.job import Job, Outcome
from asyncjobs.middleware.chain import CallNext
from asyncjobs.middleware.messaging import Messaging, messaging_for, messaging_system

if TYPE_CHECKING:
    from asyncjobs.app import Publish
    from asyncjobs.envelope import Envelope
    from asyncjobs.middleware.metrics import MetricsMiddleware

SCOPE = "asyncjobs"
_ROOT = Context()
__all__ = ["TracingMiddleware", "TracingProducerMiddleware", "messaging_system", "observability_layers"]


_NOT_REAL = (ProxyTracerProvider, NoOpTracerProvider)
# trace.get_tracer_provider() looks in os.environ on every call while no provider is set, which
# costs about a tenth of an enqueue. Unless the environment names a provider to load (checked once,
# here), an unset global provider is seen directly; an OpenTelemetry without that module attribute
# gets the plain call.
_UNSET_SEEN_DIRECTLY = "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ and hasattr(trace, "_TRACER_PROVIDER")


def _no_global_provider() -> bool:
    """True when no global tracer provider is set, nor would be loaded by ``get_tracer_provider``."""
    return _UNSET_SEEN_DIRECTLY and trace._TRACER_PROVIDER is None


def tracing_enabled(provider: trace.TracerProvider | None = None) -> bool:
    """Whether ``provider`` (default: the global one) is a real (SDK) tracer provider."""
    if provider is None:
        if _no_global_provider():
            return False
        provider = trace.get_tracer_provider()
    return not isinstance(provider, _NOT_REAL)


class _Traced:
    """Finds a tracer: the one of an explicit provider, else the global one when it is real."""

    def __init__(self, tracer_provider: trace.TracerProvider | None) -> None:
        self._explicit = tracer_provider.get_tracer(SCOPE) if tracer_provider is not None else None
        self._global: tuple[trace.TracerProvider, trace.Tracer] | None = None

    def tracer(self) -> trace.Tracer | None:
        if self._explicit is not None:
            return self._explicit
        if _no_global_provider():
            return None
        provider = trace.get_tracer_provider()
        if self._global is not None and self._global[0] is provider:
            return self._global[1]
        if not tracing_enabled(provider):
            return None
        self._global = (provider, provider.get_tracer(SCOPE))
        return self._global[1]


class TracingMiddleware(_Traced):
    """The consumer side: one ``CONSUMER`` span around each attempt (the outermost layer).

    Why the worker cancelled an attempt (``lease_lost``, ``shutdown``) is read from
    :attr:`Job.cancel_reason <asyncjobs.job.Job.cancel_reason>` unless ``cancel_reason`` is given.
    ``messaging`` describes the broker (the worker fills it in from its broker URL); ``system``
    alone names the messaging system.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        system: str = "unknown",
        messaging: Messaging | None = None,
        cancel_reason: Callable[[Job], str | None] | None = None,
    ) -> None:
        super().__init__(tracer_provider)
        self.messaging = messaging if messaging is not None else Messaging(system)
        self.cancel_reason = cancel_reason

    @property
    def system(self) -> str:
        """The ``messaging.system`` of the spans."""
        return self.messaging.system

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        """Run the rest of the chain inside the attempt's span."""
        return await self.wrap(call_next)(job)

    def wrap(self, call_next: CallNext) -> CallNext:
        """This layer around ``call_next`` (see :func:`~asyncjobs.middleware.chain.build_chain`)."""
        tracer_of = self.tracer
        process = self._process

        async def traced(job: Job) -> Outcome:
            tracer = tracer_of()  # looked up per job: a global provider may be set after start-up
            if tracer is None:
                return await call_next(job)
            return await process(job, call_next, tracer)

        return traced

    async def _process(self, job: Job, call_next: CallNext, tracer: trace.Tracer) -> Outcome:
        env = job.envelope
        transport = job.delivery.headers  # AMQP headers: where an outside instrumented publisher puts it
        carrier = transport if transport and "traceparent" not in env.headers else env.headers
        parent = propagate.extract(carrier) if carrier else _ROOT  # never the runner's ambient context
        created = trace.get_current_span(parent).get_span_context()
        messaging = self.messaging
        destination = messaging.destination(job.queue)
        attributes = messaging.attributes()
        attributes.update(
            {
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": destination,
                "messaging.message.id": job.id,
                "messaging.message.body.size": len(job.delivery.body),
                "asyncjobs.task": job.task,
                "asyncjobs.queue": job.queue,
                "asyncjobs.attempt": job.attempt,
                "asyncjobs.delivery_count": job.delivery.delivery_count,
            }
        )
        if messaging.system == "rabbitmq":
            attributes["messaging.rabbitmq.destination.routing_key"] = destination
        if env.key is not None:
            attributes["asyncjobs.idempotency_key"] = env.key
        with tracer.start_as_current_span(
            f"process {destination}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(created)] if created.is_valid else None,  # the creation context, per the conventions
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                outcome = await call_next(job)
            except BaseException as exc:
                reason = self.cancel_reason(job) if self.cancel_reason is not None else job.cancel_reason
                if reason is not None:
                    span.add_event(f"asyncjobs.{reason}")
                    span.set_attribute("asyncjobs.outcome", "cancelled")
                    span.set_attribute("asyncjobs.outcome.reason", reason)
                else:
                    span.set_attribute("error.type", type(exc).__qualname__)
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            _annotate(span, job, outcome)
            return outcome


def _annotate(span: trace.Span, job: Job, outcome: Outcome) -> None:
    """Outcome attributes and events on the attempt's span."""
    span.set_attribute("asyncjobs.outcome", outcome.kind)
    span.set_attribute("asyncjobs.outcome.reason", outcome.reason)
    error = outcome.error
    if error is not None and outcome.kind in ("retry", "dead"):
        span.set_attribute("error.type", type(error).__qualname__)
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        if isinstance(error, JobTimeout):
            span.add_event("asyncjobs.timeout", {"asyncjobs.timeout": job.timeout or 0.0})
    if outcome.kind == "retry":
        span.add_event("asyncjobs.retry", {"asyncjobs.retry.delay": outcome.delay, "asyncjobs.attempt": job.attempt})
    elif outcome.kind == "dead":
        span.add_event("asyncjobs.dead_letter", {"asyncjobs.dead_letter.reason": outcome.reason})
    elif outcome.kind == "skipped":
        span.add_event("asyncjobs.dedupe.skipped", {"asyncjobs.idempotency_key": job.envelope.key or ""})
    elif outcome.kind == "deferred":
        span.add_event("asyncjobs.dedupe.deferred", {"asyncjobs.retry.delay": outcome.delay})
    if job.state.get("cancellation_swallowed"):
        span.add_event("asyncjobs.cancellation_swallowed")


class TracingProducerMiddleware(_Traced):
    """The producer side: a ``PRODUCER`` span per job, its context injected into the job's headers.

    The span covers the broker's accept (it ends when the enqueue returned); a job refused by its
    idempotency key gets ``asyncjobs.accepted = false``. ``messaging`` describes the broker (a
    value, or a callable read at each enqueue; the app fills it in from its broker URL).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        system: str = "unknown",
        messaging: Messaging | Callable[[], Messaging] | None = None,
    ) -> None:
        super().__init__(tracer_provider)
        self.messaging: Messaging | Callable[[], Messaging] = messaging if messaging is not None else Messaging(system)

    @property
    def system(self) -> str:
        """The ``messaging.system`` of the spans."""
        return self._messaging().system

    def _messaging(self) -> Messaging:
        return self.messaging if isinstance(self.messaging, Messaging) else self.messaging()

    async def __call__(self, envelopes: Sequence[Envelope], call_next: Publish) -> list[bool]:
        """Publish ``envelopes`` with trace headers inside their spans."""
        tracer = self.tracer()
        if tracer is None:
            return await call_next(envelopes)
        messaging = self._messaging()
        common = messaging.attributes()
        rabbitmq = messaging.system == "rabbitmq"
        now = wall_time()
        spans: list[trace.Span] = []
        traced: list[Envelope] = []
        for env in envelopes:
            destination = messaging.destination(env.queue)
            attributes = {
                **common,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": destination,
                "messaging.message.id": env.id,
                "asyncjobs.task": env.task,
                "asyncjobs.queue": env.queue,
                "asyncjobs.attempt": env.attempt,
            }
            if rabbitmq and (env.not_before is None or env.not_before <= now):  # a delayed job waits in a delay queue
                attributes["messaging.rabbitmq.destination.routing_key"] = destination
            span = tracer.start_span(f"send {destination}", kind=SpanKind.PRODUCER, attributes=attributes)
            headers = dict(env.headers)
            propagate.inject(headers, context=trace.set_span_in_context(span))
            spans.append(span)
            traced.append(replace(env, headers=headers))
        try:
            accepted = await call_next(traced)
        except BaseException as exc:
            for span in spans:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                span.end()
            raise
        for span, ok in zip(spans, accepted, strict=True):
            span.set_attribute("asyncjobs.accepted", ok)
            span.end()
        return accepted


def observability_layers(broker_url: str, middleware: Sequence[object]) -> list[TracingMiddleware | MetricsMiddleware]:
    """The worker's outermost layers: tracing and metrics, each only when an SDK provider is set.

    A :class:`TracingMiddleware` the user passed in ``middleware`` is completed (what it knows of
    the broker) instead of being doubled.
    """
    from asyncjobs.middleware.metrics import MetricsMiddleware, metrics_enabled

    layers: list[TracingMiddleware | MetricsMiddleware] = []
    messaging = messaging_for(broker_url)
    given = [m for m in middleware if isinstance(m, TracingMiddleware)]
    for layer in given:
        if layer.messaging.system == "unknown":
            layer.messaging = messaging
    if not given and tracing_enabled():
        layers.append(TracingMiddleware(messaging=messaging))
    if metrics_enabled():
        layers.append(MetricsMiddleware())
    return layers
