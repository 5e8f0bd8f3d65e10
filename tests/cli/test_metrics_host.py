"""``worker --metrics-host``: the metrics server binds the address asked for (loopback by default)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


def listening_on(port: int) -> set[str]:
    """The local addresses (hex, as in ``/proc/net/tcp``) with a socket listening on ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if int(hex_port, 16) == port and state == "0A":  # LISTEN
            found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp")
@pytest.mark.parametrize(("args", "address"), [((), "0100007F"), (("--metrics-host", "0.0.0.0"), "00000000")])
def test_the_metrics_server_binds_the_host_asked_for(args: tuple[str, ...], address: str) -> None:
    pytest.importorskip("prometheus_client")
    port = free_port()
    command = ["worker", "tests.cli.sample_app:app", "--broker", "memory://", "--metrics-port", str(port), *args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs.cli", *command], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        deadline, line = time.monotonic() + 30, ""
        while "serving metrics on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        host = "0.0.0.0" if args else "127.0.0.1"
        assert f"serving metrics on http://{host}:{port}/metrics" in line
        assert listening_on(port) == {address}
        while "worker started" not in line and time.monotonic() < deadline:  # its signal handlers are set
            line = proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
