"""asyncjobs: background jobs for asyncio services that are not lost and not run twice silently.

Users import from here only; every other module may change.
"""

from anyio.to_thread import run_sync

from asyncjobs.app import App, JobRef
from asyncjobs.broker import Broker, Consumer, DeadLetter, DeadLetterInfo, Delivery, OutgoingJob, QueueStats, from_url
from asyncjobs.config import WorkerConfig
from asyncjobs.dedupe import DedupeRecord, DedupeStore, MemoryDedupeStore, current_claim, key_for
from asyncjobs.envelope import Envelope
from asyncjobs.errors import (
    AsyncJobsError,
    BadOutcomeError,
    BrokerConnectionError,
    BrokerError,
    BrokerURLError,
    ConfigError,
    EnvelopeError,
    JobCancelledError,
    JobFailedError,
    JobTimeout,
    LeaseLost,
    NoResultStoreError,
    PayloadTooLargeError,
    PermanentError,
    QueueFullError,
    ResultStoreError,
    ResultTimeoutError,
    ResultTooLargeError,
    Retry,
    StartupError,
    UnknownTaskError,
)
from asyncjobs.job import Job, Outcome, current_job
from asyncjobs.middleware.chain import CallNext, Middleware, WrappingMiddleware
from asyncjobs.middleware.dedupe import DedupeMiddleware
from asyncjobs.middleware.tracing import TracingMiddleware, TracingProducerMiddleware
from asyncjobs.results import JobStatus, MemoryResultStore, ResultStore, progress
from asyncjobs.retrying import Backoff, RetryPolicy
from asyncjobs.settle import WorkerStats
from asyncjobs.task import Task, TaskOptions
from asyncjobs.worker import Worker, run_worker

__all__ = [
    "App",
    "AsyncJobsError",
    "Backoff",
    "BadOutcomeError",
    "Broker",
    "BrokerConnectionError",
    "BrokerError",
    "BrokerURLError",
    "CallNext",
    "ConfigError",
    "Consumer",
    "DeadLetter",
    "DeadLetterInfo",
    "DedupeMiddleware",
    "DedupeRecord",
    "DedupeStore",
    "Delivery",
    "Envelope",
    "EnvelopeError",
    "Job",
    "JobCancelledError",
    "JobFailedError",
    "JobRef",
    "JobStatus",
    "JobTimeout",
    "LeaseLost",
    "MemoryDedupeStore",
    "MemoryResultStore",
    "Middleware",
    "NoResultStoreError",
    "Outcome",
    "OutgoingJob",
    "PayloadTooLargeError",
    "PermanentError",
    "QueueFullError",
    "QueueStats",
    "ResultStore",
    "ResultStoreError",
    "ResultTimeoutError",
    "ResultTooLargeError",
    "Retry",
    "RetryPolicy",
    "StartupError",
    "Task",
    "TaskOptions",
    "TracingMiddleware",
    "TracingProducerMiddleware",
    "UnknownTaskError",
    "Worker",
    "WorkerConfig",
    "WorkerStats",
    "WrappingMiddleware",
    "current_claim",
    "current_job",
    "from_url",
    "key_for",
    "progress",
    "run_sync",
    "run_worker",
]
