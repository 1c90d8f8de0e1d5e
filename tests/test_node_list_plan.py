"""The console's nodes list pages in index order for its filters and sorts, so a page costs the same with
10,000 nodes as with 100 (issue 3; bench/console_nodes.py measures it). Checked on SQLite's query plan: a
"USE TEMP B-TREE FOR ORDER BY" is a sort of every matching row before the first page can be cut ("... FOR
RIGHT PART OF ORDER BY" only orders rows that tie on the index's leading column, as they stream)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app.admission import nodes
from app.extensions import db


def plan(statement) -> str:
    compiled = statement.compile(db.engine, compile_kwargs={"literal_binds": True})
    return "\n".join(row[-1] for row in db.session.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))


@pytest.mark.parametrize("filters", [
    {}, {"sort": "org_name"}, {"status": "active"}, {"status": "active", "sort": "org_name"},
    {"province": "360000"}])
def test_a_page_of_the_nodes_list_needs_no_sort_of_every_row(app, make_user, filters):
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plan; PostgreSQL's planner chooses by its statistics")
    minister = make_user("minister")
    query = nodes.list_query(minister, **filters).limit(50)
    assert "USE TEMP B-TREE FOR ORDER BY" not in plan(query), plan(query)
