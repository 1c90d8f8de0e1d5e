"""A provincial admin's division filter (`scope.division_filter`): the same rows as "the code starts with the
scope's prefix", said so that the nodes' division index serves it. `LIKE prefix || '%'` is no index range on
SQLite: a Jiangxi city's admin's events page walked the whole country's events, newest first, to find theirs."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from app.admission.scope import division_filter
from app.auth.models import division_prefix
from app.database import utcnow
from app.divisions.models import Division
from app.extensions import db
from app.health import history
from app.health.models import HealthEvent
from app.pki import inventory
from tests.test_node_list_plan import plan


@pytest.mark.parametrize("scopes", [("360000",), ("360100",), ("360102",), ("360100", "370000"), ("110000",),
                                    ("820000",), ("650000", "360102")])
def test_a_scope_reaches_the_codes_that_start_with_its_prefix_and_no_neighbour(make_user, scopes):
    admin = make_user("admin", "provincial_admin", scopes)
    every = db.session.scalars(select(Division.code)).all()
    expected = sorted(code for code in every if any(code.startswith(division_prefix(s)) for s in scopes))
    reached = sorted(db.session.scalars(select(Division.code).where(division_filter(admin, Division.code))))
    assert reached == expected
    assert expected, "the scope names codes of the list"


@pytest.mark.parametrize("scope, inside, outside", [
    ("360000", ["360000", "369999"], ["350000", "370000", "3", "35"]),
    ("360100", ["360100", "360199"], ["360200", "360099", "360000"]),
    ("360102", ["360102", "3601020"], ["360103", "360101", "36010"]),
])
def test_a_scope_stops_at_the_next_prefix(make_user, scope, inside, outside):
    """Codes not in the list (and strings of other lengths) at both edges of the range."""
    admin = make_user("admin", "provincial_admin", (scope,))
    values = inside + outside
    rows = text(" UNION ALL ".join(f"SELECT :v{i} AS code" for i in range(len(values)))).bindparams(
        **{f"v{i}": v for i, v in enumerate(values)}).columns(code=db.String).subquery()
    reached = sorted(db.session.scalars(select(rows.c.code).where(division_filter(admin, rows.c.code))))
    assert reached == sorted(inside)


def test_a_scope_of_nines_falls_back_to_the_prefix_test(make_user):
    """No next prefix of the same length: `LIKE` as before (no such code in GB/T 2260)."""
    from app.auth.models import User

    admin = User(username="nines", role="provincial_admin", scope_codes="990000")  # never stored
    values = ["990000", "999999", "980000", "9"]
    rows = text(" UNION ALL ".join(f"SELECT :v{i} AS code" for i in range(len(values)))).bindparams(
        **{f"v{i}": v for i, v in enumerate(values)}).columns(code=db.String).subquery()
    assert sorted(db.session.scalars(select(rows.c.code).where(division_filter(admin, rows.c.code)))) == \
        ["990000", "999999"]


@pytest.mark.parametrize("scope", ["360000", "360100", "360102"])
def test_a_provincial_admins_events_and_certificates_start_from_their_divisions_nodes(make_user, scope):
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plan; PostgreSQL's planner chooses by its statistics")
    admin = make_user("admin", "provincial_admin", (scope,))
    events = history.events_query(admin).limit(20)
    certificates = inventory.visible_to(inventory.inventory_query(state="expired"), admin).limit(20)
    for query in (events, certificates):
        assert "USING INDEX ix_nodes_division_code (division_code" in plan(query), plan(query)


@pytest.mark.parametrize("role", ["ministry_admin", "auditor", "provincial_admin"])
def test_the_events_join_the_nodes_only_for_a_scoped_reader(make_user, role):
    """For the nation the division filter is true: the join to the nodes only made the count ten times dearer."""
    from tests.test_admission_review import admit

    minister = make_user("minister")
    jiangxi = admit(make_user("jx-admin", "provincial_admin", ("360000",)), minister)
    guangdong = admit(make_user("gd-admin", "provincial_admin", ("440000",)), minister, "440000")
    db.session.add_all([HealthEvent(node_id=node.node_id, at=utcnow(), old_status="unknown", new_status="down")
                        for node in (jiangxi, guangdong)])
    db.session.commit()
    reader = make_user("reader", role, ("360000",) if role == "provincial_admin" else ())
    query = history.events_query(reader)
    assert ("JOIN nodes" in str(query.compile(db.engine))) == (role == "provincial_admin")
    expected = [jiangxi.node_id] if role == "provincial_admin" else [jiangxi.node_id, guangdong.node_id]
    assert sorted(event.node_id for event in db.session.scalars(query)) == expected
