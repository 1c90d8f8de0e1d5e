"""gunicorn settings; every value can be overridden from the environment."""

import multiprocessing
import os

bind = os.environ.get("MPIM_BIND", "127.0.0.1:5000")
workers = int(os.environ.get("MPIM_WORKERS", multiprocessing.cpu_count() * 2 + 1))
threads = int(os.environ.get("MPIM_THREADS", 1))
timeout = int(os.environ.get("MPIM_WORKER_TIMEOUT", 30))
accesslog = os.environ.get("MPIM_ACCESS_LOG", "-")
# The app is created in each worker after fork: no database connection crosses a fork.
preload_app = False
