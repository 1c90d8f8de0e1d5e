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


def test_a_lock_wait_that_begins_after_the_first_look_is_seen(app):
    """`wait_for_a_lock_wait` asked pg_stat_activity again and again inside one transaction, and PostgreSQL
    answers it there from a snapshot taken at the first look: a wait that began after it was never seen, and the
    test waited its 30 s out (under load, where the thread it watches starts late; a health test failed so)."""
    import threading

    from sqlalchemy import event

    from tests.test_sessions import wait_for_a_lock_wait

    if db.engine.dialect.name != "postgresql":
        pytest.skip("pg_stat_activity: PostgreSQL")
    db.session.execute(text("SELECT pg_advisory_xact_lock(4242)"))  # held by the test until its commit
    looked = threading.Event()

    def first_look(_connection, _cursor, statement, *_args) -> None:
        if "pg_stat_activity" in statement and threading.current_thread() is threading.main_thread():
            looked.set()

    engine = db.engine

    def waiter() -> None:
        looked.wait(60)  # no wait before the watcher's first look
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(4242)"))

    thread = threading.Thread(target=waiter, daemon=True)
    event.listen(db.engine, "after_cursor_execute", first_look)
    try:
        thread.start()
        assert wait_for_a_lock_wait(thread, timeout=10)
    finally:
        event.remove(db.engine, "after_cursor_execute", first_look)
        looked.set()
        db.session.commit()
        thread.join(60)
    assert not thread.is_alive()
