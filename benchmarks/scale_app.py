"""The app of the worker processes of ``python -m benchmarks.scale`` (``asyncjobs worker benchmarks.scale_app:app``).

Configured from the environment:

* ``AJBENCH_BROKER``: the broker URL (the worker's ``--broker`` gives the same);
* ``AJBENCH_UDP_PORT``: where, on 127.0.0.1, the process says ``ready <pid>`` and reports job starts;
The startup hook (run after the broker connected, before the first fetch) sends
``ready <pid> <port>`` and waits until the benchmark sends ``go`` to that port (at most 120 s),
so every worker starts fetching at the same moment and the processes' start-up (imports, connect) stays out of the drain. Each
handler adds ``index monotonic-time`` to a buffer that is sent, 100 pairs per datagram, at most
10 ms later: one ``time.monotonic()`` clock for every process of the machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import anyio
import anyio.abc

from asyncjobs import App

REPORT_TO = ("127.0.0.1", int(os.environ.get("AJBENCH_UDP_PORT", "9")))
PAIRS_PER_DATAGRAM = 100
FLUSH_AFTER = 0.01

app = App(os.environ.get("AJBENCH_BROKER", "memory://"), default_queue="q0")
_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_pending: list[str] = []
_flush: asyncio.TimerHandle | None = None


def _send() -> None:
    global _flush
    if _flush is not None:
        _flush.cancel()
        _flush = None
    while _pending:
        chunk = _pending[: 2 * PAIRS_PER_DATAGRAM]
        del _pending[: 2 * PAIRS_PER_DATAGRAM]
        _sock.sendto(" ".join(chunk).encode(), REPORT_TO)


@app.on_startup
async def wait_for_go() -> None:
    """Say ready, then wait (bounded) until the benchmark lets every worker start."""
    async with await anyio.create_udp_socket(family=socket.AF_INET, local_host="127.0.0.1") as gate:
        port = gate.extra(anyio.abc.SocketAttribute.local_port)
        await gate.sendto(f"ready {os.getpid()} {port}".encode(), *REPORT_TO)
        with anyio.move_on_after(120):
            await gate.receive()


@app.task(name="bench.noop")
async def noop(index: int) -> None:
    """Report that job ``index`` started."""
    global _flush
    _pending.extend((str(index), repr(time.monotonic())))
    if len(_pending) >= 2 * PAIRS_PER_DATAGRAM:
        _send()
    elif _flush is None:
        _flush = asyncio.get_running_loop().call_later(FLUSH_AFTER, _send)
