"""A Prometheus endpoint for a worker's metrics (``asyncjobs worker --metrics-port N``).

Needs the ``otel`` extra (``pip install 'asyncjobs-runtime[otel]'``): the OpenTelemetry SDK, its Prometheus
exporter and ``prometheus_client``. The first call in a process installs an SDK ``MeterProvider``
with a Prometheus reader as the global provider, so every instrument of the runtime reports to it;
later calls reuse it. Queue depth and the age of the oldest ready job are observable gauges, fed by
a poll of ``broker.stats`` so that a scrape never waits on the broker.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from asyncjobs.broker import Broker, QueueStats
from asyncjobs.errors import ConfigError
from asyncjobs.extras import install_command
from asyncjobs.middleware.metrics import metrics_enabled

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation

log = logging.getLogger(__name__)

OTEL_EXTRA_HINT = f"metrics need the optional dependencies: {install_command('otel')}"


@dataclass(slots=True)
class _Source:
    """The latest stats of the queues one server watches."""

    queues: tuple[str, ...]
    stats: dict[str, QueueStats] = field(default_factory=dict)


@dataclass(slots=True)
class _Installed:
    registry: Any  # prometheus_client CollectorRegistry
    sources: list[_Source] = field(default_factory=list)


_installed: _Installed | None = None


def _install() -> _Installed:
    """Install (once per process) the SDK meter provider, its Prometheus reader and the queue gauges."""
    global _installed
    if _installed is not None:
        return _installed
    try:
        import prometheus_client
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
    except ImportError as exc:
        raise ConfigError(f"{OTEL_EXTRA_HINT} ({exc})") from None
    if metrics_enabled():
        # The application configured its own SDK provider; a second one cannot become global.
        # Serve the default registry, where a PrometheusMetricReader of that provider reports.
        log.warning(
            "a MeterProvider is already configured: serving prometheus_client's default registry; "
            "give that provider a PrometheusMetricReader to see asyncjobs' metrics there"
        )
        installed = _Installed(prometheus_client.REGISTRY)
        meter = metrics.get_meter("asyncjobs")
    else:
        registry = prometheus_client.CollectorRegistry(auto_describe=True)
        provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
        metrics.set_meter_provider(provider)
        installed = _Installed(registry)
        meter = provider.get_meter("asyncjobs")

    def depth(options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        for source in installed.sources:
            for queue, s in source.stats.items():
                for state, value in (("ready", s.ready), ("scheduled", s.scheduled), ("in_flight", s.in_flight)):
                    yield Observation(value, {"queue": queue, "state": state})
                yield Observation(s.dead, {"queue": queue, "state": "dead"})

    def oldest(options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        for source in installed.sources:
            for queue, s in source.stats.items():
                yield Observation(s.oldest_ready_age or 0.0, {"queue": queue})

    meter.create_observable_gauge(
        "asyncjobs.queue.depth", [depth], description="Jobs in a queue, by state (ready, scheduled, in_flight, dead)"
    )
    meter.create_observable_gauge(
        "asyncjobs.queue.oldest_age", [oldest], unit="s", description="Age of the oldest ready job (0 when empty)"
    )
    _installed = installed
    return installed


async def _poll(broker: Broker, source: _Source, every: float) -> None:
    """Refresh ``source`` from ``broker.stats`` every ``every`` seconds until cancelled."""
    failing = False
    while True:
        try:
            for queue in source.queues:
                source.stats[queue] = await broker.stats(queue)
            failing = False
        except Exception as exc:  # the broker is down: keep serving the last values
            if not failing:
                log.warning("queue stats for metrics failed (%s); serving the last values", exc)
            failing = True
        await anyio.sleep(every)


@asynccontextmanager
async def serve_metrics(
    port: int,
    broker: Broker,
    queues: Sequence[str],
    *,
    host: str = "127.0.0.1",
    poll_seconds: float = 5.0,
) -> AsyncIterator[None]:
    """Serve Prometheus metrics on ``host:port`` while the block runs (``/metrics``, or any path).

    The endpoint is :class:`~asyncjobs.metrics_http.MetricsHTTPServer`: one thread, a bounded
    number of connections, a timeout on each.

    Connects ``broker`` first. Raises :class:`~asyncjobs.errors.ConfigError` when the ``otel``
    extra is missing or the port cannot be bound. Queue gauges cover ``queues`` and refresh every
    ``poll_seconds``.
    """
    installed = _install()
    from asyncjobs.metrics_http import MetricsHTTPServer

    await broker.connect()  # here, before the worker's own (idempotent) connect: never two at once

    try:
        server = MetricsHTTPServer(host, port, installed.registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    source = _Source(tuple(queues))
    installed.sources.append(source)
    log.info("serving metrics on http://%s:%d/metrics", host, port)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_poll, broker, source, poll_seconds)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
    finally:
        installed.sources.remove(source)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.close)
