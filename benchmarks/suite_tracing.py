"""Tracing overhead on ``memory://``: the cost of the tracing layers when no OpenTelemetry SDK is configured.

Four rows of the same asyncjobs workload:

* ``tracing-none``: no tracing code at all: the app's built-in producer tracing layer is taken
  out of ``app.producer_middleware`` and the worker has no tracing layer (the reference).
* ``tracing-off``: the defaults with no SDK configured: the producer layer is there and returns
  at once, the worker leaves its tracing layer out. Target: within 5% of ``tracing-none``.
* ``tracing-on``: a ``TracingMiddleware`` put in the worker's chain explicitly (as an application
  that always adds it would), still with no SDK: the layer runs for every job and finds no tracer.
* ``tracing-sdk``: the SDK's ``TracerProvider`` (no exporter) given to both layers: the price of
  spans that are really created, for reference.
"""

from __future__ import annotations

from typing import Any

from asyncjobs import App
from benchmarks.core import System
from benchmarks.suite_memory import AsyncJobsMemory


class TracingNone(AsyncJobsMemory):
    """No tracing code at all: the built-in producer layer removed, none in the worker."""

    key = "tracing-none"
    label = "asyncjobs memory://, tracing layers removed"
    role = "ceiling"

    def make_app(self) -> App:
        from asyncjobs.middleware.tracing import TracingProducerMiddleware

        app = super().make_app()
        app.producer_middleware = [m for m in app.producer_middleware if not isinstance(m, TracingProducerMiddleware)]
        return app


class TracingOff(AsyncJobsMemory):
    """asyncjobs defaults, no SDK: the producer layer returns at once, the worker leaves its layer out."""

    key = "tracing-off"
    label = "defaults, no SDK configured"


class TracingPresent(AsyncJobsMemory):
    """An explicit ``TracingMiddleware`` in the chain, no SDK configured."""

    key = "tracing-on"
    label = "+ TracingMiddleware in the chain, no SDK"

    def worker_middleware(self) -> list[Any]:
        from asyncjobs.middleware.tracing import TracingMiddleware

        return [TracingMiddleware()]


class TracingSdk(AsyncJobsMemory):
    """Spans really created: an SDK ``TracerProvider`` without exporter on both sides."""

    key = "tracing-sdk"
    label = "+ SDK TracerProvider (no exporter), for reference"
    note = "the SDK provider is passed to the layers, never installed globally"

    def make_app(self) -> App:
        from opentelemetry.sdk.trace import TracerProvider

        from asyncjobs.middleware.tracing import TracingProducerMiddleware

        self.provider = TracerProvider()
        return App(
            self.url,
            default_queue=self.prefix,
            producer_middleware=[TracingProducerMiddleware(self.provider, system="memory")],
        )

    def worker_middleware(self) -> list[Any]:
        from asyncjobs.middleware.tracing import TracingMiddleware

        return [TracingMiddleware(self.provider)]

    async def check(self) -> str | None:
        try:
            import opentelemetry.sdk.trace  # noqa: F401
        except ImportError:
            return "opentelemetry-sdk is not installed"
        return await super().check()


SYSTEMS: list[type[System]] = [TracingNone, TracingOff, TracingPresent, TracingSdk]
