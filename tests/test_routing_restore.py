"""After restoring a backup, the routing table's versions go on above those nodes hold (SPEC §5, operations)."""

from __future__ import annotations

import json
import logging

from sqlalchemy import delete, select, update

from app.admission import nodes
from app.admission.models import Application, Node
from app.extensions import db
from app.routing import service
from app.routing.client import RouteClient, RouteUnavailable
from app.routing.models import RouteChange, RouteVersion
from app.routing.serving import cache_for
from tests.test_routing import Answer, await_served, pull, session  # noqa: F401 (fixture)
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def restore(app, *, version: int, node: Node, forgotten: Node) -> None:
    """What restoring a backup taken at `version` does to what these tests look at: the later versions are
    gone, `node`, suspended since, is active again, and `forgotten`, admitted since, is not known. The workers
    start afresh, as after a restore."""
    db.session.execute(delete(RouteChange).where(RouteChange.version > version))
    db.session.execute(delete(RouteVersion).where(RouteVersion.version > version))
    db.session.execute(update(Node).where(Node.node_id == node.node_id).values(status="active"))
    # The rows naming `forgotten` (its application, certificate, sessions...) went with it: PostgreSQL's foreign
    # keys refuse to delete the node before them. Its application and the node name each other: that link goes
    # first, the application last.
    application_id = db.session.scalar(select(Node.application_id).where(Node.node_id == forgotten.node_id))
    db.session.execute(update(Application).where(Application.node_id == forgotten.node_id).values(node_id=None))
    for table in reversed(db.metadata.sorted_tables):
        for key in table.foreign_keys:
            if (key.column.table.name == Node.__tablename__ and key.column.name == "node_id"
                    and table.name != Application.__tablename__):
                db.session.execute(delete(table).where(key.parent == forgotten.node_id))
    db.session.execute(delete(Node).where(Node.node_id == forgotten.node_id))
    db.session.execute(delete(Application).where(Application.id == application_id))
    db.session.commit()
    cache_for(app).close()
    del app.extensions["mpim_route_cache"]


def test_after_a_restore_done_in_the_documented_order_every_node_gets_the_registrys_table(
        app, client, session, people, runner, caplog):  # noqa: F811
    """operations.md, Backup: publish above what nodes hold first, then revoke (suspend) again what was revoked
    since the backup. Done the other way round, the re-suspension takes a version number the lost history used,
    and a node holding that lost version gets a delta from the restored one applied to its own table."""
    minister, _ = people
    root, chain = client.get("/ca/ca.pem").data, client.get("/ca/chain.pem").data
    signer = client.get("/ca/route-signer.pem").data

    def fetch(headers, since):
        response = pull(client, session, "" if since is None else f"?since={since}", **headers)
        return Answer(response.status_code, dict(response.headers), response.data)

    other, _ = admit_with_keys(people)  # version 2: the backup is taken here
    await_served(app, 2)  # on PostgreSQL the server learns of a version by NOTIFY, on a thread of its own
    behind = RouteClient(root, intermediates=chain)  # a node that held version 2 through it all
    assert behind.pull(fetch, signer).version == 2
    late, _ = admit_with_keys(people)  # version 3, lost in the restore with `late` itself
    await_served(app, 3)
    on_lost = RouteClient(root, intermediates=chain)  # a node that stopped pulling at the lost version 3
    assert on_lost.pull(fetch, signer).version == 3 and on_lost.entry(late.node_id) is not None
    nodes.suspend(other, "drill", by=minister)  # version 4, lost too
    db.session.commit()
    service.publish("re-sign", force=True)  # version 5, lost too
    db.session.commit()
    await_served(app, 5)
    ahead = RouteClient(root, intermediates=chain)
    assert ahead.pull(fetch, signer).version == 5 and ahead.entry(other.node_id) is None

    restore(app, version=2, node=other, forgotten=late)
    with caplog.at_level(logging.WARNING, logger="mpim.routing"):
        try:
            ahead.pull(fetch, signer)
            raise AssertionError("a version ahead of the database's must be refused")
        except RouteUnavailable:
            pass
    assert "flask routing publish --above" in caplog.text  # the operator is told what to do

    # Step 1: publish above the highest version nodes hold.
    result = runner.invoke(args=["routing", "publish", "--above", "5", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["version"] == 6
    await_served(app, 6)
    # A node holding a version this database did publish gets the delta from it, though it is not 6 - 1.
    delta = json.loads(pull(client, session, "?since=2").data)
    assert (delta["since"], delta["version"]) == (2, 6)
    # Step 2: suspend again what was suspended since the backup (the audit log's copy names it): version 7.
    nodes.suspend(db.session.get(Node, other.node_id), "drill, again after the restore", by=minister)
    db.session.commit()
    await_served(app, 7)
    # Versions 3 to 5 are ones this database never published: no delta from its history applies to a node's
    # table holding one (an empty one did, and the node kept `other` out of its table for good); it gets the
    # whole table.
    answer = json.loads(pull(client, session, "?since=5").data)
    assert "nodes" in answer and answer["version"] == 7
    assert ahead.pull(fetch, signer).version == 7 and ahead.entry(other.node_id) is None
    assert on_lost.pull(fetch, signer).version == 7
    assert on_lost.entry(late.node_id) is None, "a node on a lost version kept a node the registry forgot"
    assert behind.pull(fetch, signer).version == 7
    assert behind.table == ahead.table == on_lost.table


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
