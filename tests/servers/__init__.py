"""Private servers and fault tools for tests that must not touch the shared servers.

The shared servers on this machine (Redis 6379, RabbitMQ 5672, PostgreSQL 5432) are never
reconfigured or restarted by a test. A test that needs another setting, a restart or a crash
starts a server of its own from this package, on free loopback ports, and stops it by its PID:

* :mod:`tests.servers.rabbitmq`: ``rabbitmq_node(...)``, a second RabbitMQ node (own node name,
  ports, cookie, data/log/config dirs), with ``restart()`` and ``kill()``.
* :mod:`tests.servers.redis`: ``redis_server(...)``, a redis-server of its own, optionally with an
  append-only file fsynced on every write, with ``restart()`` and ``kill()``.
* :mod:`tests.servers.proxy`: ``tcp_proxy(host, port)``, a loopback TCP proxy that can ``cut()``,
  ``stall(seconds)`` and ``delay`` the connections through it.

A missing binary skips the test with the reason; under ``CI=true`` it fails instead. Every wait is
bounded, and every process is stopped by the PID it was started with.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest


def in_ci() -> bool:
    """Whether the tests run under ``CI=true`` (where a missing server fails, not skips)."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip the calling test for ``reason``; under ``CI=true`` fail instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: these tests must not be skipped)")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """The path of executable ``name``; skips (fails under CI) when it is not installed."""
    found = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/local/sbin")
    if found is None:
        unavailable(f"{name} is not installed")
        raise AssertionError("unreachable")  # pragma: no cover - skip/fail raise
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the usual small race: bind it soon)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (and is not a zombie of ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    # A zombie is dead, but a multi-threaded process shows its leader as a zombie while its other
    # threads still exit (and still hold its sockets): dead only when no thread is left.
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return True  # no procfs: trust kill(0)
    return not (fields.get("State", "").strip().startswith("Z") and int(fields.get("Threads", "1")) <= 1)


def processes_with(marker: str) -> list[int]:
    """PIDs (Linux ``/proc``) whose command line contains ``marker``, such as a temporary dir of ours."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as cmdline:
            if marker.encode() in cmdline.read():
                found.append(int(entry))
    return found


def children_of(pid: int) -> list[int]:
    """The descendants of process ``pid`` (Linux ``/proc``), deepest last."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{entry}/stat") as stat:
            parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        kids = [child for child, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def wait_gone(pid: int, within: float) -> bool:
    """Wait up to ``within`` seconds for process ``pid`` to exit; whether it did."""
    deadline = time.monotonic() + within
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_pid(pid: int, within: float = 5.0) -> None:
    """SIGKILL process ``pid`` (one we started) and wait, bounded, for it to be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_gone(pid, within)


def reap(proc: subprocess.Popen[bytes], within: float = 5.0) -> None:
    """Kill ``proc`` if it still runs, and collect its exit status (bounded)."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(within)


def tail(path: os.PathLike[str] | str, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file (for failure messages)."""
    try:
        with open(path, errors="replace") as file:
            return "".join(file.readlines()[-lines:])
    except OSError as error:
        return f"<no log: {error}>"
