"""What the reference node says when it stops the operator: each refusal names the next step (docs/operations.md,
"A node enrolled again"; README, the application node). A real management node over HTTP, real nodes
(`network`), and a closed port on 127.0.0.1 for a management node that does not answer."""

from __future__ import annotations

import json

from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_appnode_join_again import revoke, run
from tests.test_appnode_trust_root import refusal
from tests.test_sessions import people  # noqa: F401 (fixture)

ENROL_AGAIN = "get a new enrollment token and run `join --again --token TOKEN`"


def test_a_revoked_node_is_told_to_enrol_again_by_status_and_by_a_plain_join(network):  # noqa: F811
    a, minister = network["a"], network["minister"]
    revoke(a, minister)
    pulled = run(a.dir, "routes", "pull")
    assert pulled.exit_code == 2 and refusal(pulled)["code"] == "node_revoked", pulled.output
    status = run(a.dir, "status")
    problem = json.loads(status.stdout)["certificate_problem"]
    assert "a revocation is final" in problem and ENROL_AGAIN in problem, problem

    joined = run(a.dir, "join", "--token", "mpet_unused")
    assert joined.exit_code == 1 and refusal(joined)["code"] == "already_joined", joined.output
    message = refusal(joined)["message"]
    assert message.startswith(f"already joined as {a.id}") and ENROL_AGAIN in message, message
    assert "`trust-root FILE`" in message  # after a new root, as before

