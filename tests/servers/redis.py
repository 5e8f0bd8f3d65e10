"""A private redis-server for tests that restart, crash or reconfigure a server.

``redis_server(*options, aof=False)`` starts ``redis-server`` on a free loopback port with a dir
of its own and yields a :class:`RedisServer` (``.url`` is ``redis://127.0.0.1:PORT/0``)::

    with redis_server(aof=True) as server:        # --appendonly yes --appendfsync always
        broker = RedisBroker(server.url)
        server.restart(down=1.0)                   # SIGKILL (a crash), wait, start on the same dir
        server.restart(hard=False)                 # SHUTDOWN (a clean stop), start again

Without ``aof`` nothing is persisted (``--save "" --appendonly no``): a restart is a server that
lost its memory. With ``aof`` every write is fsynced to the append-only file before it is
acknowledged, so a SIGKILL loses nothing acknowledged. Extra ``options`` are passed on the
command line (``"--maxmemory-policy", "allkeys-lru"``). Start takes about 20 ms here (longer
while a large AOF loads: it waits until PING answers PONG, not LOADING). Every wait is bounded;
the process is stopped by its PID. A missing ``redis-server`` skips (fails under ``CI=true``).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import free_port, port_open, reap, require_binary, tail


def ping(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether the server on ``host:port`` answers PING with PONG (not LOADING, not an error)."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")
    return False


class RedisServer:
    """A redis-server of the test's own; see the module docstring. Not started until :meth:`start`."""

    def __init__(self, workdir: Path, *options: str, aof: bool = False, port: int | None = None) -> None:
        self.binary = require_binary("redis-server")
        self.workdir = workdir
        self.port = port or free_port()
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]
        self.command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--save",
            "",
            *persistence,
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
            *options,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[float] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, within: float = 10.0) -> float:
        """Start the server on its dir; wait until it answers PING. Returns the seconds it took."""
        if self.pid is not None:
            raise RuntimeError(f"redis-server on {self.port} is already running")
        if port_open(self.port):
            raise RuntimeError(f"127.0.0.1:{self.port} is taken")
        began = time.monotonic()
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = began + within
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                reap(self.proc)
                raise RuntimeError(
                    f"redis-server did not start on 127.0.0.1:{self.port} in {within}s "
                    f"(exit {self.proc.returncode}):\n{tail(self.workdir / 'redis.log')}"
                )
            time.sleep(0.02)
        took = time.monotonic() - began
        self.starts.append(took)
        return took

    def kill(self) -> None:
        """A crash: SIGKILL by PID (no shutdown save, no final fsync), and wait for it to be gone."""
        if self.proc is not None:
            reap(self.proc)

    def stop(self, within: float = 10.0) -> None:
        """A clean stop (SIGTERM: redis saves/fsyncs what it persists and exits); SIGKILL after ``within``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(within)
        reap(self.proc)

    def restart(self, down: float = 0.0, hard: bool = True, within: float = 10.0) -> float:
        """Kill (``hard``, the default) or stop the server, wait ``down`` seconds, start it again on the
        same port and dir. Returns the seconds the start took."""
        if hard:
            self.kill()
        else:
            self.stop()
        time.sleep(down)
        return self.start(within)


@contextmanager
def redis_server(
    *options: str, aof: bool = False, workdir: Path | None = None, within: float = 10.0
) -> Iterator[RedisServer]:
    """A started private redis-server; killed by its PID at the end, its dir removed (unless given)."""
    require_binary("redis-server")  # skips (fails under CI) before anything is made
    own = workdir is None
    path = Path(tempfile.mkdtemp(prefix="aj-redis-")) if workdir is None else workdir
    server = RedisServer(path, *options, aof=aof)
    try:
        server.start(within)
        yield server
    finally:
        try:
            server.kill()
        finally:
            if own:
                shutil.rmtree(path, ignore_errors=True)
