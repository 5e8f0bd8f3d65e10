"""The HTTP side of the metrics endpoint: one thread, a bounded number of connections, timeouts.

``prometheus_client.start_http_server`` starts a thread per connection and never times one out:
200 idle connections hold 200 threads for as long as their peers like. This server runs an
asyncio loop of its own on one thread (so a scrape is answered even while the worker's loop is
busy), holds at most ``max_connections`` connections (when full, the connection that has waited
longest without sending a request is closed to make room), gives a client ``timeout`` seconds to
send its request and to read the answer, and answers one request per connection. What it serves
is ``prometheus_client``'s own exposition of the registry (text format, or OpenMetrics when the
scraper asks for it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
TIMEOUT = 5.0  # seconds a client has to send its request, and to take the answer
_HEAD_LIMIT = 16 * 1024  # bytes of request line and headers


class MetricsHTTPServer:
    """Serve ``registry`` on ``host:port`` from a thread of its own until :meth:`close`.

    The socket is bound in the constructor, so a port in use raises :class:`OSError` at once.
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: Any,
        *,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = TIMEOUT,
    ) -> None:
        self.registry = registry
        self.max_connections = max_connections
        self.timeout = timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(128)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        # Connections that have not sent a whole request yet, oldest first: the first to go when full.
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self._open = 0
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._stopped: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="asyncjobs-metrics", daemon=True)
        self._thread.start()
        self._started.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except Exception:
            log.exception("metrics endpoint stopped")
        finally:
            self._started.set()
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._sock, limit=_HEAD_LIMIT)
        self._started.set()
        async with server:
            await self._stopped.wait()
        handlers = list(self._handlers)
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        self._open += 1
        try:
            if self._open > self.max_connections:
                if not self._waiting:
                    return  # every slot is answering a request: this one is closed at once
                oldest = next(iter(self._waiting))
                self._waiting.pop(oldest)
                oldest.close()  # its reader sees EOF and its handler ends
            self._waiting[writer] = None
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            finally:
                self._waiting.pop(writer, None)
            await asyncio.wait_for(self._answer(head, writer), self.timeout)
        except (TimeoutError, ConnectionError):
            pass
        except Exception:  # a bug here must not end the endpoint
            log.exception("metrics endpoint: answering a request failed")
        finally:
            self._open -= 1
            if handler is not None:
                self._handlers.discard(handler)
            writer.close()

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        from prometheus_client.exposition import choose_encoder

        lines = head.decode("latin-1").split("\r\n")
        method = lines[0].split(" ", 1)[0]
        if method not in ("GET", "HEAD"):
            status, content_type, body = "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n"
        else:
            accept = ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
            encoder, content_type = choose_encoder(accept)
            status, body = "200 OK", encoder(self.registry)
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        writer.write(header if method == "HEAD" else header + body)
        await writer.drain()

    def close(self) -> None:
        """Stop serving, close every connection and end the thread (within a few seconds)."""
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=self.timeout + 1)
