"""An app whose tasks use the queues ``mail`` and ``reports`` (none uses ``default``)."""

from __future__ import annotations

from asyncjobs import App

app = App()


@app.task(name="mail.send", queue="mail")
async def send(to: str) -> None:
    """Send nothing."""


@app.task(name="reports.build", queue="reports")
async def build() -> None:
    """Build nothing."""
