"""A loopback TCP proxy for fault tests: cut, stall or slow down the connections to a server.

``tcp_proxy(host, port)`` listens on a free ``127.0.0.1`` port and forwards every connection to
``host:port``; point the client under test at ``proxy.port`` instead of the server::

    with tcp_proxy("127.0.0.1", 6379) as proxy:
        client = Redis(port=proxy.port)
        proxy.cut()            # close every connection through it now (RST; reset=False: FIN)
        proxy.stall(2.0)       # forward nothing for 2 s, sockets kept open (a hung network/server)
        proxy.stall()          # ... until proxy.resume()
        proxy.delay = 0.2      # add 200 ms each way to every chunk from now on
        proxy.refuse = True    # accept new connections and close them at once (server "down")

It runs an asyncio loop on a daemon thread of its own, so it keeps forwarding while the test's
code blocks, and its methods can be called from sync and async code alike (each returns in a few
milliseconds; ``stall`` returns at once and resumes on its own). While stalled it reads nothing,
so data waits in the kernel's buffers and the sender sees back-pressure. ``connections`` is the
number of open client connections, ``accepted`` how many it has taken in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

CHUNK = 65536


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.tasks: list[asyncio.Task[None]] = []

    def close(self, reset: bool) -> None:
        for writer in self.writers:
            if reset:
                writer.transport.abort()
            else:
                writer.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class TcpProxy:
    """See the module docstring. Use :func:`tcp_proxy`, or :meth:`start` and :meth:`close`."""

    def __init__(self, target_host: str, target_port: int, delay: float = 0.0, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = 0
        self.delay = delay
        self.refuse = False
        self.accepted = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._resume: asyncio.TimerHandle | None = None

    @property
    def connections(self) -> int:
        return len(self._links)

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self.port)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> TcpProxy:
        """Start listening; returns the proxy (its ``port`` is set)."""
        self._thread.start()

        async def listen() -> int:
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
            port: int = self._server.sockets[0].getsockname()[1]
            return port

        self.port = self._run(listen())
        return self

    def close(self) -> None:
        """Stop listening, close every connection (RST) and stop the thread (bounded)."""
        if not self._thread.is_alive():
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            self._cut(reset=True)
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            self._run(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def cut(self, reset: bool = True) -> int:
        """Close every connection through the proxy now, both sides (``reset``: RST, else FIN).

        New connections are still accepted (set ``refuse`` to turn them away). Returns how many it cut.
        """

        async def cut() -> int:
            return self._cut(reset)

        return self._run(cut())

    def stall(self, seconds: float | None = None) -> None:
        """Stop forwarding in both directions, connections kept open; resume after ``seconds``
        (``None``: until :meth:`resume`). Returns at once."""

        def stall() -> None:
            assert self._flowing is not None
            if self._resume is not None:
                self._resume.cancel()
                self._resume = None
            self._flowing.clear()
            if seconds is not None:
                self._resume = self._loop.call_later(seconds, self._flowing.set)

        self._call(stall)

    def resume(self) -> None:
        """Forward again after :meth:`stall`."""

        def resume() -> None:
            assert self._flowing is not None
            if self._resume is not None:
                self._resume.cancel()
                self._resume = None
            self._flowing.set()

        self._call(resume)

    def _call(self, function: Any) -> None:
        async def call() -> None:
            function()

        self._run(call())

    def _cut(self, reset: bool) -> int:
        links = list(self._links)
        for link in links:
            link.close(reset)
        self._links.clear()
        return len(links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5.0)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link) -> None:
        """Forward one direction; data read is written ``delay`` seconds later, and nothing moves while stalled."""
        assert self._flowing is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)

        async def send() -> None:
            assert self._flowing is not None
            while True:
                due, data = await queue.get()
                if not data:
                    if sink.can_write_eof():
                        sink.write_eof()
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                await self._flowing.wait()
                data = await source.read(CHUNK)
                await queue.put((loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        except OSError:  # a side reset or failed: the whole connection goes
            if link in self._links:
                self._links.discard(link)
                link.close(reset=True)
        finally:
            sender.cancel()
        current = asyncio.current_task()
        if link in self._links and all(task.done() or task is current for task in link.tasks):
            self._links.discard(link)  # both directions ended: the connection is over
            link.close(reset=False)


@contextmanager
def tcp_proxy(target_host: str, target_port: int, delay: float = 0.0) -> Iterator[TcpProxy]:
    """A started proxy to ``target_host:target_port`` on a free loopback port; closed at the end."""
    proxy = TcpProxy(target_host, target_port, delay).start()
    try:
        yield proxy
    finally:
        proxy.close()
