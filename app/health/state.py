"""The damped up/down state machine (Consul-style thresholds), as a pure function."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    failures_before_down: int = 3
    successes_before_up: int = 2


@dataclass(frozen=True)
class Counters:
    status: str  # up | down | unknown
    failures: int = 0
    successes: int = 0


def step(current: Counters, ok: bool, thresholds: Thresholds) -> Counters:
    """One poll's effect: a node goes down only after `failures_before_down` failures in a row and
    comes (back) up only after `successes_before_up` successes in a row; unknown leaves by either."""
    if ok:
        successes, failures = current.successes + 1, 0
        status = "up" if current.status != "up" and successes >= thresholds.successes_before_up else current.status
    else:
        successes, failures = 0, current.failures + 1
        status = "down" if current.status != "down" and failures >= thresholds.failures_before_down else \
            current.status
    return Counters(status=status, failures=failures, successes=successes)
