"""Reference nodes for tests: real data directories, joined to a real management node over HTTP,
served over real mutual TLS on 127.0.0.1 (werkzeug threads in-process, or gunicorn processes)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading

from werkzeug.serving import make_server

from app.admission import applications, tokens
from app.appnode import protocol
from app.appnode.config import NodeConfig
from app.appnode.node import Node
from app.appnode.transport import PeerPool, client_context, server_context
from app.appnode.web import create_node_app
from app.extensions import db
from tests.appnode_processes import PYTHON, ROOT, free_port, wait_http
from tests.conftest import stop_process, stop_serving

USERS = {"360000": [("zhangsan", "张三"), ("wangwu", "王五")], "440000": [("lisi", "李四"), ("zhaoliu", "赵六")],
         "110000": [("sunqi", "孙七")]}
ORGS = {"360000": "江西省公安厅", "440000": "广东省公安厅", "110000": "北京市公安局"}


def enroll(division: str, minister) -> str:
    _, raw = tokens.create_token(division, by=minister)
    db.session.commit()
    return raw


def approve_pending(node: Node, minister) -> None:
    application = applications.get(node.setting("application_id"))
    applications.approve(application, by=minister)
    db.session.commit()


class ServedNode:
    """A node in a temporary directory, joined and served by a threaded werkzeug server with mutual TLS."""

    def __init__(self, root, registry_url: str, division: str, minister, **config):
        self.port = free_port()
        self.dir = root / f"node-{division}-{self.port}"
        self.node = Node.init(self.dir, NodeConfig(
            registry_url=registry_url, division_code=division, endpoint=f"https://127.0.0.1:{self.port}",
            listen=f"127.0.0.1:{self.port}", org_name=ORGS[division], org_code=division + "000000",
            route_interval=3600, **config))
        (self.dir / "ui_password").write_text("operator-password")
        (self.dir / "ui_password").chmod(0o600)  # as `init` writes it: readable by others, the page is off
        self.node.apply(enroll(division, minister))
        approve_pending(self.node, minister)
        self.node.await_approval(timeout=10, interval=0.05)
        for user_id, name in USERS[division]:
            self.node.add_user(user_id, name)
        self.server = self.thread = self.process = None
        self.log = self.dir.parent / f"node-{division}-{self.port}.log"

    @property
    def id(self) -> str:
        return self.node.node_id

    def user(self, user_id: str) -> str:
        return f"{user_id}@{self.id}"

    def start(self) -> ServedNode:
        identity = self.node.identity
        context = server_context(identity.cert_file, identity.key_file, identity.bundle_file,
                                 self.node.config.request_deadline)
        self.server = make_server("127.0.0.1", self.port, create_node_app(self.node), threaded=True,
                                  ssl_context=context)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def start_process(self, threads: int | None = None) -> ServedNode:
        """Serve the node as production does instead: `python -m app.appnode run` (gunicorn, one worker with
        `threads` threads, by default `run`'s), its log in `self.log`."""
        stream = open(self.log, "ab")  # noqa: SIM115 (closed with the process)
        self.process = subprocess.Popen(
            [PYTHON, "-m", "app.appnode", "--data", str(self.dir), "run",
             *(["--threads", str(threads)] if threads is not None else [])], cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=stream, stderr=stream)
        context = ssl.create_default_context(cafile=str(self.node.identity.bundle_file))
        wait_http(f"https://127.0.0.1:{self.port}/api/v1/health", self.process, context)
        return self

    def stop(self) -> None:
        if self.server is not None:
            stop_serving(self.server, self.thread)
            self.server = None
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def raw_post(sender: Node, receiver: ServedNode, kind: str, envelope: dict | bytes, *, identity_of: Node | None = None,
             content_type: str = "application/json"):
    """POST an envelope as `sender` (or with another node's TLS identity) straight to a federation endpoint."""
    who = (identity_of or sender).identity
    pool = PeerPool(lambda: client_context(who.cert_file, who.key_file, who.bundle_file))
    body = envelope if isinstance(envelope, bytes) else json.dumps(envelope, ensure_ascii=False).encode()
    path = {v: k for k, v in protocol.ENDPOINTS.items()}[kind]
    if content_type != "application/json":
        import http.client
        connection = http.client.HTTPSConnection("127.0.0.1", receiver.port, context=pool._context_now())
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    response = pool.post(f"https://127.0.0.1:{receiver.port}", path, body, pin=None)
    try:
        document = json.loads(response.body)
    except ValueError:
        document = response.body
    return response.status, document
