"""The command line, run as a real process: bad input exits non-zero with a one-line reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncjobs.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "tests.cli.sample_app:app", "--broker", "nonsense"], "has no scheme"),
        (["worker", "tests.cli.sample_app:app", "--broker", "sqs://q"], "no broker handles URL scheme 'sqs'"),
        (["worker", "no_such_module_xyz:app"], "cannot import module 'no_such_module_xyz'"),
        (["worker", "tests.cli.sample_app"], "expected MODULE:APP"),
        (["worker", "tests.cli.sample_app:not_an_app"], "is not an asyncjobs.App"),
        (["worker", "tests.cli.sample_app:app", "--lease", "10", "--heartbeat", "9"], "heartbeat_seconds=9"),
        (["worker", "tests.cli.sample_app:app", "--lease", "10", "--heartbeat", "0"], "heartbeats are off"),
        (["worker", "tests.cli.sample_app:app", "-c", "0"], "concurrency must be >= 1"),
        (["dead", "replay", "--broker", "memory://"], "name dead-letter ids"),
        (["worker", "tests.cli.sample_app:app", "--metrics-port", "70000"], "70000 is not in the range"),
        (["--log-level", "verbose", "stats"], "'verbose' is not one of"),
        (["dead", "list", "--app", "no_such_module_xyz:app"], "cannot import module 'no_such_module_xyz'"),
        (["stats", "--broker", "redis://127.0.0.1:1/0"], "server unreachable"),
        (["stats", "--broker", "amqp://guest:guest@127.0.0.1:1/"], "cannot connect to RabbitMQ (amqp://guest:***@"),
        (["worker", "tests.cli.sample_app:app", "--broker", "redis://127.0.0.1:1/0"], "server unreachable"),
        (["dedupe", "show", "k", "--store", "redis://127.0.0.1:1/0"], "Error 111 connecting"),
        (["worker", "tests.cli.sample_app:app", "--metrics-port", "9", "--metrics-host", "256.0.0.1"], "cannot serve"),
    ],
)
def test_bad_input_exits_non_zero_with_a_reason(args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_broker_url_from_the_environment_is_used() -> None:
    result = cli("worker", "tests.cli.sample_app:app", env={"ASYNCJOBS_BROKER_URL": "sqs://x"})
    assert result.returncode != 0
    assert "'sqs'" in result.stderr


def test_demo_runs_every_kind_of_job_and_exits_zero() -> None:
    result = cli("demo", "--jobs", "5", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every job ended as expected" in result.stdout
    for kind in ("fast", "slow", "flaky", "stuck", "broken", "malformed"):
        assert kind in result.stdout


def test_sigterm_stops_an_idle_worker_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs.cli", "worker", "tests.cli.sample_app:app", "--broker", "memory://"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        assert proc.stderr is not None
        line = ""
        while "worker started" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert "worker started" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


WIDE = {"COLUMNS": "250"}  # rich wraps table cells at the terminal width


def test_size_runs_the_handler_on_samples_and_recommends(tmp_path: os.PathLike[str]) -> None:
    samples = os.path.join(tmp_path, "samples.jsonl")
    with open(samples, "w") as f:
        f.write('[20]\n{"args": [60]}\n[-1]\n')
    done = cli(
        "size", "tests.cli.sample_app:app", "sample.work", "--payloads", samples, "--runs", "3", "--keyed", env=WIDE
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "durations of 'sample.work' (9 runs)" in done.stdout
    assert "ValueError x3" in done.stdout  # failed runs are counted, not hidden
    assert "recommended" in done.stdout


def test_size_exits_1_when_the_settings_would_run_jobs_twice(tmp_path: os.PathLike[str]) -> None:
    samples = os.path.join(tmp_path, "samples.jsonl")
    with open(samples, "w") as f:
        f.write('{"args": [50], "kwargs": {"block_ms": 400}}\n')
    done = cli(
        "size",
        "tests.cli.sample_app:app",
        "sample.work",
        "--payloads",
        samples,
        "--runs",
        "2",
        "--lease",
        "1.2",
        env=WIDE,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "blocked the event loop" in done.stdout
    durations = os.path.join(tmp_path, "d.txt")
    with open(durations, "w") as f:
        f.write("74\n70\n")
    done = cli(
        "size",
        "tests.cli.sample_app:app",
        "sample.work",
        "--durations",
        durations,
        "--heartbeat",
        "0",
        "--lease",
        "3",
        env=WIDE,
    )
    assert done.returncode == 1
    assert "duplicate processing" in done.stdout


def test_size_refuses_an_unknown_task() -> None:
    done = cli("size", "tests.cli.sample_app:app", "nope", "--durations", "README.md")
    assert done.returncode != 0
    assert "no task named 'nope'" in done.stderr


def test_version_is_printed() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("asyncjobs, version ")
