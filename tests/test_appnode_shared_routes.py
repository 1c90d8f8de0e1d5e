"""The node's server and its CLI share one data directory (SPEC §5 on the application node).

A table the operator pulls with `routes pull` is stored there by the CLI's process; the running server adopts
it before its own next pull, so the two never answer from different versions for longer than a moment.
"""

from __future__ import annotations

import json

from tests.appnode_processes import eventually
from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_appnode_renewal import node_cli
from tests.test_sessions import people  # noqa: F401 (fixture)


def test_the_running_node_uses_the_table_its_operator_pulled_from_the_cli(network):  # noqa: F811
    b = network["b"]
    held = b.node.routes.version
    c = network["join"]("110000")
    c.node.sync_routes()

    def cli_pulled_c():
        """On PostgreSQL the management node's serving process hears of the new version a moment late."""
        done = node_cli(b, "--json", "routes", "pull")
        assert done.returncode == 0, done.stderr
        pulled = json.loads(done.stdout)
        return pulled["version"] if f"{c.id} added" in pulled["changes"] else None
    version = eventually(cli_pulled_c, timeout=10, interval=0.05, what=f"the CLI's pull to list {c.id}")
    assert version > held

    eventually(lambda: b.node.routes.version == version, timeout=10, interval=0.05,
               what=f"the running node to adopt version {version}")
    assert b.node.routes.entry(c.id)["cert_sha256"] == c.node.identity.fingerprint()
    sent = c.node.send_text("sunqi", b.user("lisi"), "新节点")
    assert [row.state for row in c.node.outbox()] == ["delivered"]
    assert [entry["message"].message_id for entry in b.node.history("lisi", sent.conversation_id)] == [sent.message_id]
