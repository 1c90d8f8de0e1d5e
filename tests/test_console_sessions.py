"""Console sessions held on the server (app/auth/console_sessions.py): signing out, ending a session from
another one, an administrator's levers and the CLI end a sign-in for good, whatever cookie is still about."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from app.audit.models import AuditRecord
from app.auth import console_sessions, idle
from app.auth.models import ConsoleSession, User
from app.database import utcnow
from app.extensions import db
from tests.conftest import PASSWORD, Console, csrf_token

CHROME_ON_WINDOWS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                     "Chrome/131.0.0.0 Safari/537.36")


def signed_in(app, username: str = "alice", user_agent: str | None = None) -> Console:
    client = app.test_client()
    if user_agent:
        client.environ_base["HTTP_USER_AGENT"] = user_agent
    console = Console(client)
    assert console.login(username).status_code == 302
    return console


def session_cookie(console: Console) -> str:
    return console.client.get_cookie("session").value


def row_of(console: Console) -> ConsoleSession:
    with console.client.session_transaction() as session:
        token = session[idle.TOKEN]
    db.session.expire_all()
    return console_sessions.find(token)


def is_signed_in(console: Console) -> bool:
    response = console.client.get("/")
    assert response.status_code in (200, 302)
    return response.status_code == 200


def session_ends() -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == "auth.session_end")
                                   .order_by(AuditRecord.seq)))


def records(action: str) -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.seq)))


@contextmanager
def racing(other_request: Callable[[], object]) -> Iterator[list]:
    """The race made deterministic: `other_request` runs, and commits, just before the next statement that ends
    a console session reaches the database, that is after this request read the row live and before it writes."""
    ran = []

    def before(_connection, _cursor, statement, *_args):
        if not ran and statement.startswith("UPDATE console_sessions SET ended_at"):
            ran.append(None)  # once: the other request's own update goes straight through
            ran[0] = other_request()

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield ran
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def reset_password(admin: Console, username: str) -> None:
    """The reset form on the user's page (its fields are prefixed "reset-")."""
    token = csrf_token(admin.client.get(f"/users/{username}").get_data(as_text=True))
    response = admin.client.post(f"/users/{username}/password",
                                 data={"reset-password": "Reset-Secret-42", "reset-csrf_token": token})
    assert response.status_code == 302
    assert f"已重置 {username} 的密码" in admin.client.get(f"/users/{username}").get_data(as_text=True)


def sign_out(console: Console) -> None:
    token = csrf_token(console.client.get("/").get_data(as_text=True))
    assert console.client.post("/logout", data={"csrf_token": token}).status_code == 302


def test_signing_out_ends_the_row_first(app, make_user):
    make_user("alice")
    console = signed_in(app)
    row_id = row_of(console).id
    sign_out(console)
    db.session.expire_all()
    row = db.session.get(ConsoleSession, row_id)
    assert row.end_reason == "logout" and row.ended_at is not None
    assert console_sessions.live_sessions(row.user) == []


def test_the_cookie_carries_a_random_token_and_the_database_only_its_hash(app, make_user):
    make_user("alice")
    first, second = signed_in(app), signed_in(app)
    tokens = []
    for console in (first, second):
        with console.client.session_transaction() as session:
            tokens.append(session[idle.TOKEN])
    assert tokens[0] != tokens[1] and all(len(token) >= 43 for token in tokens)  # 256 bits, base64url
    rows = list(db.session.scalars(select(ConsoleSession).order_by(ConsoleSession.id)))
    assert [row.token_hash for row in rows] == [hashlib.sha256(t.encode()).hexdigest() for t in tokens]
    dump = json.dumps([[str(v) for v in (r.token_hash, r.remote_addr, r.user_agent)] for r in rows])
    assert not any(token in dump for token in tokens)


def test_my_sessions_lists_where_i_am_signed_in_and_marks_this_one(app, make_user):
    make_user("alice")
    here = signed_in(app, user_agent=CHROME_ON_WINDOWS)
    signed_in(app, user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0")
    page = here.client.get("/account/sessions").get_data(as_text=True)
    assert "登录会话" in page and "Chrome 131, Windows" in page and "Firefox 128, Linux" in page
    assert "127.0.0.1" in page
    marked = re.search(r'<tr aria-current="true">(.*?)</tr>', page, re.S).group(1)
    assert "Chrome 131, Windows" in marked and "当前会话" in marked and "/end" not in marked
    assert page.count('data-confirm="结束来自') == 1  # only the other one can be ended from here
    assert 'href="/account/sessions"' in here.client.get("/").get_data(as_text=True)  # from the user menu


def test_ending_another_session_signs_it_out_and_keeps_this_one(app, make_user):
    make_user("alice")
    here, there = signed_in(app), signed_in(app)
    other_id = row_of(there).id
    response = here.post_form("/account/sessions", {}, action=f"/account/sessions/{other_id}/end")
    assert response.status_code == 302
    response = there.client.get("/nodes/")
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/nodes/"
    assert "此次登录已在您的另一个会话中被结束" in there.client.get("/login").get_data(as_text=True)
    assert is_signed_in(here)
    [entry] = session_ends()
    assert (entry.actor, entry.target, entry.detail) == ("alice", "alice",
                                                         {"reason": "ended_by_user", "sessions": [other_id]})


def test_ending_another_session_already_past_a_limit_records_that_limit_as_ending_them_all_does(app, make_user):
    """A page listed it before it idled out, and the scheduler's job has not yet come by: it ends at its limit
    (auth.timeout), not as ended by its user, as "sign out everywhere else" and the job record it."""
    make_user("alice")
    here, there = signed_in(app), signed_in(app)
    other = row_of(there)
    other.last_active_at = utcnow() - timedelta(minutes=31)
    db.session.commit()
    response = here.post_form("/account/sessions", {}, action=f"/account/sessions/{other.id}/end")
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(ConsoleSession, other.id).end_reason == "idle"
    assert session_ends() == [] and [entry.detail["reason"] for entry in records("auth.timeout")] == ["idle"]
    assert is_signed_in(here) and not is_signed_in(there)


def test_sign_out_everywhere_else_keeps_only_this_session(app, make_user):
    make_user("alice")
    make_user("bob")
    here, second, third, bobs = signed_in(app), signed_in(app), signed_in(app), signed_in(app, "bob")
    here.post_form("/account/sessions", {}, action="/account/sessions/end-others")
    assert [is_signed_in(c) for c in (here, second, third, bobs)] == [True, False, False, True]
    [entry] = session_ends()
    assert entry.detail["reason"] == "ended_by_user" and len(entry.detail["sessions"]) == 2


def test_nobody_ends_or_sees_another_users_session_from_my_sessions(app, make_user):
    make_user("alice")
    make_user("bob")
    alice, bob = signed_in(app), signed_in(app, "bob")
    response = bob.post_form("/account/sessions", {}, action=f"/account/sessions/{row_of(alice).id}/end")
    assert response.status_code == 404
    bobs_page = bob.client.get("/account/sessions").get_data(as_text=True)
    assert bobs_page.count("<tr") == 2 and '<tr aria-current="true">' in bobs_page  # header and bob's own
    assert is_signed_in(alice) and session_ends() == []


@pytest.mark.parametrize("number", [0, 2**31, 10**30])
def test_a_session_number_no_row_can_have_is_not_found_not_a_server_error(app, make_user, number):
    """PostgreSQL refuses to compare a number past its integer column: ending "session 2**31" answered 500."""
    make_user("alice")
    alice = signed_in(app)
    response = alice.post_form("/account/sessions", {}, action=f"/account/sessions/{number}/end")
    assert response.status_code == 404
    assert is_signed_in(alice) and session_ends() == []


def test_an_admins_reset_ends_every_session_of_the_user(app, admin_console, make_user):
    make_user("alice")
    first, second = signed_in(app), signed_in(app)
    reset_password(admin_console, "alice")
    assert not is_signed_in(first) and not is_signed_in(second)
    assert is_signed_in(admin_console)
    [entry] = session_ends()
    assert entry.actor == "minister" and entry.detail["reason"] == "password_reset"
    assert len(entry.detail["sessions"]) == 2


def test_disabling_an_account_ends_its_sessions(app, admin_console, make_user):
    make_user("alice", "auditor")
    alice = signed_in(app)
    response = admin_console.post_form("/users/alice", {"display_name": "", "role": "auditor", "scopes": ""})
    assert response.status_code == 302  # the active box left unticked
    assert db.session.scalar(select(User.active).where(User.username == "alice")) is False
    response = alice.client.get("/audit/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert "管理员已结束此次登录" in alice.client.get("/login").get_data(as_text=True)
    [entry] = session_ends()
    assert entry.detail["reason"] == "disabled" and entry.actor == "minister"


def test_an_admin_sees_a_users_sessions_and_ends_them_all_after_confirming(app, admin_console, make_user):
    make_user("alice")
    first, second = signed_in(app, user_agent=CHROME_ON_WINDOWS), signed_in(app)
    page = admin_console.client.get("/users/alice").get_data(as_text=True)
    assert "Chrome 131, Windows" in page
    assert 'data-confirm="让 alice 在所有位置退出登录？' in page
    response = admin_console.post_form("/users/alice", {}, action="/users/alice/sessions/end")
    assert response.status_code == 302
    assert "已结束 alice 的 2 个登录会话" in admin_console.client.get("/users/alice").get_data(as_text=True)
    assert not is_signed_in(first) and not is_signed_in(second) and is_signed_in(admin_console)
    assert "alice 当前未在任何位置登录" in admin_console.client.get("/users/alice").get_data(as_text=True)
    [entry] = session_ends()
    assert (entry.actor, entry.target, entry.detail["reason"]) == ("minister", "alice", "ended_by_admin")


def test_a_provincial_admin_neither_sees_nor_ends_another_users_sessions(app, make_user):
    make_user("alice")
    make_user("jx-admin", "provincial_admin", ("360000",))
    alice, provincial = signed_in(app), signed_in(app, "jx-admin")
    token = csrf_token(provincial.client.get("/account/sessions").get_data(as_text=True))
    assert provincial.client.get("/users/alice").status_code == 403
    assert provincial.client.post("/users/alice/sessions/end", data={"csrf_token": token}).status_code == 403
    assert provincial.client.post(f"/account/sessions/{row_of(alice).id}/end",
                                  data={"csrf_token": token}).status_code == 404
    assert is_signed_in(alice) and session_ends() == []


def test_a_password_change_ends_the_other_sessions_and_keeps_this_one(app, make_user):
    make_user("alice")
    here, there = signed_in(app), signed_in(app)
    here.post_form("/account/password", {"current_password": PASSWORD, "new_password": "New-Secret-42",
                                         "confirm": "New-Secret-42"})
    assert row_of(here).ended_at is None and is_signed_in(here)
    assert not is_signed_in(there)
    assert "您的密码已在另一个会话中修改" in there.client.get("/login").get_data(as_text=True)
    [entry] = session_ends()
    assert entry.detail["reason"] == "password_change" and len(entry.detail["sessions"]) == 1


def test_cli_lists_and_ends_a_users_sessions(app, runner, make_user):
    make_user("alice")
    first, second = signed_in(app, user_agent=CHROME_ON_WINDOWS), signed_in(app)
    listed = runner.invoke(args=["users", "sessions", "alice", "--json"])
    assert listed.exit_code == 0, listed.output
    items = [json.loads(line) for line in listed.output.splitlines()]
    assert {item["id"] for item in items} == {row_of(first).id, row_of(second).id}
    assert {item["user_agent"] for item in items} >= {"Chrome 131, Windows"}
    assert all(item["remote_addr"] == "127.0.0.1" for item in items)
    assert "Chrome 131, Windows" in runner.invoke(args=["users", "sessions", "alice"]).output

    ended = runner.invoke(args=["users", "end-sessions", "alice"])
    assert ended.exit_code == 0 and "ended 2 session(s) of alice" in ended.output
    assert not is_signed_in(first) and not is_signed_in(second)
    assert runner.invoke(args=["users", "sessions", "alice"]).output == "no live console sessions of alice\n"
    assert runner.invoke(args=["users", "sessions", "alice", "--json"]).output == ""  # one object per session
    [entry] = session_ends()
    assert (entry.actor, entry.detail["reason"]) == ("cli", "ended_by_admin")
    missing = runner.invoke(args=["users", "end-sessions", "nobody"])
    assert missing.exit_code == 1 and "nobody" in missing.output


def test_two_requests_past_the_idle_limit_at_once_record_one_timeout(app, make_user):
    """Both requests read the row live and past the limit; the one that ends it records auth.timeout, the other
    only signs out."""
    make_user("alice")
    first = signed_in(app)
    second = Console(app.test_client())
    second.client.set_cookie("session", session_cookie(first))  # the same sign-in: two tabs' requests
    row = row_of(first)
    row.last_active_at = utcnow() - timedelta(minutes=31)
    db.session.commit()
    with racing(lambda: second.client.get("/audit/")) as ran:
        response = first.client.get("/nodes/")
    assert ran and ran[0].status_code == 302 and response.status_code == 302
    assert response.headers["Location"] == "/login?next=/nodes/"
    assert "30 分钟无操作" in first.client.get("/login").get_data(as_text=True)
    db.session.expire_all()
    assert len(records("auth.timeout")) == 1 and db.session.get(ConsoleSession, row.id).end_reason == "idle"
    assert not is_signed_in(first) and not is_signed_in(second)


def _alice_signed_in_and_both_forms(app, admin_console, make_user):
    """alice signed in, her session's id, and the CSRF tokens of her sign-out and of the admin's end all."""
    make_user("alice")
    alice = signed_in(app)
    return (alice, row_of(alice).id, csrf_token(alice.client.get("/").get_data(as_text=True)),
            csrf_token(admin_console.client.get("/users/alice").get_data(as_text=True)))


def test_a_sign_out_that_comes_first_leaves_an_admins_end_all_nothing_to_record(app, admin_console, make_user):
    alice, row_id, alices_token, admins_token = _alice_signed_in_and_both_forms(app, admin_console, make_user)
    with racing(lambda: alice.client.post("/logout", data={"csrf_token": alices_token})) as ran:
        response = admin_console.client.post("/users/alice/sessions/end", data={"csrf_token": admins_token})
    assert ran and ran[0].status_code == 302 and response.status_code == 302
    assert "alice 没有在用的登录会话" in admin_console.client.get("/users/alice").get_data(as_text=True)
    assert [entry.actor for entry in records("auth.logout")] == ["alice"] and session_ends() == []
    db.session.expire_all()
    assert db.session.get(ConsoleSession, row_id).end_reason == "logout"


def test_an_admins_end_all_that_comes_first_leaves_a_sign_out_nothing_to_record(app, admin_console, make_user):
    alice, row_id, alices_token, admins_token = _alice_signed_in_and_both_forms(app, admin_console, make_user)
    with racing(lambda: admin_console.client.post("/users/alice/sessions/end",
                                                  data={"csrf_token": admins_token})) as ran:
        response = alice.client.post("/logout", data={"csrf_token": alices_token})
    assert ran and ran[0].status_code == 302
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert not is_signed_in(alice) and records("auth.logout") == []
    [entry] = session_ends()
    assert (entry.actor, entry.detail) == ("minister", {"reason": "ended_by_admin", "sessions": [row_id]})
    db.session.expire_all()
    assert db.session.get(ConsoleSession, row_id).end_reason == "ended_by_admin"


def test_ending_a_row_another_request_ended_since_it_was_read_changes_nothing(app, make_user):
    """At the function: the row read live here, ended and committed elsewhere, then ended here."""
    user = make_user("alice")
    row = row_of(signed_in(app))
    assert row.ended_at is None
    with app.app_context():  # another request: its own session and connection
        console_sessions.end(db.session.get(ConsoleSession, row.id), "ended_by_admin")
        db.session.commit()
    assert console_sessions.end(row, "logout") is False
    assert row.end_reason == "ended_by_admin"
    assert console_sessions.end_sessions(user, "password_reset") == [] and session_ends() == []
    db.session.commit()


def test_an_admins_end_all_counts_only_live_sessions_and_marks_the_expired_by_their_limit(app, admin_console,
                                                                                          make_user):
    make_user("alice")
    idle_one, long_one, live_one = signed_in(app), signed_in(app), signed_in(app)
    idle_row, long_row, live_id = row_of(idle_one), row_of(long_one), row_of(live_one).id
    idle_row.last_active_at = utcnow() - timedelta(minutes=31)
    long_row.signed_in_at = utcnow() - timedelta(hours=9)
    db.session.commit()
    admin_console.post_form("/users/alice", {}, action="/users/alice/sessions/end")
    assert "已结束 alice 的 1 个登录会话" in admin_console.client.get("/users/alice").get_data(as_text=True)
    [entry] = session_ends()
    assert entry.detail == {"reason": "ended_by_admin", "sessions": [live_id]}
    db.session.expire_all()
    assert [db.session.get(ConsoleSession, row_id).end_reason for row_id in (idle_row.id, long_row.id, live_id)] == [
        "idle", "session_limit", "ended_by_admin"]
    # Their ends are recorded as the limits', noticed by the admin's request: no sign-in is left without an end.
    assert [(entry.actor, entry.target, entry.detail["reason"]) for entry in records("auth.timeout")] == [
        ("minister", "alice", "idle"), ("minister", "alice", "session_limit")]
    assert idle_one.client.get("/nodes/").status_code == 302  # its holder comes back: told why, as at the limit
    assert "30 分钟无操作" in idle_one.client.get("/login").get_data(as_text=True)


def test_cli_end_sessions_reports_only_live_ones(app, runner, make_user):
    make_user("alice")
    stale, live = signed_in(app), signed_in(app)
    row, live_id = row_of(stale), row_of(live).id
    row.last_active_at = utcnow() - timedelta(minutes=31)
    db.session.commit()
    ended = runner.invoke(args=["users", "end-sessions", "alice"])
    assert ended.exit_code == 0 and "ended 1 session(s) of alice" in ended.output
    [entry] = session_ends()
    assert entry.detail == {"reason": "ended_by_admin", "sessions": [live_id]} and entry.actor == "cli"
    db.session.expire_all()
    assert db.session.get(ConsoleSession, row.id).end_reason == "idle"
    assert [(entry.actor, entry.target, entry.detail["reason"]) for entry in records("auth.timeout")] == [
        ("cli", "alice", "idle")]
    assert runner.invoke(args=["users", "end-sessions", "alice"]).output == "ended 0 session(s) of alice\n"


def test_a_session_past_its_limits_is_not_listed_as_live(app, make_user):
    user = make_user("alice")
    stale = signed_in(app)
    row = row_of(stale)
    row.last_active_at = utcnow() - timedelta(minutes=31)
    db.session.commit()
    fresh = signed_in(app)
    assert [r.id for r in console_sessions.live_sessions(user)] == [row_of(fresh).id]


def test_the_scheduler_deletes_sessions_ended_over_thirty_days_ago_and_none_whose_end_is_unrecorded(app,
                                                                                                    make_user):
    """The table holds about a month of sign-ins. One left live long past its limits (no scheduler ran) is not
    deleted, at a sign-in or by the job, before its end is recorded: the job ends and records it first."""
    from app.scheduler import registry
    from app.scheduler.runner import run_job

    make_user("alice")
    old_ended, recent_ended, old_expired, live = (signed_in(app) for _ in range(4))
    now = utcnow()
    rows = [row_of(console) for console in (old_ended, recent_ended, old_expired)]
    for row, ended_days_ago, signed_in_days_ago in zip(rows, (31, 29, None), (31, 29, 32), strict=True):
        row.signed_in_at = row.last_active_at = now - timedelta(days=signed_in_days_ago)
        if ended_days_ago is not None:
            row.ended_at, row.end_reason = now - timedelta(days=ended_days_ago), "logout"
    db.session.commit()
    old_ended_id, old_expired_id = rows[0].id, rows[2].id
    signed_in(app)
    db.session.expire_all()
    assert db.session.get(ConsoleSession, old_expired_id) is not None
    run = run_job(next(job for job in registry.jobs if job.name == "auth.expire_sessions"), "test")
    assert run.message == "ended 1 past a limit, deleted 1 ended over 30 days ago, deleted 0 spent sign-in counters"
    db.session.expire_all()
    remaining = set(db.session.scalars(select(ConsoleSession.id)))
    assert old_ended_id not in remaining and len(remaining) == 4
    assert db.session.get(ConsoleSession, old_expired_id).end_reason == "session_limit"
    assert [entry.detail["reason"] for entry in records("auth.timeout")] == ["session_limit"]


def test_readable_agents():
    assert console_sessions.readable_agent(CHROME_ON_WINDOWS) == "Chrome 131, Windows"
    assert console_sessions.readable_agent(CHROME_ON_WINDOWS + " Edg/131.0.2903.86") == "Edge 131, Windows"
    assert console_sessions.readable_agent(
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
        "Safari/605.1.15") == "Safari 17, macOS"
    assert console_sessions.readable_agent("curl/8.5.0\x1b[2J") == "curl/8.5.0[2J"
    assert console_sessions.readable_agent("") == ""
    assert len(console_sessions.readable_agent("x" * 500)) == 120


def test_one_user_ends_their_other_browser_from_my_sessions(browser, live_server, make_user):
    """Two browsers signed in as one user; the first ends the second through the confirmation, and the
    second's next page is the sign-in form, saying why."""
    make_user("alice")
    contexts = [browser.new_context(locale="zh-CN") for _ in range(2)]
    try:
        first, second = (context.new_page() for context in contexts)
        for tab in (first, second):
            tab.set_default_timeout(15000)
            tab.goto(f"{live_server}/login")
            tab.fill("input[name=username]", "alice")
            tab.fill("input[name=password]", PASSWORD)
            tab.click("button[type=submit]")
            tab.wait_for_selector("h1:has-text('仪表盘')")
        first.click("header >> text=登录会话")
        first.wait_for_selector("h1:has-text('登录会话')")
        assert first.locator("#console-sessions tbody tr").count() == 2
        questions = []
        first.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
        first.click("#console-sessions button:has-text('结束')")
        assert questions and questions[0].startswith("结束来自 127.0.0.1")
        assert first.locator("#console-sessions tbody tr").count() == 2  # thought better of it: nothing ended
        first.once("dialog", lambda dialog: dialog.accept())
        first.click("#console-sessions button:has-text('结束')")
        first.wait_for_selector(".flash:has-text('该登录会话已结束')")
        assert first.locator("#console-sessions tbody tr").count() == 1

        second.click("nav.mainnav >> text=行政区划")
        second.wait_for_selector("input[name=password]")
        assert "/login" in second.url
        assert "此次登录已在您的另一个会话中被结束" in second.inner_text("main")
        first.reload()
        first.wait_for_selector("h1:has-text('登录会话')")
    finally:
        for context in contexts:
            context.close()


def test_a_browser_signed_out_by_session_protection_ends_its_row(app, make_user):
    """Flask-Login's strong session protection signs a browser out when its address or User-Agent changes (a
    browser update does), but left this sign-in's token, and its row, live. The row ends with it, so a copy of
    the old cookie, sent from the old address and browser, is refused, and after signing in again the user's
    sessions page lists only the new sign-in."""
    make_user("alice")
    console = signed_in(app, user_agent=CHROME_ON_WINDOWS)
    copy = app.test_client()
    copy.environ_base["HTTP_USER_AGENT"] = CHROME_ON_WINDOWS
    copy.set_cookie("session", session_cookie(console))
    old_id = row_of(console).id
    console.client.environ_base["HTTP_USER_AGENT"] = CHROME_ON_WINDOWS.replace("Chrome/131", "Chrome/132")
    assert not is_signed_in(console)  # session protection: signed out here
    db.session.expire_all()
    old = db.session.get(ConsoleSession, old_id)
    assert old.ended_at is not None and old.end_reason == "logout"
    assert console.login("alice").status_code == 302
    assert [row.id for row in console_sessions.live_sessions(old.user)] == [row_of(console).id]
    assert not is_signed_in(Console(copy))
    assert [record.target for record in records("auth.logout")] == ["alice"]


def test_a_browser_signed_out_by_session_protection_past_its_limit_ends_its_row_at_the_limit(app, make_user):
    """The row ends as the limit's, with the auth.timeout record its holder's request would have written there,
    not as a sign-out and not without a record."""
    make_user("alice")
    console = signed_in(app, user_agent=CHROME_ON_WINDOWS)
    row = row_of(console)
    row.last_active_at = utcnow() - timedelta(minutes=31)
    db.session.commit()
    console.client.environ_base["HTTP_USER_AGENT"] = CHROME_ON_WINDOWS.replace("Chrome/131", "Chrome/132")
    assert not is_signed_in(console)
    db.session.expire_all()
    assert db.session.get(ConsoleSession, row.id).end_reason == "idle" and records("auth.logout") == []
    [entry] = records("auth.timeout")
    assert (entry.actor, entry.target, entry.detail["reason"], entry.detail["minutes"]) == (
        "alice", "alice", "idle", 30)


def test_a_copied_cookie_replayed_with_a_forged_x_forwarded_for_is_refused(app, make_user):
    """Session protection keys on the address the console sees, not on the first X-Forwarded-For entry, which
    any client writes: a cookie copied from 10.0.0.1 and sent from 10.9.9.9 naming 10.0.0.1 there is refused,
    and its sign-in ends (as for any other change of address)."""
    make_user("alice")
    victim = app.test_client()
    victim.environ_base.update(REMOTE_ADDR="10.0.0.1", HTTP_USER_AGENT=CHROME_ON_WINDOWS)
    console = Console(victim)
    assert console.login("alice").status_code == 302 and is_signed_in(console)
    row_id = row_of(console).id
    replay = app.test_client()
    replay.environ_base.update(REMOTE_ADDR="10.9.9.9", HTTP_USER_AGENT=CHROME_ON_WINDOWS,
                               HTTP_X_FORWARDED_FOR="10.0.0.1")
    replay.set_cookie("session", session_cookie(console))
    assert not is_signed_in(Console(replay))
    db.session.expire_all()
    assert db.session.get(ConsoleSession, row_id).end_reason == "logout"
    assert not is_signed_in(console)


@pytest.mark.parametrize("user_agent", [CHROME_ON_WINDOWS, "浏览器/1.0", None])
def test_a_direct_client_s_session_identifier_is_flask_login_s_so_an_upgrade_signs_nobody_out(app, user_agent):
    """Sessions opened before the identifier keyed on the console's address carry Flask-Login's identifier: for a
    client no X-Forwarded-For speaks for, ours must be the same text hashed, or every admin signed in at the
    upgrade was sent to sign in again, each with an auth.logout record nobody made."""
    from flask_login.utils import _create_identifier

    from app.auth import session_identifier

    headers = {} if user_agent is None else {"User-Agent": user_agent}
    with app.test_request_context("/", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"}):
        assert session_identifier() == _create_identifier()


def test_session_protection_behind_a_trusted_proxy_keys_on_the_address_the_proxy_saw(app, make_user):
    """With MPIM_TRUSTED_PROXIES=1 the client's address is the entry the proxy appended: a browser keeps its
    sign-in, and a copy of its cookie sent through the proxy from elsewhere, with the browser's address written
    in front, is refused."""
    from app import create_app

    make_user("alice")
    proxied_app = create_app({**app.config, "MPIM_TRUSTED_PROXIES": 1})
    try:
        browser = proxied_app.test_client()
        browser.environ_base.update(HTTP_USER_AGENT=CHROME_ON_WINDOWS, HTTP_X_FORWARDED_FOR="203.0.113.7")
        console = Console(browser)
        assert console.login("alice").status_code == 302
        assert is_signed_in(console) and is_signed_in(console)
        replay = proxied_app.test_client()
        replay.environ_base.update(HTTP_USER_AGENT=CHROME_ON_WINDOWS,
                                   HTTP_X_FORWARDED_FOR="203.0.113.7, 198.51.100.9")
        replay.set_cookie("session", session_cookie(console))
        assert not is_signed_in(Console(replay))
        assert not is_signed_in(console)
    finally:
        with proxied_app.app_context():
            db.engine.dispose()


def test_a_port_the_proxy_writes_after_the_address_does_not_sign_the_browser_out(app, make_user):
    """A proxy that writes the client's port into X-Forwarded-For gives each new connection another: the session
    was keyed on address and port, so the browser was signed out at its next connection (review of this stop's
    diff). The address alone is compared; another address is still refused."""
    from app import create_app

    make_user("alice")
    proxied_app = create_app({**app.config, "MPIM_TRUSTED_PROXIES": 1})
    try:
        browser = proxied_app.test_client()
        browser.environ_base.update(HTTP_USER_AGENT=CHROME_ON_WINDOWS, HTTP_X_FORWARDED_FOR="203.0.113.7:40000")
        console = Console(browser)
        assert console.login("alice").status_code == 302
        browser.environ_base.update(HTTP_X_FORWARDED_FOR="203.0.113.7:40001")
        assert is_signed_in(console)
        browser.environ_base.update(HTTP_X_FORWARDED_FOR="198.51.100.9:40001")
        assert not is_signed_in(console)
    finally:
        with proxied_app.app_context():
            db.engine.dispose()
