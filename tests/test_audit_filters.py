"""The audit log's filters mean the same on SQLite and PostgreSQL, and show what they filter by."""

from __future__ import annotations

from app.audit import service
from app.extensions import db
from tests.test_audit_export import export, exports


def seed_targets() -> None:
    for target in ("node-1", "NODE-2", "Node_3", "Éclair", "éclair", "节点-1"):
        service.record("node.suspend", target, {}, actor="minister")
    service.record("NODE.RESUME", "node-1", {}, actor="minister")  # as a record edited in the database might hold
    db.session.commit()


def test_a_date_typed_without_its_zeros_is_shown_as_the_date_box_writes_it(admin_console, runner):
    """since=2026-1-1 (a hand-typed address) filtered by the day, but a date box shows only 2026-01-01: the box was
    empty, and the next Filter dropped the date without a word. The filter now holds the day as the box writes it,
    in the box, the export's hidden fields and its record."""
    seed_targets()
    client = admin_console.client
    page = client.get("/audit/", query_string={"since": "2000-1-1", "until": "9999-12-1"}).get_data(as_text=True)
    assert '<input type="date" name="since" value="2000-01-01">' in page
    assert '<input type="date" name="until" value="9999-12-01">' in page
    assert '<input type="hidden" name="since" value="2000-01-01">' in page
    assert "Éclair" in page and "不是日期" not in page
    export(client, since="2000-1-1")
    assert exports()[-1].detail["filters"] == {"since": "2000-01-01"}
    assert runner.invoke(args=["audit", "export", "--until", "9999-1-01"]).exit_code == 0
    assert exports()[-1].detail["filters"] == {"until": "9999-01-01"}
