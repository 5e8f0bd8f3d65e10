"""``asyncjobs worker`` with OpenTelemetry configured in a startup hook: its spans follow the conventions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asyncjobs import App
from asyncjobs.middleware.tracing import TracingProducerMiddleware
from tests.harness import require_server

pytestmark = [pytest.mark.anyio, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]


def start_worker(url: str, spans_file: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncjobs.cli", "worker", "tests.observability.otel_app:app", "--broker", url],
        cwd=ROOT,
        env={**os.environ, "SPANS_FILE": str(spans_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_a_worker_process_traces_after_a_startup_hook_set_the_sdk(tmp_path: Path) -> None:
    require_server("redis")
    pytest.importorskip("asyncjobs_redis")
    from tests.harness.redis import delete_prefix
    from tests.observability.otel_app import work

    prefix = f"o{uuid.uuid4().hex[:10]}"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    spans_file = tmp_path / "spans.jsonl"
    proc = start_worker(url, spans_file)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        producer = App(url, producer_middleware=[TracingProducerMiddleware(provider)])
        async with producer:
            await producer.publish([producer.build(work.spec, work._call, (n,), {}) for n in range(3)])
        deadline = time.monotonic() + 30
        while not spans_file.exists() or spans_file.read_text().count("\n") < 3:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the worker wrote no spans"
            await anyio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        await delete_prefix(prefix)
    sends = {s.context.span_id: s for s in exporter.get_finished_spans() if s.context is not None}
    assert [s.name for s in sends.values()] == ["send email"] * 3
    processed = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert [p["name"] for p in processed] == ["process email"] * 3
    for span in processed:
        assert span["kind"] == "SpanKind.CONSUMER"
        attrs = span["attributes"]
        assert (attrs["messaging.system"], attrs["messaging.destination.name"]) == ("redis", "email")
        assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.1", 6379)
        parent = int(span["parent_id"], 16)
        assert parent in sends  # the producer's span, in another process
        assert [int(link["context"]["span_id"], 16) for link in span["links"]] == [parent]
