"""Tracing overhead on ``memory://``: the cost of the tracing layer when no OpenTelemetry SDK is configured.

Three rows of the same asyncjobs workload:

* ``tracing-off``: the defaults. With no SDK tracer provider the worker leaves the tracing layer
  out and the producer layer returns at once.
* ``tracing-on``: a ``TracingMiddleware`` put in the worker's chain explicitly (as an application
  that always adds it would), still with no SDK configured: the layer runs for every job and
  finds no tracer. Target: within 5% of ``tracing-off``.
* ``tracing-sdk``: the SDK's ``TracerProvider`` (no exporter) given to both the producer and the
  consumer layer: the price of spans that are really created, for reference.
"""

from __future__ import annotations

from typing import Any

from benchmarks.core import System
from benchmarks.suite_memory import AsyncJobsMemory


class TracingOff(AsyncJobsMemory):
    """asyncjobs defaults, no SDK: the tracing layer is left out of the worker's chain."""

    key = "tracing-off"
    label = "asyncjobs memory://, no SDK (defaults)"
    role = "ceiling"


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

    def make_app(self) -> Any:
        from opentelemetry.sdk.trace import TracerProvider

        from asyncjobs import App
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


SYSTEMS: list[type[System]] = [TracingOff, TracingPresent, TracingSdk]
