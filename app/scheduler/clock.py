"""The host's wall clock stepped while the scheduler runs.

APScheduler 3 sleeps until a job's next run by the wall clock: after a step back of ten minutes (NTP or chrony
stepping, a fixed RTC) every job, the lease's renewal among them, was ten minutes away, and setting the clock right
again did not wake it. A thread that sleeps by the monotonic clock compares the two clocks every second and says
when the wall clock moved against it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("mpim.scheduler")

# Below this the wall clock is slewed (NTP at up to 0.5 ms a second), or read a little late: not a step.
STEP_SECONDS = 2.0


class ClockWatch:
    """Calls `on_step(seconds)` (negative: back) from its own thread when the wall clock steps against the
    monotonic one. `wall` and `monotonic` are the clocks it reads (`time.time` and `time.monotonic` when None,
    looked up at each reading)."""

    def __init__(self, on_step: Callable[[float], None], *, period: float = 1.0,
                 wall: Callable[[], float] | None = None, monotonic: Callable[[], float] | None = None):
        self.on_step = on_step
        self.period = period
        self.wall = wall
        self.monotonic = monotonic
        self.offset: float | None = None
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def check(self) -> float:
        """The step since the last check, in seconds, or 0.0 for none. A slow slew is taken in check by check."""
        offset = (self.wall or time.time)() - (self.monotonic or time.monotonic)()
        step = 0.0 if self.offset is None else offset - self.offset
        self.offset = offset
        return step if abs(step) >= STEP_SECONDS else 0.0

    def start(self) -> None:
        self.check()
        self.thread = threading.Thread(target=self._run, name="scheduler-clock", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(5)

    def _run(self) -> None:
        while not self.stopped.wait(self.period):  # a wait by the monotonic clock
            try:
                if step := self.check():
                    self.on_step(step)
            except Exception:  # the watch must outlive one bad call
                log.exception("clock watch failed")
