"""RabbitMQ scenarios: raw aio-pika loops, taskiq-aio-pika, dramatiq, celery and asyncjobs on 127.0.0.1:5672.

Every scenario declares queues and exchanges whose names contain its unique prefix, and deletes
them afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc

from benchmarks.asyncjobs_system import AsyncJobsSystem
from benchmarks.core import AMQP_URL, Recorder, System, Workload, port_open, udp_listener
from benchmarks.peers import TaskiqReceiver

JOB_TIMEOUT = 60.0
ROOT = Path(__file__).resolve().parent.parent
PREFETCH_PER_SLOT = 10  # the raw consumer holds 10 unacked deliveries per concurrency slot


async def amqp_missing(*modules: str) -> str | None:
    """Why a RabbitMQ scenario cannot run here, or ``None``."""
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -r benchmarks/requirements.txt)"
    if not await anyio.to_thread.run_sync(port_open, 5672):
        return "no RabbitMQ server on 127.0.0.1:5672"
    return None


def _listed(kind: str, prefix: str) -> list[str]:
    """Names of queues or exchanges containing ``prefix`` as ``rabbitmqctl`` lists them (empty without it)."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return []
    try:
        out = subprocess.run(
            [ctl, f"list_{kind}", "-q", "--no-table-headers", "name"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if prefix in line]


async def delete_amqp(prefix: str, queues: tuple[str, ...] = (), exchanges: tuple[str, ...] = ()) -> None:
    """Delete the named queues and exchanges, and any other whose name contains ``prefix``."""
    import aio_pika

    found_queues = await anyio.to_thread.run_sync(_listed, "queues", prefix)
    found_exchanges = await anyio.to_thread.run_sync(_listed, "exchanges", prefix)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        for name in {*queues, *found_queues}:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except Exception:  # already gone (the channel closes with it)
                continue
        for name in {*exchanges, *found_exchanges}:
            channel = await connection.channel()
            try:
                await channel.exchange_delete(name)
            except Exception:  # already gone
                continue
    finally:
        await connection.close()


def raw_body(index: int) -> bytes:
    """A minimal job message, JSON like an envelope (id, task, args)."""
    return json.dumps({"id": uuid.uuid4().hex, "task": "bench.noop", "args": [index]}).encode()


class RawAioPika(System):
    """The ceiling: a durable classic queue and persistent messages.

    Enqueue 1x1 waits for the publisher confirm of each message; the bulk enqueue publishes a
    batch and awaits all its confirms together; the worker consumes with prefetch
    (10 x concurrency) and acks each message after its handler ran, in N runner tasks.
    """

    key = "amqp-raw"
    label = "raw aio-pika: confirms, consume + ack (ceiling)"
    role = "ceiling"
    has_bulk = True
    note = (
        "enqueue 1x1 = a confirm awaited per message; bulk = a batch of publishes, confirms awaited together; "
        f"drain = consume with prefetch {PREFETCH_PER_SLOT} x concurrency, manual ack per message"
    )

    async def check(self) -> str | None:
        return await amqp_missing("aio_pika")

    async def setup(self) -> None:
        import aio_pika

        self.connection = await aio_pika.connect(AMQP_URL)
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.channel.declare_queue(self.prefix, durable=True)
        self.exchange = self.channel.default_exchange

    def _message(self, index: int) -> Any:
        import aio_pika

        return aio_pika.Message(raw_body(index), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

    async def enqueue_one(self, index: int) -> None:
        await self.exchange.publish(self._message(index), routing_key=self.prefix)

    async def enqueue_bulk(self, indices: range) -> None:
        await asyncio.gather(*(self.exchange.publish(self._message(i), routing_key=self.prefix) for i in indices))

    async def _run(self, buffer: asyncio.Queue[Any]) -> None:
        while True:
            message = await buffer.get()
            index = json.loads(message.body)["args"][0]
            async with asyncio.timeout(JOB_TIMEOUT):
                await self._noop(index)
            await message.ack()

    async def _noop(self, index: int) -> None:
        self.recorder.mark(index)

    async def _fetch(self, buffer: asyncio.Queue[Any]) -> None:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH_PER_SLOT * self.workload.concurrency)
        queue = await channel.get_queue(self.prefix)
        async with queue.iterator() as messages:
            async for message in messages:
                await buffer.put(message)

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        buffer: asyncio.Queue[Any] = asyncio.Queue()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._fetch, buffer)
            for _ in range(self.workload.concurrency):
                tg.start_soon(self._run, buffer)
            yield
            tg.cancel_scope.cancel()

    async def cleanup(self) -> None:
        connection = getattr(self, "connection", None)
        if connection is not None:
            await connection.close()
        await delete_amqp(self.prefix, queues=(self.prefix,))


class TaskiqAioPika(TaskiqReceiver):
    """taskiq-aio-pika with its defaults (a quorum queue, qos = concurrency), in-process receiver."""

    key = "taskiq-aio-pika"
    label = "taskiq-aio-pika"

    async def check(self) -> str | None:
        return await amqp_missing("taskiq_aio_pika")

    def make_broker(self) -> Any:
        from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

        return AioPikaBroker(
            AMQP_URL,
            exchange=Exchange(name=self.prefix),
            task_queues=[Queue(name=self.prefix)],
            dead_letter_queue=Queue(name=f"{self.prefix}.dead_letter"),
            qos=self.workload.concurrency,
        )

    async def cleanup(self) -> None:
        await super().cleanup()
        await delete_amqp(self.prefix, queues=(self.prefix, f"{self.prefix}.dead_letter"), exchanges=(self.prefix,))


class _SyncProducer(System):
    """A peer whose enqueue is synchronous: every call runs in one dedicated thread (its connection lives there)."""

    def __init__(self, workload: Workload, recorder: Recorder, prefix: str) -> None:
        super().__init__(workload, recorder, prefix)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ajbench-producer")

    def send(self, index: int) -> None:
        """Enqueue job ``index`` (blocking)."""
        raise NotImplementedError

    async def enqueue_one(self, index: int) -> None:
        await asyncio.get_running_loop().run_in_executor(self.thread, self.send, index)

    async def enqueue_series(self, indices: range) -> None:
        def series() -> None:
            for index in indices:
                self.send(index)

        await asyncio.get_running_loop().run_in_executor(self.thread, series)

    def close_producer(self) -> None:
        """Close the producer's connection (runs in the producer thread)."""

    async def cleanup(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.thread, self.close_producer)
        self.thread.shutdown(wait=False)


class DramatiqRabbitmq(_SyncProducer):
    """dramatiq's RabbitmqBroker with its default middleware, a ``dramatiq.Worker`` with N threads in this process."""

    key = "dramatiq-rabbitmq"
    label = "dramatiq (RabbitmqBroker)"
    note = "dramatiq: worker threads in this process; its producer does not wait for confirms (confirm_delivery=False default)"

    async def check(self) -> str | None:
        return await amqp_missing("dramatiq", "pika")

    async def setup(self) -> None:
        import dramatiq
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        self.broker = RabbitmqBroker(url=AMQP_URL, confirm_delivery=self.confirm)
        recorder = self.recorder

        def noop(index: int) -> None:
            recorder.mark_threadsafe(index)

        self.actor = dramatiq.actor(broker=self.broker, actor_name="noop", queue_name=self.prefix)(noop)

    def send(self, index: int) -> None:
        self.actor.send(index)

    @property
    def confirm(self) -> bool:
        """Whether the producer waits for publisher confirms."""
        return False

    def close_producer(self) -> None:
        self.broker.connection.close()

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        import dramatiq

        worker = dramatiq.Worker(self.broker, queues={self.prefix}, worker_threads=self.workload.concurrency)
        worker.start()
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(20):
                await anyio.to_thread.run_sync(worker.stop, abandon_on_cancel=True)

    async def cleanup(self) -> None:
        await super().cleanup()
        names = (self.prefix, f"{self.prefix}.DQ", f"{self.prefix}.XQ")
        await delete_amqp(self.prefix, queues=names)


class DramatiqRabbitmqConfirmed(DramatiqRabbitmq):
    """dramatiq with ``confirm_delivery=True``: its enqueue waits for the broker's confirm, like asyncjobs'."""

    key = "dramatiq-rabbitmq-confirm"
    label = "dramatiq (RabbitmqBroker, confirm_delivery=True)"
    note = ""

    @property
    def confirm(self) -> bool:
        return True


class CeleryPeer(_SyncProducer):
    """Celery: the producer here, a ``celery worker --pool threads --concurrency N`` subprocess (ended by PID)."""

    key = "celery-rabbitmq"
    label = "celery (py-amqp)"
    note = (
        "celery: worker in a subprocess (threads pool), job starts reported over loopback UDP; acks early (its default)"
    )
    broker_url = AMQP_URL.rstrip("/") + "//"

    async def check(self) -> str | None:
        return await amqp_missing("celery")

    async def setup(self) -> None:
        self.env = {
            **os.environ,
            "AJBENCH_BROKER": self.broker_url,
            "AJBENCH_QUEUE": self.prefix,
        }
        os.environ.update({"AJBENCH_BROKER": self.broker_url, "AJBENCH_QUEUE": self.prefix})
        import importlib

        from benchmarks import celery_app

        self.module = importlib.reload(celery_app)  # picks up this scenario's queue name

    def send(self, index: int) -> None:
        self.module.noop.apply_async((index,))

    def close_producer(self) -> None:
        self.module.app.close()

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        async with udp_listener(self.recorder) as port:
            command = [
                sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
                "--pool", "threads", "--concurrency", str(self.workload.concurrency),
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel", "WARNING", "-Q", self.prefix,
            ]  # fmt: skip
            env = {**self.env, "AJBENCH_UDP_PORT": str(port)}
            with tempfile.TemporaryFile() as log:
                proc = await anyio.open_process(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
                try:
                    yield
                finally:
                    await end_process(proc, log)

    async def cleanup(self) -> None:
        await super().cleanup()
        await delete_amqp(self.prefix, queues=(self.prefix,), exchanges=(self.prefix,))


async def end_process(proc: anyio.abc.Process, log: IO[bytes]) -> None:
    """End a worker subprocess by its PID: SIGQUIT (every job has run by now), SIGKILL after 10 s."""
    with anyio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.send_signal(signal.SIGQUIT)
            with anyio.move_on_after(10):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.returncode not in (0, -signal.SIGQUIT):
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
            print(f"worker {proc.pid} exited with {proc.returncode}:", *tail, sep="\n  ", file=sys.stderr)


class AsyncJobsRabbitmq(AsyncJobsSystem):
    """asyncjobs on RabbitMQ: confirms on enqueue, manual acks; ``enqueue_many`` for the bulk enqueue."""

    key = "asyncjobs-rabbitmq"
    label = "asyncjobs amqp://"

    def __init__(self, workload: Workload, recorder: Recorder, prefix: str) -> None:
        super().__init__(workload, recorder, prefix, AMQP_URL)

    async def check(self) -> str | None:
        return await amqp_missing("asyncjobs_rabbitmq") or await super().check()

    async def cleanup(self) -> None:
        await super().cleanup()
        await delete_amqp(self.prefix)


SYSTEMS: list[type[System]] = [
    RawAioPika,
    TaskiqAioPika,
    DramatiqRabbitmq,
    DramatiqRabbitmqConfirmed,
    CeleryPeer,
    AsyncJobsRabbitmq,
]
