"""Text messages per second from node A to node B through the whole stack, against a bare HTTPS POST loop
between the same two processes in the same run (issue 7; goal: ratio ≥ 0.5).

Processes: the management node (gunicorn), node B (`python -m app.appnode run`, gunicorn with mutual TLS)
and this process acting as node A over A's own data directory. Every envelope travels one at a time on
one kept-alive mutual-TLS connection from A to B:
- stack (the figure): A's users send (A.9 built and schema-checked, message and outbox row committed to
  A's SQLite) while A's node loop (`NodeLoop`, as in `python -m app.appnode run`) delivers the outbox:
  envelope POSTed, B runs the whole receiver pipeline (schema, clock, routing-table peer check, dedup)
  and commits before acknowledging, A records the acknowledgements. Timed from the first send to the
  last acknowledgement;
- stack_sync (reported beside it): `send_text` waiting for each acknowledgement before the next send, the
  CLI's path; it shows the per-message cost without the overlap of sending and delivering;
- bare (the baseline): a POST of the same envelope bytes to B's `/api/v1/health`, which B's framework
  answers (405) without any node work: TLS, HTTP and the server, nothing else.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, fresh_app, report  # noqa: E402

MESSAGES = int(os.environ.get("BENCH_MESSAGES", 1000))
ROUNDS = 5


def main() -> dict:
    from sqlalchemy import func, select

    from app.admission import applications, tokens
    from app.admission.models import Application
    from app.appnode import protocol
    from app.appnode.node import Node
    from app.appnode.server import NodeLoop
    from app.appnode.store import Outbox
    from app.auth import service as auth
    from app.extensions import db
    from app.pki import lifecycle
    from tests.appnode_processes import ManagementNode, NodeProcess, eventually

    os.chdir(ROOT)
    registry_app = fresh_app("messages", MPIM_CA_PASSPHRASE="test-ca-passphrase")
    work = Path(tempfile.mkdtemp(prefix="mpim-bench-messages-"))
    with registry_app.app_context():
        lifecycle.initialise(actor="bench")
        minister = auth.create_user(auth.UserDraft(username="minister", password="Bench-Password-9",
                                                   role="ministry_admin"))
        db.session.commit()
        registry = ManagementNode(registry_app.config["SQLALCHEMY_DATABASE_URI"],
                                  registry_app.config["MPIM_INSTANCE_PATH"])
        sides = {}
        try:
            for name, division in (("a", "360000"), ("b", "440000")):
                process = NodeProcess(work, name, registry.url, division, f"bench {name}", route_interval=3600)
                _, token = tokens.create_token(division, by=minister)
                db.session.commit()
                joining = process.join_in_background(token)

                def pending(endpoint=process.endpoint):
                    db.session.expire_all()
                    return db.session.scalar(select(Application).where(Application.endpoint == endpoint,
                                                                       Application.status == "pending"))
                applications.approve(eventually(pending, 60), by=minister)
                db.session.commit()
                process.finish_join(joining)
                sides[name] = process
            sides["a"].cli("users", "add", "zhangsan", "张三")
            sides["b"].cli("users", "add", "lisi", "李四")
            sides["b"].start()
            node_a = Node(sides["a"].data)
            node_a.sync_routes()
            to = sides["b"].address("lisi")
            entry = node_a.routes.entry(sides["b"].node_id)

            sample = node_a.send_text("zhangsan", to, "warm-up")  # also opens the kept-alive connection
            body = json.dumps(protocol.make_envelope(from_node=node_a.node_id, to_node=entry["node_id"],
                                                     type="message", payload=sample.document),
                              ensure_ascii=False).encode()

            def stack_sync() -> float:
                started = time.perf_counter()
                for index in range(MESSAGES):
                    node_a.send_text("zhangsan", to, f"消息 {index}")
                return MESSAGES / (time.perf_counter() - started)

            def delivered_count() -> int:
                with node_a.db() as session:
                    return session.scalar(select(func.count()).select_from(Outbox).where(
                        Outbox.state == "delivered"))

            def stack() -> float:
                before = delivered_count()
                loop = NodeLoop(node_a)
                loop.start()
                started = time.perf_counter()
                for index in range(MESSAGES):
                    node_a.send_text("zhangsan", to, f"消息 {index}", deliver=False)
                    node_a.wake.set()
                while delivered_count() < before + MESSAGES:
                    time.sleep(0.01)
                elapsed = time.perf_counter() - started
                loop.stop()
                loop.join()
                return MESSAGES / elapsed

            def bare() -> float:
                started = time.perf_counter()
                for _ in range(MESSAGES):
                    response = node_a.peers.post(entry["endpoint"], "/api/v1/health", body,
                                                 pin=entry["cert_sha256"])
                    assert response.status == 405
                return MESSAGES / (time.perf_counter() - started)

            stack_rates, sync_rates, bare_rates = [], [], []
            for _ in range(ROUNDS):  # interleaved, so all see the same machine
                bare_rates.append(bare())
                stack_rates.append(stack())
                sync_rates.append(stack_sync())
            delivered = sum(1 for row in node_a.outbox() if row.state == "delivered")
            node_b = Node(sides["b"].data)
            with node_b.db() as session:
                from app.appnode.store import Message
                received = len(session.scalars(select(Message.message_id)).all())
            assert delivered == received == 2 * ROUNDS * MESSAGES + 1, (delivered, received)
        finally:
            for process in sides.values():
                process.stop()
            registry.stop()
    stack_rate, sync_rate, bare_rate = max(stack_rates), max(sync_rates), max(bare_rates)
    return report("messages", stack_rate, bare_rate, 0.5, unit="messages/s", messages=MESSAGES, rounds=ROUNDS,
                  stack_sync=round(sync_rate, 1), sync_ratio=round(sync_rate / bare_rate, 3),
                  stack_rounds=[round(r, 1) for r in stack_rates], sync_rounds=[round(r, 1) for r in sync_rates],
                  bare_rounds=[round(r, 1) for r in bare_rates])


if __name__ == "__main__":
    main()
