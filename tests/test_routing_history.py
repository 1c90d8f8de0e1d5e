"""The kept history of the routing table: folded deltas and pruning (SPEC §5, docs/protocol.md)."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import event, update

from app.admission import nodes
from app.database import utcnow
from app.extensions import db
from app.routing import service
from app.routing.models import RouteChange, RouteVersion
from tests.test_routing import await_served, pull, session  # noqa: F401 (fixture)
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def churn(version: int, count: int, *, entry: dict | None) -> None:
    """`count` change rows at `version` for nodes no table lists (as a busy history has, many per node)."""
    db.session.add_all([RouteChange(version=version, node_id=f"9{n:019d}", entry=entry and {**entry, "node_id":
                        f"9{n:019d}"}) for n in range(count)])
    db.session.commit()


def test_a_since_with_more_changes_after_it_than_the_table_has_entries_gets_the_full_table(
        app, client, session, people):  # noqa: F811
    """Folding loaded every kept change after `since`: 1,000 versions of 100 changes held a worker for 15-25 s
    and 288 MB, for a delta no smaller than the table, which is stored signed and costs nothing to send."""
    minister, _ = people
    other, _ = admit_with_keys(people)                   # v2
    nodes.suspend(other, "drill", by=minister)           # v3
    db.session.commit()
    await_served(app, 3)
    delta = json.loads(pull(client, session, "?since=1").data)  # few changes: still a delta
    assert (delta["since"], delta["changed"], delta["removed"]) == (1, [], [])
    bound = max(service.find(3).node_count, service.FOLD_MIN_ROWS)
    entry = {**service.current_entries()[session["node"].node_id], "status": "up"}
    for _ in range(2):
        service.publish("re-sign", force=True)           # v4, v5
    db.session.commit()
    added = (bound - 2) // 2
    churn(4, added, entry=entry)                         # added at 4, removed at 5: no table we serve lists them
    churn(5, bound - 2 - added, entry=None)
    await_served(app, 5)
    assert db.session.query(RouteChange).filter(RouteChange.version > 1).count() == bound
    folded = json.loads(pull(client, session, "?since=1").data)  # the bound itself is still folded
    assert (folded["since"], folded["changed"], folded["removed"]) == (1, [], [])
    service.publish("re-sign", force=True)               # v6
    db.session.commit()
    churn(6, 1, entry=None)
    await_served(app, 6)
    full = json.loads(pull(client, session, "?since=1").data)
    assert "since" not in full and full["version"] == 6
    assert [node["node_id"] for node in full["nodes"]] == [session["node"].node_id]
    assert json.loads(pull(client, session, "?since=5").data)["since"] == 5  # the version before: its delta


def test_a_publication_rewrites_only_the_version_whose_body_it_lets_go(app, session):  # noqa: F811
    """Letting go of old bodies rewrote every version older than the last KEEP_BODIES at every publication,
    however long ago its body went: publishing slowed down for good as the history grew."""
    for _ in range(service.KEEP_BODIES + 5):
        service.publish("re-sign", force=True)
    db.session.commit()
    counts = []

    def count_updates(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE ROUTE_VERSIONS"):
            counts.append(cursor.rowcount)

    event.listen(db.engine, "after_cursor_execute", count_updates)
    try:
        version = service.publish("re-sign", force=True)
        db.session.commit()
    finally:
        event.remove(db.engine, "after_cursor_execute", count_updates)
    assert counts == [1]
    assert service.find(version.version - service.KEEP_BODIES).body is None
    assert service.find(version.version - service.KEEP_BODIES + 1).body is not None


def test_a_version_issued_while_the_clock_was_behind_keeps_its_changes_while_earlier_ones_are_kept(
        app, client, session, people):  # noqa: F811
    """Changes were let go per version (1,000 versions old and issued over 7 days ago): a version published while
    the clock read a month ago lost its changes while the earlier, younger-looking ones stayed, and a delta
    folded across that hole left out the node it added, disagreeing with the full table of the same version."""
    other, _ = admit_with_keys(people)                   # v2, its clock a month behind
    month_ago = utcnow() - timedelta(days=30)
    db.session.execute(update(RouteVersion).where(RouteVersion.version == 2).values(
        issued_at=month_ago, expires_at=month_ago + timedelta(days=1)))
    busy_week(3, 1002, body=service.find(2).body)
    head = service.publish("re-sign", force=True).version  # 1003
    db.session.commit()
    await_served(app, head)
    full = json.loads(pull(client, session).data)
    delta = json.loads(pull(client, session, "?since=1").data)
    assert delta["since"] == 1 and delta["removed"] == []
    applied = {session["node"].node_id} | {entry["node_id"] for entry in delta["changed"]}
    assert applied == {node["node_id"] for node in full["nodes"]} == {session["node"].node_id, other.node_id}
    # Once version 1 is as old, both go: what is kept is again a run of versions up to the head.
    db.session.execute(update(RouteVersion).where(RouteVersion.version == 1).values(
        issued_at=month_ago, expires_at=month_ago + timedelta(days=1)))
    head = service.publish("re-sign", force=True).version
    db.session.commit()
    await_served(app, head)
    assert db.session.query(RouteChange).filter(RouteChange.version <= 2).count() == 0
    assert service.oldest_delta_base() > 2
    assert "nodes" in json.loads(pull(client, session, "?since=1").data)


def busy_week(first: int, last: int, *, body: bytes) -> None:
    """Versions `first` to `last` with no entry changes (re-signs, health rounds of nodes no table lists), issued
    now; `last` keeps `body`, the table a publication after it starts from."""
    now = utcnow()
    db.session.add_all([RouteVersion(version=number, issued_at=now, expires_at=now + timedelta(days=1), node_count=2,
                                     reason="re-sign", changes=["re-signed"], body=body if number == last else None,
                                     signature="x", signer_sha256="a" * 64) for number in range(first, last + 1)])
    db.session.commit()


def test_a_version_dated_ahead_of_the_clock_keeps_no_history_for_good(app, session, people):  # noqa: F811
    """Kept as "issued within 7 days" while its date was ahead, a version published while the clock ran a year
    fast kept every later change with it (only a run of the oldest goes) until the clock caught up."""
    admit_with_keys(people)  # v2: published while the clock ran a year ahead
    db.session.execute(update(RouteVersion).where(RouteVersion.version == 2)
                       .values(issued_at=utcnow() + timedelta(days=365)))
    month_ago = utcnow() - timedelta(days=30)
    body = service.find(2).body
    db.session.add_all([RouteVersion(version=n, issued_at=month_ago, expires_at=month_ago + timedelta(days=1),
                                     node_count=2, reason="re-sign", changes=["re-signed"],
                                     body=body if n == 1500 else None, signature="x", signer_sha256="a" * 64)
                        for n in range(3, 1501)])
    db.session.execute(update(RouteVersion).where(RouteVersion.version == 1).values(issued_at=month_ago))
    db.session.commit()
    churn(3, 50, entry=None)  # a month old, and 1,497 versions back
    service.publish("re-sign", force=True)
    db.session.commit()
    assert db.session.query(RouteChange).filter(RouteChange.version <= 3).count() == 0
    assert service.oldest_delta_base() >= 3


def test_the_upgrade_closes_a_hole_the_old_pruning_rule_left(app, session, people):  # noqa: F811
    """Stop 32 made pruning keep a run of versions up to the head, but a hole the old rule made (a version
    published with the clock behind lost its changes, earlier ones kept) stayed until the versions below it
    aged out, and a delta across it left out what that version changed. Migration 0015 closes it."""
    from flask_migrate import downgrade, upgrade

    other, _ = admit_with_keys(people)  # v2: its changes add `other`
    month_ago = utcnow() - timedelta(days=30)
    db.session.execute(update(RouteVersion).where(RouteVersion.version == 2).values(
        issued_at=month_ago, expires_at=month_ago + timedelta(days=1)))
    busy_week(3, 1003, body=service.find(2).body)
    db.session.execute(RouteChange.__table__.delete().where(RouteChange.version == 2))  # the old rule's hole
    db.session.commit()
    assert service.oldest_delta_base() == 0 and db.session.query(RouteChange).count() > 0
    downgrade(revision="0014_job_runs_job_id_index")
    upgrade()
    db.session.expire_all()
    assert db.session.query(RouteChange).filter(RouteChange.version <= 2).count() == 0
    assert service.oldest_delta_base() >= 2  # a `since` from before the hole gets the full table


def test_the_upgrade_leaves_a_history_with_no_hole_as_it_is(app, session, people):  # noqa: F811
    from flask_migrate import downgrade, upgrade

    admit_with_keys(people)
    before = sorted((row.version, row.node_id) for row in db.session.query(RouteChange))
    assert before
    downgrade(revision="0014_job_runs_job_id_index")
    upgrade()
    db.session.expire_all()
    assert sorted((row.version, row.node_id) for row in db.session.query(RouteChange)) == before
