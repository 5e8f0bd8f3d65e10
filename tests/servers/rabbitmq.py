"""A private RabbitMQ node for tests that need another server setting, a restart or a crash.

``rabbitmq_node(*config_lines, rabbit_env={...})`` starts the installed RabbitMQ as a second node
on this machine and yields a :class:`RabbitNode` (``.url`` is its AMQP URL, guest/guest)::

    with rabbitmq_node("consumer_timeout = 2000", rabbit_env={"channel_tick_interval": 500}) as node:
        broker = RabbitBroker(node.url)
        node.restart()          # rabbitmqctl stop, then start on the same data dir
        node.kill(); node.start()  # a crash (SIGKILL of the beam process), then start again

The node has a name of its own (``aj-<random>@localhost``), its own free loopback ports (AMQP and
Erlang distribution; epmd is the machine's, shared with the main node and never stopped), its own
Erlang cookie (in a ``HOME`` of its own), its own data, log and config dirs under a temporary dir,
no plugins, and ``loopback_users = none`` so guest can log in. Config lines go into its
``rabbitmq.conf``; ``rabbit_env`` entries (Erlang terms, for settings ``rabbitmq.conf`` has no key for,
such as ``channel_tick_interval``) go into its ``advanced.config``. It never reads
``/etc/rabbitmq``: ``RABBITMQ_CONF_ENV_FILE`` points at an empty file of its own.

The distribution's ``/usr/sbin`` wrapper runs the server as user ``rabbitmq`` with the shared
cookie; this module runs the scripts behind it directly, as the current user.

Measured here (2 shared cores, RabbitMQ 3.10.8, Erlang 25.2.3): a first start 5.1-5.7 s, a start
on an existing data dir 3.5-5.6 s, ``rabbitmqctl stop`` 1.4-1.5 s, a kill well under 0.1 s.
Every wait is bounded; teardown runs ``rabbitmqctl stop``, then SIGKILLs by PID whatever of the node
is still alive: the beam (pid file), the start script and its children, and any beam whose command
line names the node's own ``HOME`` (an orphan of a failed start). When the RabbitMQ scripts or
``erl`` are missing the test is skipped (failed under ``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.servers import (
    children_of,
    free_port,
    kill_pid,
    pid_alive,
    port_open,
    processes_with,
    reap,
    require_binary,
    tail,
    unavailable,
    wait_gone,
)

Term = int | bool | str  # a str is written as an Erlang term as is (quote atoms/binaries yourself)

LOOPBACK_DIST = "-kernel inet_dist_use_interface {127,0,0,1}"


def rabbitmq_scripts() -> Path:
    """The directory holding the real ``rabbitmq-server`` and ``rabbitmqctl`` scripts.

    ``$AJ_RABBITMQ_SBIN`` wins; else found from ``rabbitmq-server`` on the ``PATH`` (the Debian
    ``rabbitmq-script-wrapper`` is seen through). Skips (fails under CI) when there is none.
    """
    override = os.environ.get("AJ_RABBITMQ_SBIN")
    if override:
        found = Path(override)
    else:
        real = Path(require_binary("rabbitmq-server")).resolve()
        if real.name == "rabbitmq-script-wrapper":  # Debian: it su's to user rabbitmq; use what it runs
            real = (real.parent / "rabbitmq-server").resolve()
        found = real.parent
    if not (found / "rabbitmq-server").exists() or not (found / "rabbitmqctl").exists():
        unavailable(f"no rabbitmq-server/rabbitmqctl scripts in {found}")
    require_binary("erl")
    return found


def _erlang_term(value: Term) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class RabbitNode:
    """A RabbitMQ node of the test's own; see the module docstring. Not started until :meth:`start`."""

    def __init__(
        self,
        base: Path,
        config: tuple[str, ...] = (),
        rabbit_env: Mapping[str, Term] | None = None,
        name: str | None = None,
    ) -> None:
        self.base = base
        self.name = name or f"aj-{uuid.uuid4().hex[:8]}@localhost"
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.scripts = rabbitmq_scripts()
        self.proc: subprocess.Popen[bytes] | None = None
        self.beam_pid: int | None = None
        self.starts: list[float] = []  # seconds each start took
        self.stops: list[float] = []  # seconds each stop took
        self._write_files(config, rabbit_env or {})

    @property
    def url(self) -> str:
        """The node's AMQP URL (guest/guest, default vhost)."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def log_file(self) -> Path:
        return self.base / "log" / f"{self.name}.log"

    @property
    def stdout_file(self) -> Path:
        return self.base / "log" / "stdout.log"

    def _write_files(self, config: tuple[str, ...], rabbit_env: Mapping[str, Term]) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.base / "home" / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.base / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf
        (self.base / "enabled_plugins").write_text("[].\n")
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
            "loopback_users = none",
            "log.file.level = info",
            "log.console = false",
            *config,
        ]
        (self.base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        entries = ", ".join(f"{{{key}, {_erlang_term(value)}}}" for key, value in rabbit_env.items())
        (self.base / "advanced.config").write_text(f"[{{rabbit, [{entries}]}}].\n")

    def env(self) -> dict[str, str]:
        """The environment of the node's scripts (server and CLI alike)."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **inherited,
            "HOME": str(self.base / "home"),  # its own .erlang.cookie
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": LOOPBACK_DIST,
            # The CLI's own distribution listener: loopback, any free port (not the shared 35672-35682).
            "RABBITMQ_CTL_ERL_ARGS": LOOPBACK_DIST,
            "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def ctl(self, *args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node (bounded by ``timeout``)."""
        command = [str(self.scripts / "rabbitmqctl"), "-n", self.name, *args]
        try:
            result = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} took more than {timeout}s") from error
        if check and result.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def eval(self, expr: str, timeout: float = 30.0) -> str:
        """``rabbitmqctl eval EXPR`` on this node; its printed result."""
        return self.ctl("eval", expr, timeout=timeout).stdout.strip()

    @property
    def running(self) -> bool:
        return self.beam_pid is not None and pid_alive(self.beam_pid)

    def _read_pid(self) -> int | None:
        try:
            text = (self.base / "node.pid").read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def start(self, within: float = 60.0) -> float:
        """Start the node (on its data dir, which a restart keeps) and wait until it serves AMQP.

        Returns the seconds it took. Raises with the end of its log when it does not come up in time.
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        (self.base / "node.pid").unlink(missing_ok=True)
        if port_open(self.amqp_port):
            raise RuntimeError(f"127.0.0.1:{self.amqp_port}, the port of {self.name}, is taken")
        began = time.monotonic()
        deadline = began + within
        with open(self.stdout_file, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.scripts / "rabbitmq-server")],
                cwd=self.base,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            # The AMQP listener opens last in the boot; polling it is cheaper than a CLI call.
            while not port_open(self.amqp_port):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} did not open 127.0.0.1:{self.amqp_port} in {within}s")
                time.sleep(0.1)
            self.beam_pid = self._read_pid()
            remaining = max(5, int(deadline - time.monotonic()))
            self.ctl("await_startup", "--timeout", str(remaining), timeout=remaining + 15)
            if self.beam_pid is None:
                self.beam_pid = int(self.eval("os:getpid().").strip('"'))
        except BaseException as error:
            self._kill_all()
            raise RuntimeError(
                f"private RabbitMQ node {self.name} did not start: {error}\n--- {self.stdout_file}:\n"
                f"{tail(self.stdout_file)}\n--- {self.log_file}:\n{tail(self.log_file)}"
            ) from error
        took = time.monotonic() - began
        self.starts.append(took)
        return took

    def stop(self, within: float = 30.0) -> float:
        """``rabbitmqctl stop`` (a clean shutdown), then kill whatever is left. Returns the seconds it took."""
        began = time.monotonic()
        if self.running:
            with contextlib.suppress(AssertionError):  # a hung stop: killed below
                self.ctl("stop", timeout=within, check=False)
            if self.beam_pid is not None:
                wait_gone(self.beam_pid, max(1.0, within - (time.monotonic() - began)))
        self._kill_all()
        took = time.monotonic() - began
        self.stops.append(took)
        return took

    def kill(self) -> None:
        """A crash: SIGKILL the beam process (no clean shutdown), and reap the start script."""
        self._kill_all()

    def restart(self, down: float = 0.0, hard: bool = False, within: float = 60.0) -> float:
        """Stop (``hard``: kill) the node, wait ``down`` seconds, start it on the same data dir and ports.

        Returns the seconds the start took.
        """
        if hard:
            self.kill()
        else:
            self.stop()
        time.sleep(down)
        return self.start(within)

    def pids(self) -> set[int]:
        """Every live process of this node: the beam (pid file), the start script and its children,
        and any beam whose command line names this node's own ``HOME`` (found even when orphaned)."""
        found = set(processes_with(str(self.base / "home")))
        for pid in (self.beam_pid, self._read_pid()):
            if pid is not None:
                found.add(pid)
        if self.proc is not None and self.proc.poll() is None:
            found |= {self.proc.pid, *children_of(self.proc.pid)}
        return {pid for pid in found if pid_alive(pid)}

    def _kill_all(self, within: float = 10.0) -> None:
        for pid in sorted(self.pids() - {self.proc.pid if self.proc else -1}):
            kill_pid(pid, within)  # the beam (and erl_child_setup) before the script that waits on it
        if self.proc is not None:
            reap(self.proc)
        self.beam_pid = None
        deadline = time.monotonic() + within  # its sockets close when its last thread is gone
        while port_open(self.amqp_port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def version(self) -> str:
        """The server version the node reports (``rabbitmqctl version`` prints the CLI's)."""
        out = self.eval("rabbit_misc:version().")
        match = re.search(r'"([^"]+)"', out)
        return match.group(1) if match else out


@contextmanager
def rabbitmq_node(
    *config: str,
    rabbit_env: Mapping[str, Term] | None = None,
    within: float = 60.0,
    keep_dir: bool = False,
) -> Iterator[RabbitNode]:
    """A started private RabbitMQ node; stopped (by PID if need be) and its dir removed at the end.

    ``config``: extra ``rabbitmq.conf`` lines, e.g. ``"consumer_timeout = 2000"``.
    ``rabbit_env``: ``rabbit`` application settings for ``advanced.config``,
    e.g. ``{"channel_tick_interval": 500}``. ``keep_dir``: leave the dir (logs) for a post-mortem.
    """
    rabbitmq_scripts()  # skips (fails under CI) before anything is made
    base = Path(tempfile.mkdtemp(prefix="aj-rabbit-"))
    try:
        node = RabbitNode(base, tuple(config), rabbit_env)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        node.start(within)
        yield node
    finally:
        try:
            node.stop()
        finally:
            if not keep_dir:
                shutil.rmtree(base, ignore_errors=True)
