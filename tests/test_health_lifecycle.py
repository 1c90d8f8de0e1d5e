"""Health state across a node's suspension, resumption and revocation: never an old verdict shown as current."""

from __future__ import annotations

import json

from app.admission import applications, nodes
from app.admission.information import parse
from app.extensions import db
from app.health import service
from app.health.models import NodeHealth
from app.routing import service as routes
from tests.factories import node_document
from tests.test_health_state import Result  # one poll's outcome, as the poller reports it
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def listed_status(node_id: str) -> str | None:
    entries = {entry["node_id"]: entry for entry in json.loads(routes.head().body)["nodes"]}
    return entries[node_id]["status"] if node_id in entries else None


def bring_up(node_id: str) -> None:
    for _ in range(2):
        service.apply_round([Result(node_id, True)])
    assert db.session.get(NodeHealth, node_id).status == "up"


def test_a_resumed_node_is_listed_unknown_until_polled_again_not_with_its_verdict_from_before(app, people):  # noqa: F811
    """Nobody polls a suspended node: the "up" it had when suspended says nothing of it days later. Shown and
    published again on resumption, it told the console and every peer "up" until three rounds had failed."""
    minister, _ = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    assert listed_status(node.node_id) == "up"
    nodes.suspend(node, "drill", by=minister)
    db.session.commit()
    assert db.session.get(NodeHealth, node.node_id).status == "unknown"
    nodes.resume(node, "drill over", by=minister)
    db.session.commit()
    health = db.session.get(NodeHealth, node.node_id)
    assert health.status == "unknown" and health.consecutive_successes == 0 and health.consecutive_failures == 0
    assert listed_status(node.node_id) == "unknown"
    bring_up(node.node_id)  # the next polls decide, with the usual thresholds
    assert listed_status(node.node_id) == "up"


def test_a_revoked_node_keeps_no_health_verdict(app, people):  # noqa: F811
    minister, _ = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    nodes.revoke(node, "key lost", by=minister)
    db.session.commit()
    assert db.session.get(NodeHealth, node.node_id).status == "unknown"


def test_a_node_whose_endpoint_moved_is_listed_unknown_until_the_new_one_is_polled(app, people):  # noqa: F811
    """The polls so far were of the old endpoint: published with the new one, their "up" said a server nobody
    had polled yet was up."""
    minister, jx_admin = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    moved = node.endpoint.rstrip("/") + "/v2"
    change = applications.submit_change(node, parse(node_document("360000", endpoint=moved)), None, by=jx_admin)
    db.session.commit()
    applications.approve(change, by=minister)
    db.session.commit()
    entry = {e["node_id"]: e for e in json.loads(routes.head().body)["nodes"]}[node.node_id]
    assert (entry["endpoint"], entry["status"]) == (moved, "unknown")
    contact_only = node_document("360000", endpoint=moved, contact={"name": "李四", "phone": "0791-7654321",
                                                                    "email": "li@jx.example"})
    bring_up(node.node_id)
    change = applications.submit_change(node, parse(contact_only), None, by=jx_admin)
    db.session.commit()
    applications.approve(change, by=minister)
    db.session.commit()
    assert db.session.get(NodeHealth, node.node_id).status == "up"  # nothing polled changed
