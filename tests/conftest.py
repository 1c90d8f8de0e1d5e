"""Fixtures: app, client, runner, users, live server and browser, on SQLite or on DATABASE_URL.

The schema always comes from the Alembic migrations, never from `create_all`, so the suite also
proves the migrations. SQLite tests copy a migrated template file; PostgreSQL tests share one
migrated database and empty it after each test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from flask.globals import _cv_app
from flask.testing import FlaskClient
from sqlalchemy import text

from app import create_app
from app.config import database_url
from app.extensions import db

PASSWORD = "Correct-Horse-9"
SCREENSHOTS = Path(__file__).parent / "screenshots"
KEEP_TABLES = {"alembic_version", "divisions", "division_revisions"}
# Every PostgreSQL session of the suite (this process's threads, and the commands and servers it starts with
# this URL) gives up on a lock after this long. A lock held by a session whose owner waits on the waiter (the
# test's own session while its request, server thread or subprocess waits) is a deadlock PostgreSQL cannot see:
# without this it waited for good; now the statement fails with "canceling statement due to lock timeout".
LOCK_TIMEOUT = "120s"  # given as --lock_timeout=..., without the space of "-c ...", which URLs re-rendered mangle


def _test_config(instance: Path, url: str) -> dict:
    return {
        "TESTING": True,
        "MPIM_INSTANCE_PATH": str(instance),
        "SQLALCHEMY_DATABASE_URI": url,
        "SESSION_COOKIE_SECURE": False,
        "REMEMBER_COOKIE_SECURE": False,
        "SECRET_KEY": "test-secret-key",
        "MPIM_PAGE_SIZE": 20,
        "MPIM_CA_PASSPHRASE": "test-ca-passphrase",
    }


def _migrate_and_seed(app) -> None:
    from flask_migrate import upgrade

    from app.divisions import service as divisions

    with app.app_context():
        upgrade()
        divisions.import_revision(divisions.DEFAULT_FILE.read_bytes(), divisions.DEFAULT_REVISION, actor="tests")
        db.session.commit()
        db.engine.dispose()


def _division_fingerprint(connection) -> tuple:
    row = connection.execute(text(
        "SELECT count(*), sum(CASE WHEN retired THEN 1 ELSE 0 END), min(revision), max(revision),"
        " (SELECT count(*) FROM division_revisions) FROM divisions")).one()
    return tuple(row)


@pytest.fixture(scope="session")
def database(tmp_path_factory):
    """('sqlite', template_path) or ('postgresql', url), migrated and loaded with GB/T 2260."""
    url = os.environ.get("DATABASE_URL")
    root = tmp_path_factory.mktemp("db")
    if url:
        url = database_url(root)
        url += ("&" if "?" in url else "?") + f"options=--lock_timeout%3D{LOCK_TIMEOUT}"
        app = create_app(_test_config(root / "instance", url))
        with app.app_context():
            with db.engine.begin() as connection:
                connection.execute(text("DROP SCHEMA public CASCADE"))
                connection.execute(text("CREATE SCHEMA public"))
            db.engine.dispose()
        _migrate_and_seed(app)
        with app.app_context(), db.engine.connect() as connection:
            baseline = {
                "fingerprint": _division_fingerprint(connection),
                "divisions": [dict(r._mapping) for r in
                              connection.execute(text("SELECT * FROM divisions ORDER BY code"))],
                "revisions": [dict(r._mapping) for r in connection.execute(text("SELECT * FROM division_revisions"))],
            }
            db.engine.dispose()
        return {"kind": "postgresql", "url": url, "baseline": baseline}
    template = root / "template.db"
    _migrate_and_seed(create_app(_test_config(root / "instance", f"sqlite:///{template}")))
    return {"kind": "sqlite", "template": template}


def _reset_postgresql(baseline: dict) -> None:
    try:
        _empty_postgresql(baseline)
    except Exception as error:  # the lock timeout, most likely: name who held the tables
        with db.engine.connect() as connection:
            others = connection.execute(text(
                "SELECT pid, state, backend_type, application_name, now() - xact_start, left(query, 200)"
                " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")).all()
        raise AssertionError(f"emptying the database after the test failed ({error}); other sessions: "
                             f"{[tuple(row) for row in others]}") from error


def _empty_postgresql(baseline: dict) -> None:
    with db.engine.begin() as connection:
        tables = [row[0] for row in
                  connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))]
        wipe = [t for t in tables if t not in KEEP_TABLES]
        if wipe:
            connection.execute(text(f"TRUNCATE {', '.join(wipe)} RESTART IDENTITY CASCADE"))
        if _division_fingerprint(connection) != baseline["fingerprint"]:
            connection.execute(text("TRUNCATE divisions, division_revisions RESTART IDENTITY CASCADE"))
            rows = baseline["divisions"]
            for level in ("province", "prefecture", "county"):
                batch = [r for r in rows if r["level"] == level]
                connection.execute(text(
                    "INSERT INTO divisions (code, name, level, parent_code, revision, retired, retired_in)"
                    " VALUES (:code, :name, :level, :parent_code, :revision, :retired, :retired_in)"), batch)
            for r in baseline["revisions"]:
                connection.execute(text(
                    "INSERT INTO division_revisions (id, name, imported_at, imported_by, added, renamed, retired,"
                    " restored) VALUES (:id, :name, :imported_at, :imported_by, :added, :renamed, :retired,"
                    " :restored)"), r)
            connection.execute(text("SELECT setval(pg_get_serial_sequence('division_revisions', 'id'),"
                                    " (SELECT max(id) FROM division_revisions))"))


class IsolatedClient(FlaskClient):
    """Each request gets its own app context, as in production; the test's own context (its
    session and `g`) is not shared with the request, so state leaks nowhere."""

    def open(self, *args, **kwargs):
        token = _cv_app.set(None)
        try:
            return super().open(*args, **kwargs)
        finally:
            _cv_app.reset(token)


@pytest.fixture
def app(database, tmp_path):
    if database["kind"] == "sqlite":
        path = tmp_path / "mpim.db"
        shutil.copyfile(database["template"], path)
        url = f"sqlite:///{path}"
    else:
        url = database["url"]
    application = create_app(_test_config(tmp_path / "instance", url))
    application.test_client_class = IsolatedClient
    with application.app_context():

        from app.pki import lifecycle
        lifecycle.initialise(actor="tests")  # a real CA per test: approval, sessions and routes need one
        db.session.commit()
        yield application
        from app.routing.serving import cache_for

        cache_for(application).close()
        db.session.remove()
        if database["kind"] == "postgresql":
            _reset_postgresql(database["baseline"])
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


class Console:
    """Drives the console the way a browser would: GET the form, POST it with its CSRF token."""

    def __init__(self, client):
        self.client = client

    def login(self, username: str, password: str = PASSWORD):
        token = csrf_token(self.client.get("/login").get_data(as_text=True))
        return self.client.post("/login", data={"username": username, "password": password, "csrf_token": token})

    def post_form(self, page_url: str, data: dict, action: str | None = None):
        token = csrf_token(self.client.get(page_url).get_data(as_text=True))
        return self.client.post(action or page_url, data={**data, "csrf_token": token})


@pytest.fixture
def make_user(app):
    from app.auth import service

    def make(username: str, role: str = "ministry_admin", scopes: tuple[str, ...] = (), password: str = PASSWORD,
             must_change_password: bool = False):
        """By default a user who has chosen their own password already (tests/test_password_due.py covers
        the first sign-in with one an admin chose)."""
        user = service.create_user(service.UserDraft(username=username, password=password, role=role, scopes=scopes,
                                                     must_change_password=must_change_password))
        db.session.commit()
        return user

    return make


@pytest.fixture
def console(client):
    return Console(client)


@pytest.fixture
def admin_console(make_user, app):
    from app.auth.models import User

    if db.session.scalar(db.select(User).where(User.username == "minister")) is None:
        make_user("minister", "ministry_admin")
    console = Console(app.test_client())
    assert console.login("minister").status_code == 302
    return console


@pytest.fixture
def live_server(app):
    """The app served over real HTTP on 127.0.0.1 with a free port, in a thread."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    stop_serving(server, thread)


def stop_serving(server, thread: threading.Thread, timeout: float = 30) -> None:
    """Stop a socketserver that `thread` runs `serve_forever` on. Its shutdown() waits without a timeout for the
    loop to notice, forever if the loop never ran or is stuck: bounded here, so that fails the test instead."""
    stopper = threading.Thread(target=server.shutdown, daemon=True)
    stopper.start()
    stopper.join(timeout)
    assert not stopper.is_alive(), f"the server on {server.server_address} did not stop serving in {timeout} s"
    server.server_close()
    thread.join(timeout)
    assert not thread.is_alive(), f"the thread serving {server.server_address} did not end in {timeout} s"


def stop_process(process: subprocess.Popen, grace: float = 60) -> None:
    """Stop a server or scheduler the test started: SIGTERM, and SIGKILL if it is still there after `grace`.
    A wait that only timed out left the process running against the database the next tests use (and its
    open transaction held their TRUNCATE); now it is gone either way, and a process that ignored SIGTERM
    fails the test that started it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
        raise AssertionError(f"{process.args} did not stop within {grace} s of SIGTERM; killed") from None


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright; never a downloaded browser, never skipped."""
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("MPIM_CHROMIUM", "/usr/bin/chromium")
    assert Path(executable).exists(), f"{executable} is missing: `make test` installs Debian's chromium"
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(15000)
    yield tab
    context.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
