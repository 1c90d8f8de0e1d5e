"""The suite's own guard: a lock wait on PostgreSQL ends (conftest.LOCK_TIMEOUT), so a deadlock the database
cannot see (the test's session holds a lock its own request, server thread or subprocess waits for, while the
test waits on them) fails the test instead of holding CI until it is killed."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.extensions import db
from app.routing.serving import cache_for


def test_every_session_the_suite_opens_gives_up_on_a_lock(app):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's waits end after its busy timeout already")
    assert db.session.scalar(text("SHOW lock_timeout")) == "2min"  # this process's sessions
    other = create_engine(app.config["SQLALCHEMY_DATABASE_URI"])  # a command or server started with the URL
    try:
        with other.connect() as connection:
            assert connection.scalar(text("SHOW lock_timeout")) == "2min"
    finally:
        other.dispose()
    import psycopg  # the route listener's own connection, from the same URL

    conninfo = make_url(app.config["SQLALCHEMY_DATABASE_URI"]).set(drivername="postgresql")
    with psycopg.connect(conninfo.render_as_string(hide_password=False)) as connection:
        assert connection.execute("SHOW lock_timeout").fetchone()[0] == "2min"
    assert cache_for(app).uses_notify
