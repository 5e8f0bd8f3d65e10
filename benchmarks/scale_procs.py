"""Processes of ``python -m benchmarks.scale``: CPU time read from ``/proc``, the process behind a port,
and worker processes started, released at one moment and stopped, each by its PID.

Reading another process's ``/proc/PID/stat`` is all this does to a server: it is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc

from benchmarks.core import Recorder

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent on anything but idle and I/O wait, since boot."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal, *_ = (int(v) for v in stat.readline().split()[1:])
    return (user + nice + system + irq + softirq + steal) / TICKS


def listening_pid(port: int) -> int | None:
    """The PID of the process listening on TCP ``port`` (Linux ``/proc``), or ``None``."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        return int(entry)
    return None


@dataclass(slots=True)
class CpuWindow:
    """CPU seconds of groups of processes (and of the whole machine) over one wall-clock window."""

    groups: Mapping[str, Sequence[int]]
    wall: float = 0.0
    machine: float = 0.0
    used: dict[str, dict[int, float]] = field(default_factory=dict)  # group -> pid -> CPU seconds
    _start: dict[int, float | None] = field(default_factory=dict)
    _began: float = 0.0
    _machine: float = 0.0

    def start(self) -> None:
        self._start = {pid: cpu_seconds(pid) for pids in self.groups.values() for pid in pids}
        self._machine, self._began = machine_busy_seconds(), time.monotonic()

    def stop(self) -> None:
        self.wall = time.monotonic() - self._began
        self.machine = machine_busy_seconds() - self._machine
        for name, pids in self.groups.items():
            self.used[name] = {}
            for pid in pids:
                before, after = self._start.get(pid), cpu_seconds(pid)
                if before is not None and after is not None:
                    self.used[name][pid] = after - before

    def total(self, group: str) -> float | None:
        values = self.used.get(group, {})
        return sum(values.values()) if values else None

    def busiest(self, group: str) -> float | None:
        values = self.used.get(group, {})
        return max(values.values()) if values else None


class StartListener:
    """A loopback UDP port where worker processes say ``ready <pid>`` and report ``index time`` pairs."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.ready: dict[int, int] = {}  # pid -> the port where the process waits for "go"
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes) -> None:
        words = data.split()
        if words[0] == b"ready":
            self.ready[int(words[1])] = int(words[2])
            return
        for k in range(0, len(words) - 1, 2):
            self.recorder.mark_at(int(words[k]), float(words[k + 1]))

    @asynccontextmanager
    async def open(self) -> AsyncIterator[StartListener]:
        listener = self

        class Receive(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                listener.datagram_received(data)

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Receive, local_addr=("127.0.0.1", 0))
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.port = sock.getsockname()[1]
        try:
            yield self
        finally:
            transport.close()


@asynccontextmanager
async def worker_processes(
    url: str, queues: Sequence[Sequence[str]], listener: StartListener, concurrency: int
) -> AsyncIterator[WorkerGate]:
    """One ``asyncjobs worker benchmarks.scale_app:app`` process per entry of ``queues`` (its queues),
    each held before its first fetch until :meth:`WorkerGate.go`; all stopped by PID at the end."""
    env = {**os.environ, "AJBENCH_BROKER": url, "AJBENCH_UDP_PORT": str(listener.port)}
    procs: list[tuple[anyio.abc.Process, IO[bytes]]] = []
    with contextlib.ExitStack() as logs:
        try:
            for own in queues:
                command = [
                    sys.executable, "-m", "asyncjobs.cli", "--log-level", "WARNING", "worker",
                    "benchmarks.scale_app:app", "--broker", url, "-c", str(concurrency), "--drain", "5",
                    *[arg for queue in own for arg in ("-q", queue)],
                ]  # fmt: skip
                log: IO[bytes] = logs.enter_context(tempfile.TemporaryFile())
                proc = await anyio.open_process(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
                procs.append((proc, log))
            yield WorkerGate(procs, listener)
        finally:
            with anyio.CancelScope(shield=True):
                for proc, output in procs:
                    await stop_process(proc, output)


class WorkerGate:
    """The started worker processes: wait until each is ready, then let them all go at once."""

    def __init__(self, procs: list[tuple[anyio.abc.Process, IO[bytes]]], listener: StartListener) -> None:
        self.procs = procs
        self.listener = listener

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.procs]

    async def ready(self) -> None:
        """Until every process has connected and waits at the gate (a process that exits is an error)."""
        while not set(self.pids) <= self.listener.ready.keys():
            for proc, log in self.procs:
                if proc.returncode is not None:
                    raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}: {log_tail(log)}")
            await anyio.sleep(0.02)

    def go(self) -> None:
        """Send ``go`` to every waiting process, one datagram each."""
        assert self.listener.transport is not None
        for pid in self.pids:
            self.listener.transport.sendto(b"go", ("127.0.0.1", self.listener.ready[pid]))


def log_tail(log: IO[bytes], lines: int = 3) -> str:
    log.seek(0)
    return " | ".join(log.read().decode(errors="replace").strip().splitlines()[-lines:])


async def stop_process(proc: anyio.abc.Process, log: IO[bytes]) -> None:
    """SIGTERM by PID (a graceful stop: every job has run by now), SIGKILL after 10 s."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with anyio.move_on_after(10):
            await proc.wait()
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    if proc.returncode not in (0, -signal.SIGTERM):
        print(f"worker {proc.pid} exited with {proc.returncode}: {log_tail(log, 5)}", file=sys.stderr)
