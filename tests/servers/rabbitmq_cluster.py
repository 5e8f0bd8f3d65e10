"""A private RabbitMQ cluster for tests: N nodes of the installed RabbitMQ, joined into one cluster.

``rabbitmq_cluster(nodes=3)`` starts N :class:`~tests.servers.rabbitmq.RabbitNode` on this machine
and yields a :class:`RabbitCluster` (``.nodes[i].url`` is node i's AMQP URL, guest/guest)::

    with rabbitmq_cluster(3) as cluster:
        broker = RabbitBroker(cluster.nodes[1].url + "?queue_type=quorum")
        leader = cluster.leader_of("jobs")       # the node holding the quorum queue's leader
        leader.stop(); leader.start()            # it rejoins the cluster on its data dir

Each node has the pattern of :mod:`tests.servers.rabbitmq`: a name of its own (``aj-c<id>-<i>@localhost``),
free loopback ports (AMQP and Erlang distribution), its own data, log and config dirs under one
temporary dir, and a cookie shared by the cluster's nodes only (a new random one, never the
machine's). Nodes are started in parallel; nodes 2..N then ``rabbitmqctl stop_app``,
``join_cluster`` node 1 and ``start_app``. Every wait is bounded; teardown stops every node and
SIGKILLs by PID whatever of it is left. Missing scripts skip the test (fail under ``CI=true``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from tests.servers.rabbitmq import RabbitNode, rabbitmq_scripts


class RabbitCluster:
    """The nodes of a private cluster; see the module docstring. Not started until :meth:`start`."""

    def __init__(self, base: Path, size: int, config: tuple[str, ...] = ()) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.base = base
        self.id = uuid.uuid4().hex[:6]
        self.cookie = uuid.uuid4().hex.upper()
        self.nodes = [
            RabbitNode(base / f"n{i}", config, name=f"aj-c{self.id}-{i}@localhost") for i in range(1, size + 1)
        ]
        for node in self.nodes:  # one cookie of the cluster's own, shared by its nodes only
            cookie = node.base / "home" / ".erlang.cookie"
            cookie.chmod(0o600)
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        self.took: dict[str, float] = {}

    def start(self, within: float = 90.0) -> float:
        """Start every node (in parallel), join nodes 2..N to node 1; the seconds it took."""
        began = time.monotonic()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(within), self.nodes))
        self.took["boot"] = time.monotonic() - began
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name, timeout=60)
            node.ctl("start_app", timeout=60)
        self.took["join"] = time.monotonic() - began - self.took["boot"]
        members = self.running_nodes()
        if members != {node.name for node in self.nodes}:
            raise RuntimeError(f"cluster {self.id} has running nodes {sorted(members)}, expected all {len(self.nodes)}")
        self.took["start"] = time.monotonic() - began
        return self.took["start"]

    def running_nodes(self, via: RabbitNode | None = None) -> set[str]:
        """The names of the cluster's running nodes, as ``via`` (a running node) sees them."""
        asker = via or next(node for node in self.nodes if node.running)
        out = asker.eval("rabbit_nodes:all_running().")
        return set(re.findall(r"'?([\w.-]+@[\w.-]+)'?", out))

    def node(self, name: str) -> RabbitNode:
        """The node called ``name``."""
        return next(node for node in self.nodes if node.name == name)

    def quorum_members(self, queue: str, vhost: str = "/") -> tuple[str | None, set[str]]:
        """The leader and the members of quorum queue ``queue`` (asked of a running node)."""
        asker = next(node for node in self.nodes if node.running)
        out = asker.ctl("list_queues", "-p", vhost, "--no-table-headers", "--quiet", "name", "leader", "members")
        for line in out.stdout.splitlines():
            fields = line.split("\t")
            if fields and fields[0] == queue:
                leader = fields[1].strip() if len(fields) > 1 and "@" in fields[1] else None
                members = set(re.findall(r"[\w.-]+@[\w.-]+", fields[2] if len(fields) > 2 else ""))
                return leader, members
        raise LookupError(f"no queue {queue!r} on cluster {self.id}:\n{out.stdout}")

    def leader_of(self, queue: str, vhost: str = "/") -> RabbitNode:
        """The node holding the leader of quorum queue ``queue``."""
        leader, _ = self.quorum_members(queue, vhost)
        if leader is None:
            raise LookupError(f"quorum queue {queue!r} has no leader now")
        return self.node(leader)

    def stop(self) -> None:
        """Stop every node (a clean stop, then kill by PID what is left)."""
        errors: list[BaseException] = []
        for node in reversed(self.nodes):
            try:
                node.stop()
            except BaseException as error:  # every node is stopped, whatever one of them does
                errors.append(error)
        if errors:
            raise errors[0]


@contextmanager
def rabbitmq_cluster(
    size: int = 3, *config: str, within: float = 90.0, keep_dir: bool = False
) -> Iterator[RabbitCluster]:
    """A started private RabbitMQ cluster of ``size`` nodes; stopped and its dir removed at the end."""
    rabbitmq_scripts()  # skips (fails under CI) before anything is made
    base = Path(tempfile.mkdtemp(prefix="aj-rabbit-cluster-"))
    try:
        cluster = RabbitCluster(base, size, tuple(config))
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        cluster.start(within)
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            if not keep_dir:
                shutil.rmtree(base, ignore_errors=True)
