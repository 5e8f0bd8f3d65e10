"""The loopback TCP proxy, against the shared Redis server (PING through it; nothing is written)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from tests.harness import SERVERS, require_server
from tests.servers.proxy import TcpProxy, tcp_proxy

pytestmark = [pytest.mark.redis, pytest.mark.fault]


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    require_server("redis")
    with tcp_proxy(*SERVERS["redis"]) as started:
        yield started


def ping(sock: socket.socket) -> bytes:
    sock.sendall(b"PING\r\n")
    return sock.recv(64)


def connect(proxy: TcpProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def closed(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` (FIN or RST): a PING gets no answer."""
    try:
        return ping(sock) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_ping_goes_through_and_a_cut_closes_the_connection(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert ping(sock) == b"+PONG\r\n"
        assert proxy.connections == 1
        assert proxy.cut() == 1
        assert closed(sock)
    assert proxy.connections == 0
    with connect(proxy) as again:
        assert ping(again) == b"+PONG\r\n", "a new connection goes through after a cut"


def test_a_redis_client_reconnects_after_a_cut(proxy: TcpProxy) -> None:
    client = redis.Redis(host=proxy.listen_host, port=proxy.port, socket_timeout=2, retry_on_error=[])
    try:
        assert client.ping()
        proxy.cut()
        with contextlib.suppress(redis.ConnectionError):  # redis-py may retry on its own, or fail this one
            client.ping()
        assert client.ping(), "the client connects again through the proxy"
        assert proxy.accepted >= 2
    finally:
        client.close()


def test_stall_holds_the_bytes_and_keeps_the_socket(proxy: TcpProxy) -> None:
    with connect(proxy, timeout=0.3) as sock:
        assert ping(sock) == b"+PONG\r\n"
        proxy.stall()
        with pytest.raises(TimeoutError):
            ping(sock)
        proxy.resume()
        sock.settimeout(2.0)
        assert sock.recv(64) == b"+PONG\r\n", "the stalled request is answered once the proxy forwards again"
        proxy.stall(0.5)  # resumes on its own
        began = time.monotonic()
        assert ping(sock) == b"+PONG\r\n"
        assert time.monotonic() - began >= 0.4


def test_delay_slows_each_direction(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        proxy.delay = 0.15
        began = time.monotonic()
        assert ping(sock) == b"+PONG\r\n"
        assert time.monotonic() - began >= 0.3, "150 ms out and 150 ms back"
        proxy.delay = 0.0
        began = time.monotonic()
        assert ping(sock) == b"+PONG\r\n"
        assert time.monotonic() - began < 0.1


def test_refuse_turns_new_connections_away_until_lifted(proxy: TcpProxy) -> None:
    proxy.refuse = True
    with connect(proxy) as sock:
        assert closed(sock)
    proxy.refuse = False
    with connect(proxy) as sock:
        assert ping(sock) == b"+PONG\r\n"


def test_an_unreachable_target_closes_the_client() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]  # bound, not listening: connections to it are refused
        with tcp_proxy("127.0.0.1", port) as proxy, connect(proxy) as sock:
            assert closed(sock)
            assert proxy.connections == 0
