"""The suite's own guard: a process a test started is gone when the test ends, even one that ignores SIGTERM,
so it cannot go on holding the database the next tests use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import stop_process

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
                  "time.sleep(120)"


def test_a_process_that_ignores_sigterm_is_killed_and_fails_its_test():
    process = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"  # its handler is set before it is asked to stop
    with pytest.raises(AssertionError, match="did not stop within 0.5 s of SIGTERM; killed"):
        stop_process(process, grace=0.5)
    assert process.poll() is not None
    process.stdout.close()


def test_a_process_that_stops_on_sigterm_passes_quietly():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    stop_process(process, grace=30)
    assert process.returncode == -15
