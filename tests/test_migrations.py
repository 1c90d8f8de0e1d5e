"""The Alembic revisions and the models describe the same schema."""

from __future__ import annotations


def test_models_match_the_migrations(runner):
    result = runner.invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output  # `db check` exits non-zero when they differ


def test_health_and_console_tell_a_database_older_than_the_code(app, admin_console):
    """Started before `flask db upgrade`: /healthz answers 503 (a load balancer keeps requests away)
    and ministry admins see why; a database a newer release already migrated is fine (rolling upgrade)."""
    from sqlalchemy import text

    from app.extensions import db

    client = admin_console.client
    head = db.session.scalar(text("SELECT version_num FROM alembic_version"))
    assert client.get("/healthz").get_json()["schema"] == "current"
    try:
        for recorded, status, schema in (("0005_nodes_province_index", 503, "behind"),
                                         ("0099_from_a_newer_release", 200, "ahead")):
            db.session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": recorded})
            db.session.commit()
            answer = client.get("/healthz")
            assert (answer.status_code, answer.get_json()["schema"]) == (status, schema)
            page = client.get("/").get_data(as_text=True)
            assert ("flask db upgrade" in page) is (schema == "behind")
    finally:
        db.session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
        db.session.commit()
    assert client.get("/healthz").status_code == 200
