"""The metrics endpoint holds a bounded number of connections and threads, and times idle ones out."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import anyio
import pytest
from prometheus_client import CollectorRegistry, Counter

from asyncjobs.memory import MemoryBroker
from asyncjobs.metrics_http import MetricsHTTPServer
from asyncjobs.metrics_server import serve_metrics
from tests.observability.test_metrics import free_port


def registry_with_a_counter() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("probe_total", "a counter for the test", registry=registry).inc(3)
    return registry


def get(port: int, path: str = "/metrics") -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.read().decode()


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_two_hundred_idle_connections_hold_no_threads_and_do_not_block_a_scrape() -> None:
    server = MetricsHTTPServer("127.0.0.1", 0, registry_with_a_counter(), max_connections=16, timeout=1.0)
    threads_before = threading.active_count()
    idle: list[socket.socket] = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.3)
        assert threading.active_count() <= threads_before, "no thread per connection"
        status, text = get(server.port)  # the oldest idle connections make room for it
        assert status == 200
        assert "probe_total 3.0" in text
        assert sum(closed_by_server(s) for s in idle) >= 200 - 16, "at most max_connections stay open"
        time.sleep(1.5)
        assert all(closed_by_server(s) for s in idle), "an idle connection is closed after the timeout"
    finally:
        for s in idle:
            s.close()
        server.close()
    assert not any(t.name == "asyncjobs-metrics" for t in threading.enumerate()), "close() ends the thread"


def test_a_slow_client_is_cut_off_and_others_are_served_meanwhile() -> None:
    server = MetricsHTTPServer("127.0.0.1", 0, registry_with_a_counter(), timeout=0.5)
    try:
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        assert get(server.port)[0] == 200
        time.sleep(1.0)
        assert closed_by_server(slow)
        slow.close()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as post:
            post.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert post.recv(100).startswith(b"HTTP/1.1 405")
    finally:
        server.close()


def test_a_port_in_use_is_an_error_at_once() -> None:
    server = MetricsHTTPServer("127.0.0.1", 0, registry_with_a_counter())
    try:
        with pytest.raises(OSError, match="in use"):
            MetricsHTTPServer("127.0.0.1", server.port, registry_with_a_counter())
    finally:
        server.close()


@pytest.mark.anyio
async def test_a_workers_metrics_endpoint_survives_a_flood_of_idle_connections() -> None:
    port = free_port()
    async with serve_metrics(port, MemoryBroker(), ["default"]):
        threads_before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
        try:
            await anyio.sleep(0.5)
            assert threading.active_count() - threads_before < 5, "no thread per connection"
            status, text = await anyio.to_thread.run_sync(get, port)
            assert status == 200
            assert "asyncjobs_queue_depth" in text
        finally:
            for s in idle:
                s.close()
