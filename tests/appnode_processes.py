"""The network as separate processes on 127.0.0.1: the management node under gunicorn, reference nodes
under `python -m app.appnode run`, and the node CLI. Used by the end-to-end test and bench/messages.py."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import stop_process

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def eventually(check, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    """Poll until `check()` is truthy (a real network settles in its own time); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_http(url: str, process: subprocess.Popen, context: ssl.SSLContext | None = None, timeout: float = 60):
    def up():
        assert process.poll() is None, f"{process.args} exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return response.status == 200
        except OSError:
            return False
    eventually(up, timeout, what=url)


class ManagementNode:
    """`gunicorn wsgi:app` over the test's database and CA."""

    def __init__(self, database_url: str, instance: str, *, workers: int = 1, log: Path | None = None,
                 env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env = {**os.environ, "DATABASE_URL": database_url.replace("+psycopg", ""),
                          "MPIM_INSTANCE_PATH": instance, "MPIM_CA_PASSPHRASE": "test-ca-passphrase",
                          "SECRET_KEY": "test-secret-key", "MPIM_COOKIE_SECURE": "0", "MPIM_ACCESS_LOG": "/dev/null",
                          "MPIM_BASE_URL": self.url, "FLASK_APP": "wsgi.py", **(env or {})}
        stream = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
        self.process = subprocess.Popen([str(Path(PYTHON).with_name("gunicorn")), "-w", str(workers), "-b",
                                         f"127.0.0.1:{self.port}", "wsgi:app"], cwd=ROOT, env=env,
                                        stdout=stream, stderr=stream)
        wait_http(f"{self.url}/healthz", self.process)

    def flask(self, *args: str, wait: bool = True):
        """`flask …` as an admin runs it beside the server: same database, instance and CA."""
        command = [str(Path(PYTHON).with_name("flask")), *args]
        if not wait:
            return subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        return subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        stop_process(self.process)


class NodeProcess:
    """One reference node: its data directory, its CLI and, once started, its server process."""

    def __init__(self, root: Path, name: str, registry_url: str, division: str, org_name: str,
                 route_interval: float = 1.0):
        self.name, self.division = name, division
        self.data = root / f"appnode-{name}"
        self.port = free_port()
        self.endpoint = f"https://127.0.0.1:{self.port}"
        self.log = root / f"appnode-{name}.log"
        self.env = {**os.environ, "MPIM_NODE_ROUTE_INTERVAL": str(route_interval), "PYTHONUNBUFFERED": "1"}
        self.server: subprocess.Popen | None = None
        self.node_id: str | None = None
        self.ui_password = self.cli("init", "--registry", registry_url, "--division", division,
                                    "--endpoint", self.endpoint, "--listen", f"127.0.0.1:{self.port}",
                                    "--org-name", org_name, "--org-code", division + "000000")["ui_password"]

    def command(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "app.appnode", "--data", str(self.data), "--json", *args]

    def cli(self, *args: str, check: bool = True):
        """Run one CLI command; its JSON output, or (returncode, stderr) when `check` is False."""
        done = subprocess.run(self.command(*args), cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=120)
        if not check:
            return done.returncode, done.stderr
        assert done.returncode == 0, f"{args}: {done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else None

    def join_in_background(self, token: str) -> subprocess.Popen:
        return subprocess.Popen(self.command("join", "--token", token, "--wait", "120"), cwd=ROOT, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish_join(self, joining: subprocess.Popen) -> str:
        out, err = joining.communicate(timeout=120)
        assert joining.returncode == 0, err
        self.node_id = json.loads(out)["node_id"]
        return self.node_id

    def start(self) -> None:
        stream = open(self.log, "ab")  # noqa: SIM115 (closed with the process)
        self.server = subprocess.Popen(self.command("run"), cwd=ROOT, env=self.env, stdout=stream, stderr=stream)
        context = ssl.create_default_context(cafile=str(self.data / "tls" / "ca-bundle.pem"))
        wait_http(f"{self.endpoint}/api/v1/health", self.server, context)

    def stop(self) -> None:
        if self.server is not None:
            stop_process(self.server)
            self.server = None

    def address(self, user_id: str) -> str:
        return f"{user_id}@{self.node_id}"
