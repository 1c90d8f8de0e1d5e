"""After restoring a backup, the routing table's versions go on above those nodes hold (SPEC §5, operations)."""

from __future__ import annotations

import json
import logging

from sqlalchemy import delete, update

from app.admission import nodes
from app.admission.models import Node
from app.extensions import db
from app.routing import service
from app.routing.client import RouteClient, RouteUnavailable
from app.routing.models import RouteChange, RouteVersion
from app.routing.serving import cache_for
from tests.test_routing import Answer, await_served, pull, session  # noqa: F401 (fixture)
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def restore(app, *, version: int, node: Node) -> None:
    """What restoring a backup taken at `version` does to what these tests look at: the later versions are
    gone, and `node`, suspended since, is active again. The workers start afresh, as after a restore."""
    db.session.execute(delete(RouteChange).where(RouteChange.version > version))
    db.session.execute(delete(RouteVersion).where(RouteVersion.version > version))
    db.session.execute(update(Node).where(Node.node_id == node.node_id).values(status="active"))
    db.session.commit()
    cache_for(app).close()
    del app.extensions["mpim_route_cache"]


def test_after_a_restore_nodes_ahead_get_the_full_table_above_what_they_hold(
        app, client, session, people, runner, caplog):  # noqa: F811
    minister, _ = people
    root, chain = client.get("/ca/ca.pem").data, client.get("/ca/chain.pem").data
    signer = client.get("/ca/route-signer.pem").data

    def fetch(headers, since):
        response = pull(client, session, "" if since is None else f"?since={since}", **headers)
        return Answer(response.status_code, dict(response.headers), response.data)

    other, _ = admit_with_keys(people)  # version 2: the backup is taken here
    behind = RouteClient(root, intermediates=chain)  # a node that held version 2 through it all
    assert behind.pull(fetch, signer).version == 2
    nodes.suspend(other, "drill", by=minister)  # version 3, lost in the restore
    db.session.commit()
    service.publish("re-sign", force=True)  # version 4, lost too
    db.session.commit()
    await_served(app, 4)
    ahead = RouteClient(root, intermediates=chain)
    assert ahead.pull(fetch, signer).version == 4 and ahead.entry(other.node_id) is None

    restore(app, version=2, node=other)
    with caplog.at_level(logging.WARNING, logger="mpim.routing"):
        try:
            ahead.pull(fetch, signer)
            raise AssertionError("a version ahead of the database's must be refused")
        except RouteUnavailable:
            pass
    assert "flask routing publish --above" in caplog.text  # the operator is told what to do

    result = runner.invoke(args=["routing", "publish", "--above", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["version"] == 5
    await_served(app, 5)
    # Version 4 is one this database never published: no delta from its history applies to the node's table
    # (an empty one did, and the node kept `other` out of its table for good); it gets the whole table.
    answer = json.loads(pull(client, session, "?since=4").data)
    assert "nodes" in answer and answer["version"] == 5
    assert ahead.pull(fetch, signer).version == 5 and ahead.entry(other.node_id) is not None
    # A node holding a version this database did publish gets the delta from it, though it is not 5 - 1.
    delta = json.loads(pull(client, session, "?since=2").data)
    assert (delta["since"], delta["version"]) == (2, 5)
    assert behind.pull(fetch, signer).version == 5 and behind.table == ahead.table


def test_publishing_above_refuses_versions_no_column_holds(app, session, runner):  # noqa: F811
    result = runner.invoke(args=["routing", "publish", "--above", str(service.MAX_VERSION)])
    assert result.exit_code != 0 and service.head_version() == 1


def test_a_node_ahead_is_logged_once_per_version_served_not_once_per_request(app, client, session, caplog):  # noqa: F811
    """A node asking every few seconds from ahead of the table would fill the log with one line per request;
    the operator needs one line per node, again only when a new version is served and the node is still ahead."""
    head = service.head_version()

    def ahead_lines() -> int:
        return sum("ahead of the current" in record.getMessage() for record in caplog.records)

    with caplog.at_level(logging.WARNING, logger="mpim.routing"):
        for _ in range(3):
            assert pull(client, session, **{"If-None-Match": f'"{head + 10}"'}).status_code == 200
            assert pull(client, session, f"?since={head + 10}").status_code == 400
        assert ahead_lines() == 1
        service.publish("re-sign", force=True)
        db.session.commit()
        await_served(app, head + 1)
        assert pull(client, session, **{"If-None-Match": f'"{head + 10}"'}).status_code == 200
        assert pull(client, session, f"?since={head + 10}").status_code == 400
        assert ahead_lines() == 2
