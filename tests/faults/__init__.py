"""Fault suite: real ``asyncjobs worker`` processes on redis:// and amqp://, killed, stopped,
paused and cut off, with every execution recorded in a PostgreSQL ledger (``ledger_app.py``).

Short form: ``pytest tests/faults -m fault``. Long form: ``python -m tests.faults --long``.
"""
