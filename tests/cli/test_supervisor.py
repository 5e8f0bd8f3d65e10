"""``asyncjobs worker --workers N``: N real worker processes, a killed one replaced, SIGTERM stops them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.fault
ROOT = Path(__file__).resolve().parents[2]
DRAIN = 2.0


def parent_of(pid: int) -> int:
    """The parent pid of ``pid`` (Linux ``/proc``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # not a zombie


class Log:
    """The supervisor's stderr, read in a thread; ``wait_for`` polls it with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True).start()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for line in list(self.lines) if (m := re.search(pattern, line))]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"no {count} x {pattern!r} in:\n" + "".join(self.lines)
            time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_n_workers_a_killed_one_is_replaced_and_sigterm_stops_all_with_exit_0() -> None:
    command = ["worker", "tests.cli.sample_app:app", "--broker", "memory://", "--workers", "3", "--drain", str(DRAIN)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs.cli", *command],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "ASYNCJOBS_BROKER_URL"},
        stderr=subprocess.PIPE,
        text=True,
    )
    log = Log(proc)
    try:
        (started,) = log.wait_for(r"supervising 3 worker processes: pids ([\d ]+)")
        pids = [int(p) for p in started.group(1).split()]
        assert len(set(pids)) == 3
        log.wait_for(r"worker started", count=3)
        assert all(alive(pid) and parent_of(pid) == proc.pid for pid in pids)

        os.kill(pids[0], signal.SIGKILL)
        log.wait_for(rf"worker pid {pids[0]} exited with code -9")
        (replaced,) = log.wait_for(r"worker pid (\d+) started$")
        new = int(replaced.group(1))
        assert new not in pids and alive(new) and parent_of(new) == proc.pid
        log.wait_for(r"worker started", count=4)  # the new one is a real worker too
        running = [new, *pids[1:]]

        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=DRAIN + 10)
        took = time.monotonic() - began
        assert code == 0, "".join(log.lines)
        assert took < DRAIN + 5
        assert not any(alive(pid) for pid in running)
        log.wait_for(r"worker stopped", count=3)  # each drained and stopped on the forwarded signal
        assert "Traceback" not in "".join(log.lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_workers_with_a_metrics_port_is_a_one_line_error() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "asyncjobs.cli",
            "worker",
            "tests.cli.sample_app:app",
            "--workers",
            "2",
            "--metrics-port",
            "9999",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--metrics-port serves one process" in done.stderr
