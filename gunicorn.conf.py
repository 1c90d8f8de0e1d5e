"""gunicorn settings; every value can be overridden from the environment."""

import importlib.util
import multiprocessing
import os
from pathlib import Path


def _settings_module():
    """app/config.py (standard library only) loaded by path, not through the `app` package: importing that in
    the master brought Flask and SQLAlchemy in before the fork, and workers a HUP reload starts would have kept
    those modules, old, beside the deploy's new code."""
    spec = importlib.util.spec_from_file_location("mpim_settings", Path(__file__).with_name("app") / "config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


env_int = _settings_module().env_int  # a value that is no whole number, or too small, stops the start naming it

bind = os.environ.get("MPIM_BIND", "127.0.0.1:5000")
workers = env_int("MPIM_WORKERS", multiprocessing.cpu_count() * 2 + 1, minimum=1)
threads = env_int("MPIM_THREADS", 1, minimum=1)
timeout = env_int("MPIM_WORKER_TIMEOUT", 30, minimum=0)  # 0: no timeout, as gunicorn reads it
accesslog = os.environ.get("MPIM_ACCESS_LOG", "-")
# The app is created in each worker after fork: no database connection crosses a fork.
preload_app = False
# gunicorn 27's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl): a second
# instance on the host takes it over, and stopping either removes the other's. Off unless a path is set.
control_socket = os.environ.get("MPIM_CONTROL_SOCKET") or None
control_socket_disable = control_socket is None


def post_worker_init(worker):
    """Each worker, once it has loaded the app: a check that fails (a CA key the passphrase does not open)
    is logged now, not when the first request that needs it fails."""
    import logging

    from app.console import log_failing_checks

    # The app's loggers (mpim.*) have no handler of their own and gunicorn's do not propagate: without this,
    # Python's last resort printed their warnings bare (no time, logger or level) and dropped the rest. The
    # scheduler's format (app/scheduler/cli.py); Flask's logger then finds this handler and adds none.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log_failing_checks(worker.wsgi, f"web worker {worker.pid}")
