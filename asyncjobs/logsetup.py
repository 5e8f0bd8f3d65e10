"""Logging of the command line: a literal text format or one JSON object per line, and what is quiet.

Everything a message carries (job ids, task names, error messages from a foreign producer) is
shown literally: the text format escapes every control character but the newline, JSON escapes
the rest. Per-job lines (``asyncjobs.jobs``, see :mod:`asyncjobs.joblog`) are shown at INFO only
when asked for. The RabbitMQ client's reconnect chatter at INFO is silenced (its warnings stay),
and a one-shot command shows the broker's "connected to ..." line only at DEBUG.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any, Literal

from rich.text import Text

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
JOB_FIELDS = ("job_id", "task", "queue", "attempt", "outcome", "reason", "duration", "trace_id")
QUIET_LIBRARIES = ("aio_pika", "aiormq")  # INFO there is reconnect chatter, also on a deliberate close
CONNECT_LOGGERS = ("asyncjobs_rabbitmq.broker", "asyncjobs_redis.broker")


def literal(value: str) -> Text:
    """``value`` as plain text for the terminal: no markup read, control characters and lone surrogates escaped."""
    out = []
    for ch in value:
        code = ord(ch)
        if ch.isprintable() and not 0xD800 <= code <= 0xDFFF:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return Text("".join(out))


class LiteralFormatter(logging.Formatter):
    """Log lines with every control character but the newline escaped: a job id, task name or error
    message from a foreign producer cannot send escape sequences to the operator's terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record, made literal."""
        return "\n".join(literal(line).plain for line in super().format(record).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``pid``, ``message``,
    the job fields of a per-job line (``job_id``, ``task``, ``queue``, ``attempt``, ``outcome``,
    ``reason``, ``duration``, ``trace_id``) and ``exception`` when the record has one.

    ASCII only: control characters and lone surrogates from a message become ``\\u`` escapes.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        job = getattr(record, "job", None)
        if isinstance(job, dict):
            doc.update({name: job.get(name) for name in JOB_FIELDS})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=True, default=repr)


class _AtDebug(logging.Filter):
    """Shows a logger's INFO lines as DEBUG lines: dropped unless DEBUG is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def configure(level: str, fmt: LogFormat = "text", *, one_shot: bool = True) -> None:
    """Set up the root logger for a command: ``level`` and format; per-job INFO lines off.

    ``one_shot``: a command that connects, reads and exits (not a worker): the brokers' connect
    lines are shown at DEBUG only.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else LiteralFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    job_lines(False)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    if one_shot:  # its connect errors repeat what the command's own one-line error says
        logging.getLogger("aiormq").setLevel(max(logging.CRITICAL, logging.getLogger().level))
    for name in CONNECT_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _AtDebug)]:
            logger.removeFilter(old)
        if one_shot:
            logger.addFilter(_AtDebug())


def job_lines(on: bool) -> None:
    """Show one INFO line per job outcome (``on``), or only the retries and dead letters (WARNING and up)."""
    root = logging.getLogger().level
    logging.getLogger("asyncjobs.jobs").setLevel(root if on else max(logging.WARNING, root))
