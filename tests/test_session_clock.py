"""Console sessions end after MPIM_IDLE_MINUTES without activity and MPIM_SESSION_MINUTES after sign-in
(app/auth/idle.py), decided from the session's row on the server; nothing typed is lost to it, and every
such end is audited, at the holder's next request or by the scheduler's job when nobody comes back."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

from sqlalchemy import select

from app.audit.models import AuditRecord
from app.auth import console_sessions, idle
from app.auth.models import ConsoleSession
from app.database import utcnow
from app.extensions import db
from app.scheduler import registry
from app.scheduler.runner import run_job
from tests.conftest import PASSWORD, Console, csrf_token
from tests.test_console_sessions import racing


def signed_in(app, make_user, username="minister", role="ministry_admin", scopes=()) -> Console:
    make_user(username, role, scopes)
    console = Console(app.test_client())
    assert console.login(username).status_code == 302
    return console


def session_row(console: Console) -> ConsoleSession:
    """The server's row of the console's sign-in, read afresh."""
    with console.client.session_transaction() as session:
        token = session[idle.TOKEN]
    db.session.expire_all()
    return console_sessions.find(token)


def set_clocks(console: Console, *, active_ago: int | None = None, signed_in_ago: int | None = None) -> None:
    """A session last active `active_ago` seconds ago: its row on the server says so (the cookie says nothing
    of time)."""
    row, now = session_row(console), utcnow()
    if active_ago is not None:
        row.last_active_at = now - timedelta(seconds=active_ago)
    if signed_in_ago is not None:
        row.signed_in_at = now - timedelta(seconds=signed_in_ago)
    db.session.commit()


def clocks(console: Console) -> tuple[int, int]:
    row = session_row(console)
    return int(row.last_active_at.timestamp()), int(row.signed_in_at.timestamp())


def timeouts() -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == "auth.timeout")))


def test_thirty_idle_minutes_sign_the_user_out_and_say_why(app, make_user):
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=31 * 60)
    response = console.client.get("/nodes/?status=active")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/nodes/?status%3Dactive"
    page = console.client.get(response.headers["Location"]).get_data(as_text=True)
    assert "30 分钟无操作" in page
    assert console.client.get("/").status_code == 302  # signed out, not just turned away once
    [entry] = timeouts()
    assert entry.target == "minister" and entry.detail["reason"] == "idle" and entry.detail["minutes"] == 30


def test_the_timeout_record_says_when_the_user_was_last_active_as_a_time_a_reader_can_read(app, make_user):
    """The audit page and its CSV show the detail as recorded: seconds since 1970 (1796186260) told an
    auditor nothing; the moment is recorded as the other records' times are (UTC, ISO 8601)."""
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=31 * 60)
    last_active = session_row(console).last_active_at
    console.client.get("/")
    [entry] = timeouts()
    assert datetime.fromisoformat(entry.detail["last_active"]) == last_active.replace(microsecond=0)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", entry.detail["last_active"])  # as token.create's


def test_activity_inside_the_limit_keeps_the_session_and_restarts_the_idle_clock(app, make_user):
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=29 * 60)
    assert console.client.get("/nodes/").status_code == 200
    active_at, _ = clocks(console)
    assert int(time.time()) - active_at < 60
    assert timeouts() == []


def test_asking_how_long_is_left_is_no_activity(app, make_user):
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=10 * 60)
    before, _ = clocks(console)
    status = console.client.get("/session/status", headers={"Accept": "application/json"}).get_json()
    assert 19 * 60 <= status["seconds_left"] <= 20 * 60 and status["renewable"] is True
    assert clocks(console)[0] == before


def test_the_warnings_button_counts_as_activity(app, make_user):
    console = signed_in(app, make_user)
    token = csrf_token(console.client.get("/nodes/").get_data(as_text=True))  # every page's sign-out form has one
    set_clocks(console, active_ago=29 * 60)
    response = console.client.post("/session/keepalive", headers={"X-CSRFToken": token,
                                                                 "Accept": "application/json"})
    assert response.status_code == 200 and response.get_json()["seconds_left"] >= 29 * 60


def test_the_keepalive_needs_the_csrf_token(app, make_user):
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=29 * 60)
    response = console.client.post("/session/keepalive", headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert int(time.time()) - clocks(console)[0] >= 29 * 60 - 5


def test_after_the_limit_the_script_hears_signed_out_as_json(app, make_user):
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=31 * 60)
    response = console.client.get("/session/status", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "signed_out" and response.get_json()["seconds_left"] == 0
    assert len(timeouts()) == 1
    # The page's link to sign in again (or a reload) then says why the session ended, not just "sign in".
    assert "30 分钟无操作" in console.client.get("/login").get_data(as_text=True)


def test_eight_hours_after_sign_in_the_session_ends_however_active(app, make_user):
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=5, signed_in_ago=8 * 3600 + 60)
    response = console.client.get("/nodes/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert "登录已满 8 小时" in console.client.get("/login").get_data(as_text=True)
    [entry] = timeouts()
    assert entry.detail["reason"] == "session_limit"


def test_near_the_absolute_limit_the_status_says_it_cannot_be_extended(app, make_user):
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=0, signed_in_ago=8 * 3600 - 60)
    status = console.client.get("/session/status", headers={"Accept": "application/json"}).get_json()
    assert status["seconds_left"] <= 60 and status["renewable"] is False


def test_a_form_sent_after_the_limit_from_a_page_with_a_broken_referer_asks_to_sign_in_again(app, make_user):
    """urlsplit raises ValueError on a stray bracket in the Referer's host: the sign-out answered 500."""
    console = signed_in(app, make_user, "jx-admin", "provincial_admin", ("360000",))
    token = csrf_token(console.client.get("/tokens/").get_data(as_text=True))
    set_clocks(console, active_ago=31 * 60)
    form = {"division_code": "360000", "ttl": "7d", "note": "赣警通", "csrf_token": token}
    response = console.client.post("/tokens/", data=form, headers={"Referer": "http://[x]/tokens/"})
    assert response.status_code == 302 and response.headers["Location"] == "/login"


def test_a_form_sent_after_the_limit_does_nothing_and_can_be_sent_again_after_signing_in(app, make_user):
    from app.admission.models import EnrollmentToken

    console = signed_in(app, make_user, "jx-admin", "provincial_admin", ("360000",))
    token = csrf_token(console.client.get("/tokens/").get_data(as_text=True))
    set_clocks(console, active_ago=31 * 60)
    form = {"division_code": "360000", "ttl": "7d", "note": "赣警通", "csrf_token": token}
    response = console.client.post("/tokens/", data=form, headers={"Referer": "http://localhost/tokens/"})
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/tokens/"
    assert db.session.scalar(select(db.func.count()).select_from(EnrollmentToken)) == 0
    assert console.login("jx-admin").status_code == 302
    assert console.client.post("/tokens/", data=form).status_code == 200  # the same page's form, as typed
    assert db.session.scalar(select(db.func.count()).select_from(EnrollmentToken)) == 1


def test_a_form_sent_after_the_limit_from_a_refused_forms_page_brings_back_that_page(app, make_user):
    """A refused form's page is shown at the form's own address, which answers POST only: signing in again
    comes back to the page itself, not to a 405 there."""
    from tests.test_i18n import _admitted_node

    console = signed_in(app, make_user)
    _, node = _admitted_node(make_user)
    page, action = f"/nodes/{node.node_id}", f"/nodes/{node.node_id}/suspend"
    token = csrf_token(console.client.get(page).get_data(as_text=True))
    assert console.client.post(action, data={"reason": "", "csrf_token": token}).status_code == 422
    set_clocks(console, active_ago=31 * 60)
    form = {"reason": "maintenance", "csrf_token": token}
    response = console.client.post(action, data=form, headers={"Referer": f"http://localhost{action}"})
    assert response.status_code == 302 and response.headers["Location"] == f"/login?next={page}"


def test_no_idle_limit_when_it_is_set_to_zero(app, make_user):
    app.config["MPIM_IDLE_SECONDS"] = 0
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=5 * 3600)
    assert console.client.get("/nodes/").status_code == 200


def test_a_cookie_from_before_sessions_were_held_on_the_server_signs_nobody_in(app, make_user):
    """Such a cookie carries the user id (then with the password's time) and the clocks, but no token: its
    holder signs in once more, rather than staying in with nothing on the server to end it."""
    console = signed_in(app, make_user)
    user_id = session_row(console).user_id
    with console.client.session_transaction() as session:
        del session[idle.TOKEN]
        session["_user_id"] = f"{user_id}:{int(time.time())}"
        session["active_at"] = session["signed_in_at"] = int(time.time())
    response = console.client.get("/nodes/")
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/nodes/"
    assert console.client.get("/").status_code == 302
    assert console.login("minister").status_code == 302 and console.client.get("/nodes/").status_code == 200


def test_the_api_never_carries_a_console_session(app, make_user):
    """The API neither counts as console activity nor ends a session: a browser signed in to the console
    that also asks the API gets no Set-Cookie there, and its clocks stay as they were."""
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=31 * 60)
    before = clocks(console)
    response = console.client.get("/api/v1/divisions/360000")
    assert response.status_code == 200 and "Set-Cookie" not in response.headers
    assert clocks(console) == before and timeouts() == []



def on_the_tokens_page(page, live_server, make_user) -> None:
    """A provincial admin signed in, on the page of a form with text fields (the enrollment tokens')."""
    make_user("jx-admin", "provincial_admin", ("360000",))
    page.goto(f"{live_server}/login?next=/tokens/")
    page.fill("input[name=username]", "jx-admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("input[name=note]")


def test_the_page_warns_lets_the_user_stay_and_after_the_end_keeps_the_typed_form(app, page, live_server,
                                                                                  make_user):
    """Idle limit shortened to 6 s (the warning comes at 3 s left); every wait is for something on the page."""
    from app.admission.models import EnrollmentToken

    app.config["MPIM_IDLE_SECONDS"] = 6
    on_the_tokens_page(page, live_server, make_user)
    page.fill("input[name=division_code]", "360000")
    page.fill("input[name=note]", "赣警通 夜班")

    send = "form:has(input[name=note]) button[type=submit]"
    page.focus(send)  # a reader on the page, not in a field
    page.wait_for_selector(".session-soon", state="visible", timeout=30000)
    assert page.locator("#session-clock").get_attribute("role") == "alert"
    # The warning takes the focus, so its button is one key away (it was some 20 Tabs), and while it is shown a
    # field focused near the bottom scrolls clear of it rather than under it (WCAG 2.4.11).
    assert page.evaluate("document.activeElement.textContent") == "保持登录"
    height = page.evaluate("document.getElementById('session-clock').offsetHeight")
    padding = page.evaluate("getComputedStyle(document.documentElement).scrollPaddingBottom")
    assert padding == f"{height + 16}px", (padding, height)
    page.keyboard.press("Enter")
    page.wait_for_selector("#session-clock", state="hidden")  # the server counted the press as activity
    assert page.evaluate(f"document.activeElement === document.querySelector({send!r})")  # back where it was
    assert page.evaluate("getComputedStyle(document.documentElement).scrollPaddingBottom") == "auto"

    page.wait_for_selector(".session-ended", state="visible", timeout=30000)
    assert db.session.scalar(select(db.func.count()).select_from(AuditRecord).where(
        AuditRecord.action == "auth.timeout")) == 1
    with page.context.expect_page() as opened:
        page.click("text=在新标签页中重新登录")
    again = opened.value
    again.fill("input[name=username]", "jx-admin")
    again.fill("input[name=password]", PASSWORD)
    again.click("button[type=submit]")
    again.wait_for_selector("h1")
    again.close()

    assert page.input_value("input[name=note]") == "赣警通 夜班"
    page.click("form:has(input[name=note]) button[type=submit]")
    page.wait_for_selector("#issued-token")
    assert db.session.scalar(select(EnrollmentToken.note)) == "赣警通 夜班"


def test_keys_typed_as_the_warning_comes_stay_in_the_field_and_keep_the_session(app, page, live_server, make_user):
    """The warning took the focus to its Stay button even from someone typing: their next keys went to the button,
    and a space pressed it. Keys typed into a field count as activity instead, and the focus stays in the field."""
    app.config["MPIM_IDLE_SECONDS"] = 6
    on_the_tokens_page(page, live_server, make_user)
    page.focus("input[name=note]")
    typed = "night shift handover notes "
    # 81 keys, one every 100 ms: typed over longer than the 6 s idle limit, across the warning due at 3 s.
    page.keyboard.type(typed * 3, delay=100)
    assert page.input_value("input[name=note]") == typed * 3
    assert page.evaluate("document.activeElement.name") == "note"
    assert page.locator("#session-clock").is_hidden()
    assert db.session.scalar(select(db.func.count()).select_from(AuditRecord).where(
        AuditRecord.action == "auth.timeout")) == 0
    page.reload()  # the session is alive: the page opens, not the sign-in page
    page.wait_for_selector("input[name=note]")


def test_a_warning_that_comes_while_someone_pauses_in_a_field_leaves_the_focus_there(app, page, live_server,
                                                                                     make_user):
    """Someone who stopped typing to think as the warning came lost their next keys to its Stay button (" h" of
    " handover notes"). From a field the warning takes no focus, and the next key typed there counts as Stay."""
    app.config["MPIM_IDLE_SECONDS"] = 16  # the warning is due 8 s after the page opens
    on_the_tokens_page(page, live_server, make_user)
    page.focus("input[name=note]")
    page.keyboard.type("night shift", delay=50)
    page.wait_for_selector(".session-soon", state="visible", timeout=30000)  # more than 5 s after the last key
    assert page.evaluate("document.activeElement.name") == "note"
    page.keyboard.type(" handover notes", delay=100)
    assert page.input_value("input[name=note]") == "night shift handover notes"
    page.wait_for_selector("#session-clock", state="hidden")  # the keys counted as activity
    # Stay clicked with the mouse from the field gives the focus back to it, where the next keys go.
    page.wait_for_selector(".session-soon", state="visible", timeout=30000)
    page.click(".session-stay")
    page.wait_for_selector("#session-clock", state="hidden")
    page.keyboard.type(" done", delay=50)
    assert page.input_value("input[name=note]") == "night shift handover notes done"
    assert db.session.scalar(select(db.func.count()).select_from(AuditRecord).where(
        AuditRecord.action == "auth.timeout")) == 0


def test_activity_is_written_once_a_minute_not_on_every_response(app, make_user):
    """Activity is the row's to keep, written about once a minute (not on every request); the cookie is not
    written at all, so a response in flight at sign-out has nothing new to write back."""
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=10)
    before = clocks(console)[0]
    response = console.client.get("/nodes/")
    assert response.status_code == 200 and "Set-Cookie" not in response.headers
    assert clocks(console)[0] == before
    set_clocks(console, active_ago=61)
    response = console.client.get("/nodes/")
    assert "Set-Cookie" not in response.headers and int(time.time()) - clocks(console)[0] < 5


def another_sign_in(app, username="minister") -> Console:
    console = Console(app.test_client())
    assert console.login(username).status_code == 302
    return console


def run_expire_job():
    """The job as the scheduler runs it: from the registry, through the runner, which records the run."""
    run = run_job(next(job for job in registry.jobs if job.name == "auth.expire_sessions"), "test")
    assert run.ok, run.message
    db.session.expire_all()
    return run


def test_the_scheduler_ends_sessions_nobody_came_back_to_with_the_record_their_request_would_write(app, make_user):
    """A closed tab or a lost laptop sends no request after the limit: the job ends the session, with the
    auth.timeout record the holder's next request would have written (its actor the scheduler, which did it),
    once; a live session and one already ended are left as they were, and a holder who comes back after all is
    told why they were signed out."""
    idle_one = signed_in(app, make_user)
    long_one, live_one, gone_one = another_sign_in(app), another_sign_in(app), another_sign_in(app)
    set_clocks(idle_one, active_ago=31 * 60)
    set_clocks(long_one, active_ago=5, signed_in_ago=8 * 3600 + 60)
    set_clocks(gone_one, active_ago=31 * 60)
    gone = session_row(gone_one)
    gone.ended_at, gone.end_reason = utcnow() - timedelta(minutes=1), "logout"
    db.session.commit()
    gone_ended_at = gone.ended_at
    idle_row, long_row, live_row = session_row(idle_one), session_row(long_one), session_row(live_one)

    assert run_expire_job().message.startswith("ended 2 past a limit")
    assert [(entry.actor, entry.target, entry.detail) for entry in timeouts()] == [
        ("scheduler", "minister", {"reason": "idle", "minutes": 30,
                                   "last_active": str(idle_row.last_active_at.replace(microsecond=0))}),
        ("scheduler", "minister", {"reason": "session_limit", "minutes": 480,
                                   "last_active": str(long_row.last_active_at.replace(microsecond=0))})]
    assert [(row.end_reason, row.ended_at is not None) for row in (idle_row, long_row, live_row)] == [
        ("idle", True), ("session_limit", True), (None, False)]
    gone = db.session.get(ConsoleSession, gone.id)
    assert (gone.end_reason, gone.ended_at) == ("logout", gone_ended_at)

    assert run_expire_job().message.startswith("ended 0 past a limit") and len(timeouts()) == 2
    response = idle_one.client.get("/nodes/")
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/nodes/"
    assert "30 分钟无操作" in idle_one.client.get("/login").get_data(as_text=True)
    assert long_one.client.get("/nodes/").status_code == 302
    assert "登录已满 8 小时" in long_one.client.get("/login").get_data(as_text=True)
    assert live_one.client.get("/nodes/").status_code == 200 and len(timeouts()) == 2


def test_without_an_idle_limit_the_scheduler_ends_only_sessions_past_the_absolute_one(app, make_user):
    app.config["MPIM_IDLE_SECONDS"] = 0
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=5 * 3600)
    assert run_expire_job().message.startswith("ended 0 past a limit") and timeouts() == []
    set_clocks(console, signed_in_ago=8 * 3600 + 60)
    run_expire_job()
    assert [entry.detail["reason"] for entry in timeouts()] == ["session_limit"]


def test_a_request_that_ends_the_session_while_the_scheduler_does_leaves_the_scheduler_nothing_to_record(
        app, make_user):
    """Both read the row live and past the limit; the request's end reaches the database first."""
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=31 * 60)
    with racing(lambda: console.client.get("/nodes/")) as ran:
        run = run_expire_job()
    assert ran and ran[0].status_code == 302 and run.message.startswith("ended 0 past a limit")
    assert [(entry.actor, entry.detail["reason"]) for entry in timeouts()] == [("minister", "idle")]


def test_the_scheduler_ending_the_session_while_a_request_does_leaves_the_request_nothing_to_record(
        app, make_user):
    """The other way round: the job's end reaches the database first; the request only signs out, and says why."""
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=31 * 60)

    def job_elsewhere():
        with app.app_context():  # the scheduler process: its own session and connection
            return run_expire_job().message

    with racing(job_elsewhere) as ran:
        response = console.client.get("/nodes/")
    assert ran and ran[0].startswith("ended 1 past a limit")
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/nodes/"
    assert "30 分钟无操作" in console.client.get("/login").get_data(as_text=True)
    assert [(entry.actor, entry.detail["reason"]) for entry in timeouts()] == [("scheduler", "idle")]


def test_a_session_active_again_before_the_scheduler_ends_it_stays_live(app, make_user):
    """The job read the row past the idle limit; its holder's request, a moment inside the limit by its own
    clock, noted activity and committed before the job's end reached the database: the session is live, and no
    auth.timeout says it idled out after that activity."""
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=31 * 60)

    def activity_elsewhere():
        with app.app_context():  # the web worker: its own session and connection
            set_clocks(console, active_ago=0)

    with racing(activity_elsewhere) as ran:
        run = run_expire_job()
    assert ran and run.message.startswith("ended 0 past a limit"), run.message
    assert timeouts() == [] and session_row(console).ended_at is None
    assert console.client.get("/nodes/").status_code == 200


def test_ending_every_session_of_a_user_ends_one_past_a_limit_even_if_it_was_active_again_meanwhile(
        app, make_user, runner):
    """Only the job leaves a session that came back inside the limit: an end of all sessions (an administrator,
    a password change, the account disabled) ends it whatever its clock says."""
    console = signed_in(app, make_user)
    set_clocks(console, active_ago=31 * 60)

    def activity_elsewhere():
        with app.app_context():
            set_clocks(console, active_ago=0)

    with racing(activity_elsewhere) as ran:
        result = runner.invoke(args=["users", "end-sessions", "minister"])
    assert ran and result.exit_code == 0, result.output
    assert session_row(console).ended_at is not None
    assert console.client.get("/nodes/").status_code == 302
