"""Every periodic job is one entry of this list (as redash's tasks/schedule.py): features append
theirs in `init_app`; only the scheduler process runs them, never a web worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    name: str
    function: Callable[[], str | None]  # returns a one-line summary for the run record
    interval_seconds: float
    # Not a kill (a thread cannot be stopped safely): a run past it is named in one warning while it runs (checked
    # at each lease renewal) and its record says it overran; its next runs are skipped until it ends.
    timeout_seconds: float = 300
    log_runs: bool = True  # False for a job whose every run is the same news (the heartbeat)


jobs: list[Job] = []
# Functions the scheduler process calls once as it ends, its jobs done (or past the stop's grace): what a job left
# to finish in the background gets its last chance (the health webhook's queued alerts, `health.webhook.Outbox`).
at_stop: list[Callable[[], object]] = []


def register(job: Job) -> None:
    if all(existing.name != job.name for existing in jobs):
        jobs.append(job)
