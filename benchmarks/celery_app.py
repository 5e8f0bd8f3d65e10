"""The Celery app of the Celery scenarios, imported by the benchmark (producer) and by its worker subprocess.

Configured from the environment: ``AJBENCH_BROKER`` (broker URL), ``AJBENCH_QUEUE`` (queue and
exchange name), ``AJBENCH_UDP_PORT`` (where each job start is reported on 127.0.0.1).
"""

from __future__ import annotations

import os
import socket
import time

from celery import Celery

QUEUE = os.environ.get("AJBENCH_QUEUE", "ajbench-celery")
_REPORT_TO = ("127.0.0.1", int(os.environ.get("AJBENCH_UDP_PORT", "9")))
_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

app = Celery("ajbench", broker=os.environ.get("AJBENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_ignore_result=True,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"global_keyprefix": QUEUE + ":"}
    if "redis" in str(os.environ.get("AJBENCH_BROKER"))
    else {},
)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]  # celery has no annotations
def noop(index: int) -> None:
    """Report that job ``index`` started."""
    _sock.sendto(f"{index} {time.monotonic()!r}".encode(), _REPORT_TO)
