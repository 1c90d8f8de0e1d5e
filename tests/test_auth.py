"""Users, roles, sign-in throttling, CSRF and scope."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select
from werkzeug.security import check_password_hash

from app.audit.models import AuditRecord
from app.auth import service
from app.auth.models import LoginThrottle, PasswordHistory, User
from app.errors import PermissionDenied, ValidationFailed
from app.extensions import db
from tests.conftest import PASSWORD, Console, csrf_token


def actions() -> list[str]:
    return list(db.session.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))


def test_login_and_logout(console, make_user):
    make_user("alice")
    response = console.login("alice")
    assert response.status_code == 302
    assert "仪表盘" in console.client.get("/").get_data(as_text=True)
    token = csrf_token(console.client.get("/").get_data(as_text=True))
    console.client.post("/logout", data={"csrf_token": token})
    assert console.client.get("/").status_code == 302
    assert actions()[-2:] == ["auth.login", "auth.logout"]


def test_a_cookie_copied_before_sign_out_is_refused_after_it(app, console, make_user):
    """Sign-out ends the session on the server (app/auth/console_sessions.py): the cookie is dead wherever it
    went, and also when a response still in flight at sign-out writes it back."""
    make_user("alice")
    console.login("alice")
    copied = console.client.get_cookie("session").value
    elsewhere = app.test_client()  # the test client sends its own cookies, not a Cookie header given to it
    elsewhere.set_cookie("session", copied)
    assert elsewhere.get("/nodes/").status_code == 200
    token = csrf_token(console.client.get("/").get_data(as_text=True))
    console.client.post("/logout", data={"csrf_token": token})
    response = elsewhere.get("/nodes/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    console.client.set_cookie("session", copied)
    assert console.client.get("/nodes/").status_code == 302
    with console.client.session_transaction() as session:
        assert "_user_id" not in session  # refused, and the browser told to forget it


def test_wrong_password_is_refused_and_audited(console, make_user):
    make_user("alice")
    response = console.login("alice", "Wrong-Password-1")
    assert response.status_code == 401
    assert "用户名或密码错误" in response.get_data(as_text=True)
    assert actions()[-1] == "auth.login_failed"


@pytest.mark.parametrize("typed", ["mini\x00ster", "mini\u202eretsin"])
def test_a_username_with_a_nul_or_a_bidi_control_is_a_failed_sign_in_audited_escaped(console, make_user, typed):
    """PostgreSQL refuses NUL in the throttle's key and the audit record: that sign-in answered 500."""
    make_user("minister")
    response = console.login(typed)
    assert response.status_code == 401 and "用户名或密码错误" in response.get_data(as_text=True)
    record = db.session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
    assert (record.action, record.target) == ("auth.login_failed", typed.encode("unicode_escape").decode())


@pytest.mark.parametrize("typed", ["\x01" * 64, "张" * 63 + "\x00"])
def test_a_long_username_with_control_characters_is_a_failed_sign_in_not_a_500(console, make_user, typed):
    """The form takes 64 characters; escaped, each control character is four and each other one past ASCII six,
    past the audit record's actor (120) and the throttle's key (200): PostgreSQL refused the record, a 500."""
    make_user("minister")
    response = console.login(typed)
    assert response.status_code == 401 and "用户名或密码错误" in response.get_data(as_text=True)
    record = db.session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
    escaped = typed[:8].encode("unicode_escape").decode()
    assert record.action == "auth.login_failed" and record.target.startswith(escaped)
    assert len(record.actor) <= 120 and len(record.target) <= 200


def test_repeated_failures_lock_the_account_even_for_the_right_password(app, console, make_user):
    make_user("alice")
    for _ in range(app.config["MPIM_LOGIN_MAX_FAILURES"]):
        console.login("alice", "Wrong-Password-1")
    assert service.is_locked("alice")
    response = console.login("alice")
    assert response.status_code == 401 and "锁定" in response.get_data(as_text=True)
    # One account's failures do not lock everyone else behind the same address (a proxy, an office).
    make_user("bob")
    assert Console(app.test_client()).login("bob").status_code == 302
    service.unlock("alice")
    db.session.commit()
    assert console.login("alice").status_code == 302


def lock_the_address(app, console) -> None:
    for index in range(app.config["MPIM_LOGIN_MAX_ADDRESS_FAILURES"]):
        console.login(f"ghost{index}", "whatever-Wrong-1")


def test_address_lock_covers_unknown_usernames(app, console, make_user):
    make_user("carol")
    lock_the_address(app, console)
    assert console.login("carol").status_code == 401
    assert [address for address, _until in service.locked_addresses()] == ["127.0.0.1"]


def sign_in_from(app, address: str, username: str, password: str = PASSWORD):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return Console(client).login(username, password)


def test_an_ipv6_address_lock_covers_its_whole_64(app, make_user, runner):
    """A client with a /64 has 2**64 addresses: counted one by one, its guesses never locked anything."""
    make_user("carol")
    for index in range(app.config["MPIM_LOGIN_MAX_ADDRESS_FAILURES"]):
        sign_in_from(app, f"2001:db8:1:1::{index + 1:x}", f"ghost{index}", "whatever-Wrong-1")
    refused = sign_in_from(app, "2001:db8:1:1:ffff:ffff:ffff:ffff", "carol")
    assert refused.status_code == 401 and "锁定" in refused.get_data(as_text=True)
    assert sign_in_from(app, "2001:db8:1:2::1", "carol").status_code == 302  # the next /64 is another client
    assert [address for address, _until in service.locked_addresses()] == ["2001:db8:1:1::/64"]

    admin = Console(app.test_client())
    assert admin.login("carol").status_code == 302
    assert "<code>2001:db8:1:1::/64</code>" in admin.client.get("/users/").get_data(as_text=True)
    result = runner.invoke(args=["users", "clear-address-locks"])
    assert result.exit_code == 0 and "2001:db8:1:1::/64" in result.output
    assert service.locked_addresses() == []
    assert sign_in_from(app, "2001:db8:1:1::1", "carol").status_code == 302


def test_an_ipv4_mapped_ipv6_address_counts_as_its_ipv4_address(app, make_user):
    """A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d: the same client, the same count."""
    make_user("carol")
    limit = app.config["MPIM_LOGIN_MAX_ADDRESS_FAILURES"]
    for index in range(limit):
        address = "::ffff:10.0.0.7" if index % 2 else "10.0.0.7"
        sign_in_from(app, address, f"ghost{index}", "whatever-Wrong-1")
    assert sign_in_from(app, "::ffff:10.0.0.7", "carol").status_code == 401
    assert sign_in_from(app, "10.0.0.7", "carol").status_code == 401
    assert [address for address, _until in service.locked_addresses()] == ["10.0.0.7"]
    assert sign_in_from(app, "::ffff:10.0.0.8", "carol").status_code == 302


def test_a_port_after_the_address_counts_as_the_address(app, make_user):
    """A proxy that writes the client's port into X-Forwarded-For (a.b.c.d:port) made each connection a counter
    of its own: 25 guesses from one client never locked its address (auth review)."""
    make_user("carol")
    limit = app.config["MPIM_LOGIN_MAX_ADDRESS_FAILURES"]
    for index in range(limit):
        sign_in_from(app, f"10.4.4.4:{40000 + index}", f"ghost{index}", "whatever-Wrong-1")
        sign_in_from(app, f"[2001:db8:1:1::{index + 1:x}]:443", f"ghost{index}", "whatever-Wrong-1")
    assert sign_in_from(app, "10.4.4.4:50000", "carol").status_code == 401
    assert sign_in_from(app, "2001:db8:1:1::99", "carol").status_code == 401
    assert sorted(address for address, _until in service.locked_addresses()) == ["10.4.4.4", "2001:db8:1:1::/64"]
    assert sign_in_from(app, "10.4.4.5:40000", "carol").status_code == 302


def test_unlocking_an_account_also_clears_the_address_locks_that_would_refuse_it(app, console, make_user):
    make_user("carol")
    lock_the_address(app, console)
    assert service.unlock("carol") == ["127.0.0.1"]
    db.session.commit()
    assert console.login("carol").status_code == 302
    assert db.session.scalars(select(AuditRecord.detail).where(AuditRecord.action == "auth.unlock")).one() == \
        {"addresses": ["127.0.0.1"]}


@pytest.mark.parametrize("unsafe", ["/%0d%0a", "/nodes/%0d%0aSet-Cookie:%20x=1", "/nodes/%1b", "//evil.example/",
                                    "https://evil.example/nodes/"])
def test_a_next_address_with_a_line_break_or_another_host_leads_to_the_dashboard_after_sign_in(app, make_user,
                                                                                               unsafe):
    """Werkzeug refuses a Location header with a line break: the sign-in, done and audited, answered 500."""
    make_user("alice")
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post(f"/login?next={unsafe}", data={"username": "alice", "password": PASSWORD,
                                                          "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/").status_code == 200


def test_a_next_address_with_a_line_break_leads_to_the_dashboard_after_a_password_change(app, make_user):
    make_user("alice")
    console = Console(app.test_client())
    console.login("alice")
    token = csrf_token(console.client.get("/account/password").get_data(as_text=True))
    response = console.client.post("/account/password?next=/%0d%0a", data={
        "current_password": PASSWORD, "new_password": "New-Secret-42", "confirm": "New-Secret-42",
        "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert "密码已修改" in console.client.get("/").get_data(as_text=True)


BROKEN_HOSTS = ["//[x]", "//x]", "http://[::1", "http://[x]/nodes/"]


@pytest.mark.parametrize("broken", BROKEN_HOSTS)
def test_a_next_address_with_a_broken_host_leads_to_the_dashboard_after_sign_in(app, make_user, broken):
    """urlsplit raises ValueError on an unclosed or stray bracket in the host: the sign-in, done and audited,
    answered 500."""
    make_user("alice")
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post("/login", query_string={"next": broken},
                           data={"username": "alice", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("broken", BROKEN_HOSTS)
def test_a_next_address_with_a_broken_host_leads_to_the_dashboard_after_a_password_change(app, make_user, broken):
    make_user("alice")
    console = Console(app.test_client())
    console.login("alice")
    token = csrf_token(console.client.get("/account/password").get_data(as_text=True))
    response = console.client.post("/account/password", query_string={"next": broken}, data={
        "current_password": PASSWORD, "new_password": "New-Secret-42", "confirm": "New-Secret-42",
        "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/"


@pytest.mark.parametrize("elsewhere", ["/api/v1/resolve?division=360000", "/healthz", "/static/css/console.css",
                                       "/ca/crl.pem", "/session/status", "/api/v1/divisions/360000",
                                       "/applications/x/probe"])
def test_a_next_address_outside_the_console_pages_leads_to_the_dashboard_after_sign_in(app, make_user, elsewhere):
    """`next` names the console page to come back to: the API, the CA's files, static files, the health check
    and the JSON the pages' scripts ask for are no such page, though they are of this host."""
    make_user("alice")
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post("/login", query_string={"next": elsewhere},
                           data={"username": "alice", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_a_safe_next_address_is_kept_with_its_query(app, make_user):
    make_user("alice")
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post("/login?next=/nodes/%3Fstatus%3Dactive", data={"username": "alice", "password": PASSWORD,
                                                                          "csrf_token": token})
    assert response.headers["Location"] == "/nodes/?status=active"


def test_a_page_drawn_in_the_sign_in_request_itself_has_its_session_clock(app, make_user):
    """An error page drawn in the request that signed in (after `login_user`) read the session clock of a
    session the request did not know yet: the error page itself failed, a bare 500."""
    from flask_login import login_user

    from app.auth import idle

    user = make_user("alice")
    with app.test_request_context("/login", method="POST"):
        login_user(user)
        idle.start(user)
        assert idle.seconds_left()["seconds_left"] > 0


def test_attempts_refused_while_an_address_is_locked_are_one_audit_record_and_a_count(app, make_user):
    """Each further POST /login from a locked address (one CSRF token serves them all) wrote a permanent audit
    record under the audit chain's lock: 500 in 1.2 s, by someone who never signed in. Now the first refusal of
    each lock is recorded, and the others are counted on the lock, which the unlock's record carries."""
    make_user("carol")
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))

    def post(username: str):
        return client.post("/login", data={"username": username, "password": "Wrong-Guess-1", "csrf_token": token})

    for index in range(app.config["MPIM_LOGIN_MAX_ADDRESS_FAILURES"]):
        post(f"ghost{index}")
    before = len(actions())
    for index in range(30):
        assert post("carol" if index % 2 else f"other{index}").status_code == 401
    assert actions()[before:] == ["auth.login_blocked"]
    record = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "auth.login_blocked")).one()
    assert record.detail == {"reason": "locked", "keys": ["addr:127.0.0.1"]}
    db.session.expire_all()
    assert db.session.get(LoginThrottle, "addr:127.0.0.1").refused == 30

    service.unlock_addresses(actor="tests")
    db.session.commit()
    assert db.session.scalars(select(AuditRecord.detail).where(AuditRecord.action == "auth.unlock_addresses")).one() \
        == {"addresses": ["127.0.0.1"], "refused": {"addr:127.0.0.1": 30}}


def test_a_new_lock_of_the_same_address_is_recorded_again(app, make_user):
    from datetime import timedelta

    from app.database import utcnow

    console = Console(app.test_client())
    lock_the_address(app, console)
    console.login("ghost", "Wrong-Guess-1")
    row = db.session.get(LoginThrottle, "addr:127.0.0.1")
    row.locked_until = utcnow() - timedelta(seconds=1)  # the lock has run out
    db.session.commit()
    lock_the_address(app, console)
    console.login("ghost", "Wrong-Guess-1")
    console.login("ghost", "Wrong-Guess-1")
    assert actions().count("auth.login_blocked") == 2


def test_the_scheduler_deletes_sign_in_counters_whose_window_and_lock_have_run_out(app, make_user):
    """Every made-up username left a `user:NAME` row in login_throttles for good."""
    from datetime import timedelta

    from app.database import utcnow
    from app.scheduler import registry
    from app.scheduler.runner import run_job

    window = timedelta(minutes=app.config["MPIM_LOGIN_LOCK_MINUTES"])
    now = utcnow()
    db.session.add_all([
        LoginThrottle(key="user:made-up", failures=1, first_failure_at=now - window - timedelta(seconds=5)),
        LoginThrottle(key="addr:10.0.0.1", failures=0, locked_until=now - timedelta(seconds=5)),
        LoginThrottle(key="user:counting", failures=2, first_failure_at=now - timedelta(minutes=1)),
        LoginThrottle(key="addr:10.0.0.2", failures=0, locked_until=now + timedelta(minutes=5)),
    ])
    db.session.commit()
    run = run_job(next(job for job in registry.jobs if job.name == "auth.expire_sessions"), "test")
    assert run.message.endswith("deleted 2 spent sign-in counters")
    db.session.expire_all()
    assert set(db.session.scalars(select(LoginThrottle.key))) == {"user:counting", "addr:10.0.0.2"}


def test_a_right_password_clears_the_accounts_failures_but_not_the_addresss(app, make_user):
    """An insider's own sign-in cleared the address's count as well: 95 wrong guesses at other accounts from
    one address, none locked, with a limit of 20. The address's count now runs out with its window."""
    make_user("bob")
    console = Console(app.test_client())
    limit = app.config["MPIM_LOGIN_MAX_ADDRESS_FAILURES"]
    console.login("bob", "Wrong-Password-1")
    for index in range(limit - 2):
        console.login(f"victim{index}", "Spring-2026!x")
    assert console.login("bob").status_code == 302
    assert db.session.get(LoginThrottle, "user:bob") is None  # the account's own count is cleared
    assert Console(app.test_client()).login("victim-last", "Spring-2026!x").status_code == 401
    assert [address for address, _until in service.locked_addresses()] == ["127.0.0.1"]


def test_a_username_of_dots_only_is_refused_at_the_form_with_what_was_typed_kept(admin_console):
    """".." was taken: the users list then linked to /users/.., which every browser reads as the page above it,
    so the account could be neither edited, disabled nor unlocked from the console."""
    before = actions()
    response = admin_console.post_form("/users/new", {"username": "..", "display_name": "点点", "role": "auditor",
                                                      "password": "Correct-Horse-Battery-9"})
    page = response.get_data(as_text=True)
    assert response.status_code == 422 and 'id="username-error-1"' in page and 'value="点点"' in page
    assert "不能只有点号" in page
    assert db.session.scalar(select(User).where(User.username == "..")) is None and actions() == before


@pytest.mark.parametrize("username", ["new", "NEW", "address-locks"])
def test_a_username_that_is_a_page_of_the_users_list_is_refused_at_the_form(admin_console, username):
    """An account named "new" was created, but /users/new is the create form: it could be neither edited nor
    disabled from the console."""
    before = actions()
    response = admin_console.post_form("/users/new", {"username": username, "display_name": "新", "role": "auditor",
                                                      "password": "Correct-Horse-Battery-9"})
    page = response.get_data(as_text=True)
    assert response.status_code == 422 and 'id="username-error-1"' in page and 'value="新"' in page
    assert f"用户名“{username}”是控制台页面的路径，不能使用。" in page
    assert db.session.scalar(select(User).where(func.lower(User.username) == username.lower())) is None
    assert actions() == before


def test_every_fixed_page_under_users_is_a_reserved_username(app):
    """A page added under /users/ later is reserved with it, or this fails."""
    fixed = {rule.rule.split("/")[2] for rule in app.url_map.iter_rules()
             if rule.rule.startswith("/users/") and rule.rule.split("/")[2] and "<" not in rule.rule.split("/")[2]}
    assert fixed == {"new", "address-locks"} and fixed <= service.RESERVED_USERNAMES


def test_unlocking_an_account_that_is_not_locked_says_so_and_audits_nothing(app, admin_console, make_user, runner):
    """A second click (or a stale page) flashed "lock cleared" and wrote another auth.unlock record for an account
    nothing locked."""
    make_user("carol")
    before = actions()
    response = admin_console.post_form("/users/", {}, action="/users/carol/unlock")
    assert response.status_code == 302
    shown = admin_console.client.get(response.headers["Location"]).get_data(as_text=True)
    assert "carol 未被锁定" in shown and "已解除" not in shown
    result = runner.invoke(args=["users", "unlock", "carol"])
    assert result.exit_code == 1 and "not locked" in result.output
    admin_console.post_form("/users/", {}, action="/users/address-locks/clear")  # no address locked either
    assert actions() == before


def test_every_action_on_a_user_no_account_has_is_a_404_that_changes_and_audits_nothing(app, admin_console, runner):
    """Unlocking a username no account has flashed "lock cleared" and wrote an auth.unlock record for nobody."""
    lock_the_address(app, Console(app.test_client()))
    before = actions()
    for action, data in (("/users/ghost/unlock", {}), ("/users/ghost/password", {"reset-password": "Other-Horse-77"}),
                         ("/users/ghost/sessions/end", {}), ("/users/ghost", {"role": "auditor"})):
        response = admin_console.post_form("/users/", data, action=action)
        assert response.status_code == 404 and "ghost" in response.get_data(as_text=True), action
    result = runner.invoke(args=["users", "unlock", "ghost"])
    assert result.exit_code == 1 and "ghost" in result.output
    assert actions() == before
    assert [address for address, _until in service.locked_addresses()] == ["127.0.0.1"]


def test_users_page_lists_locked_addresses_and_clears_them_after_confirmation(app, console, make_user):
    make_user("root")
    lock_the_address(app, console)
    admin_client = app.test_client()
    admin_client.environ_base["REMOTE_ADDR"] = "10.0.0.9"  # an admin elsewhere
    admin = Console(admin_client)
    assert admin.login("root").status_code == 302
    page = admin_client.get("/users/").get_data(as_text=True)
    assert "127.0.0.1" in page and "清除地址锁定" in page

    response = admin.post_form("/users/", {}, action="/users/address-locks/clear")

    assert response.status_code == 302 and service.locked_addresses() == []
    assert actions()[-1] == "auth.unlock_addresses"
    assert console.login("root").status_code == 302


def test_users_page_names_twenty_locked_addresses_and_counts_the_rest(app, admin_console):
    """A guessing run from many addresses locks each of them: the users page listed every one in its banner,
    and the flash after clearing them named every one again."""
    from datetime import timedelta

    from app.auth.models import LoginThrottle
    from app.database import utcnow

    addresses = [f"10.1.0.{number}" for number in range(100, 125)]
    db.session.add_all(LoginThrottle(key=f"addr:{address}", failures=9, first_failure_at=utcnow(),
                                     locked_until=utcnow() + timedelta(minutes=15)) for address in addresses)
    db.session.commit()
    page = admin_console.client.get("/users/").get_data(as_text=True)
    assert sum(f"<code>{address}</code>" in page for address in addresses) == 20
    assert re.search(r'id="more-locked-addresses">另有 5 条<', page)

    response = admin_console.post_form("/users/", {}, action="/users/address-locks/clear")

    flash = re.search(r'class="flash success"[^>]*>([^<]*)<',
                      admin_console.client.get(response.headers["Location"]).get_data(as_text=True)).group(1)
    assert sum(address in flash for address in addresses) == 20 and "10.1.0.119 另有 5 条" in flash
    assert service.locked_addresses() == []
    assert db.session.scalars(select(AuditRecord.detail).where(
        AuditRecord.action == "auth.unlock_addresses")).one()["addresses"] == addresses


def login_addresses() -> list[str]:
    return list(db.session.scalars(select(AuditRecord.remote_addr).where(AuditRecord.action == "auth.login")
                                   .order_by(AuditRecord.seq)))


def test_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(app, make_user):
    from app import create_app

    make_user("alice")
    forged = app.test_client()
    forged.environ_base["HTTP_X_FORWARDED_FOR"] = "10.1.2.3"
    assert Console(forged).login("alice").status_code == 302
    proxied_app = create_app({**app.config, "MPIM_TRUSTED_PROXIES": 1})
    proxied = proxied_app.test_client()
    proxied.environ_base["HTTP_X_FORWARDED_FOR"] = "10.1.2.3"
    assert Console(proxied).login("alice").status_code == 302
    with proxied_app.app_context():
        db.engine.dispose()

    assert login_addresses() == ["127.0.0.1", "10.1.2.3"]


def test_sign_in_works_behind_a_proxy_that_rewrites_the_host(app, make_user):
    """nginx's plain `proxy_pass` sends its upstream's address as Host and the public name in
    X-Forwarded-Host; on HTTPS the form's Referer names the public host, and must match."""
    from app import create_app

    make_user("alice")
    headers = {"HTTP_HOST": "127.0.0.1:5620", "HTTP_X_FORWARDED_HOST": "registry.example.test",
               "HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_FORWARDED_FOR": "203.0.113.7",
               "HTTP_REFERER": "https://registry.example.test/login"}
    proxied_app = create_app({**app.config, "MPIM_TRUSTED_PROXIES": 1})
    browser = proxied_app.test_client()
    browser.environ_base.update(headers)
    assert Console(browser).login("alice").status_code == 302
    with proxied_app.app_context():
        db.engine.dispose()
    assert login_addresses()[-1] == "203.0.113.7"


def test_form_without_csrf_token_is_refused(client, make_user):
    make_user("alice")
    response = client.post("/login", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 400
    assert not service.is_locked("alice")


def test_the_csrf_token_of_the_sign_in_page_is_replaced_at_sign_in(app, make_user):
    """A token from the anonymous sign-in page stayed valid once signed in: whoever planted or read it before
    the sign-in could forge the signed-in user's forms."""
    make_user("alice")
    client = app.test_client()
    before = csrf_token(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": before}) \
        .status_code == 302
    assert client.post("/session/keepalive", data={"csrf_token": before}).status_code == 400
    after = csrf_token(client.get("/account/sessions").get_data(as_text=True))
    assert client.post("/session/keepalive", data={"csrf_token": after}).status_code == 200


def test_after_a_sign_out_the_next_users_forms_refuse_the_last_users_token(app, make_user):
    """After alice signed out and bob signed in on the same browser, alice's token served bob's forms."""
    make_user("alice")
    make_user("bob")
    console = Console(app.test_client())
    console.login("alice")
    alices = csrf_token(console.client.get("/account/sessions").get_data(as_text=True))
    console.client.post("/logout", data={"csrf_token": alices})
    console.login("bob")
    assert console.client.post("/account/sessions/end-others", data={"csrf_token": alices}).status_code == 400


def test_after_a_timeout_another_users_sign_in_refuses_the_last_users_token(app, make_user):
    """The one who timed out keeps the forms typed before (tests/test_session_clock.py); anyone else signing in
    on that browser gets a token of their own."""
    from tests.test_session_clock import set_clocks

    make_user("alice")
    make_user("bob")
    console = Console(app.test_client())
    console.login("alice")
    alices = csrf_token(console.client.get("/account/sessions").get_data(as_text=True))
    set_clocks(console, active_ago=31 * 60)
    assert console.client.get("/account/sessions").status_code == 302
    console.login("bob")
    assert console.client.post("/account/sessions/end-others", data={"csrf_token": alices}).status_code == 400


def test_session_cookie_flags(app, console, make_user):
    make_user("alice")
    response = console.login("alice")
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert app.config["SESSION_COOKIE_SECURE"] is False  # tests only; the default is True


def test_secure_cookie_is_the_default(monkeypatch, tmp_path):
    from app.config import load_config

    monkeypatch.delenv("MPIM_COOKIE_SECURE", raising=False)
    config = load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    assert config["SESSION_COOKIE_SECURE"] is True


@pytest.mark.parametrize("value", ["ture", "2", "y es", "enabled"])
def test_a_mistyped_cookie_secure_flag_stops_the_start_naming_it(monkeypatch, tmp_path, value):
    """Any value but 1/true/yes/on read as "off": MPIM_COOKIE_SECURE=ture sent session cookies over plain HTTP,
    with nothing said at start."""
    from app.config import load_config

    monkeypatch.setenv("MPIM_COOKIE_SECURE", value)
    with pytest.raises(ValueError, match=f"MPIM_COOKIE_SECURE must be 1, true, yes or on, or 0, false, no or off, "
                                         f"not '{value}'"):
        load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    for said, meant in (("off", False), (" FALSE ", False), ("0", False), ("On", True), ("1", True)):
        monkeypatch.setenv("MPIM_COOKIE_SECURE", said)
        assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["SESSION_COOKIE_SECURE"] is meant, said


def test_a_new_instance_directory_is_private(monkeypatch, tmp_path):
    """It holds the session secret, the CA and the SQLite database (which SQLite creates 0644)."""
    from app.config import load_config

    instance = tmp_path / "instance"
    load_config({"MPIM_INSTANCE_PATH": str(instance)})
    assert oct(instance.stat().st_mode & 0o777) == "0o700"


def test_password_is_hashed_strongly(make_user):
    user = make_user("alice")
    assert user.password_hash.startswith("scrypt:") and PASSWORD not in user.password_hash


@pytest.mark.parametrize("password", ["short1A!", "alllowercaseletters", "alice-Password-1"])
def test_weak_passwords_are_refused(app, password):
    with pytest.raises(ValidationFailed) as caught:
        service.create_user(service.UserDraft(username="alice", password=password, role="auditor"))
    assert caught.value.code == "weak_password"


@pytest.mark.parametrize("password", ["Secret\x00Pass12", "Secret\x1b\x07Pass12", "Secret\tPass12",
                                      "\x01Secret-Pass12"])
def test_a_password_with_a_control_character_is_refused_with_a_clear_message(app, password):
    """NUL, Escape, Bell, a tab: accepted by the change form, a reset and `--password-stdin`, and typed back
    at no keyboard."""
    with pytest.raises(ValidationFailed) as caught:
        service.check_password_policy(password, "alice")
    assert caught.value.code == "weak_password" and "control characters" in str(caught.value.message)


def test_the_change_form_refuses_a_control_character_in_chinese_at_the_new_password_field(app, console,
                                                                                           make_user):
    make_user("alice")
    console.login("alice")
    response = console.post_form("/account/password", {"current_password": PASSWORD,
                                                       "new_password": "Secret\x1b\x07Pass12",
                                                       "confirm": "Secret\x1b\x07Pass12"})
    assert response.status_code == 422 and "密码不能包含控制字符" in response.get_data(as_text=True)


def test_the_cli_reset_refuses_a_control_character_from_stdin(app, runner, make_user):
    make_user("alice")
    result = runner.invoke(args=["users", "reset-password", "alice", "--password-stdin"], input="Secret\x01Pass12\n")
    assert result.exit_code != 0 and "control characters" in result.output


@pytest.mark.parametrize("password", ["Aa1" + "\u0301" * 7, "Aa1!" + "\u0308" * 6, "Aa1-" + "\u1100\u1161" * 3])
def test_combining_marks_and_decomposed_syllables_do_not_count_towards_the_length(app, password):
    """The password "Aa1" with seven combining accents passed as ten characters; one sees three. Korean
    jamo typed apart count as the syllables NFC composes them into."""
    with pytest.raises(ValidationFailed) as caught:
        service.check_password_policy(password)
    assert "at least 10 characters" in str(caught.value.message)


@pytest.mark.parametrize("password", ["Aa1" + "\u200d" * 7, "Aa1!" + "\ufeff" * 6, "Aa1" + "\u00ad" * 7,
                                      "Aa1" + "\u3164" * 7, "Aa1" + "\U000e0041" * 7, "Aa1" + "\u3000" * 7,
                                      "Aa1-" + "\u200b\u2060\u1160\u115f\u00a0\u180e"])
def test_invisible_characters_and_blanks_do_not_count_towards_the_length(app, password):
    """Zero-width joiners, byte-order marks, soft hyphens, Hangul fillers and tag characters passed as
    characters: "Aa1" with seven of them met the ten-character minimum, and one sees three."""
    with pytest.raises(ValidationFailed) as caught:
        service.check_password_policy(password)
    assert "at least 10 characters" in str(caught.value.message)


def test_the_spaces_of_a_passphrase_count_towards_the_length(app):
    service.check_password_policy("Aa1 bcd ef")  # a space is a key typed and a gap one sees


def test_a_long_enough_password_written_decomposed_counts_as_composed(app):
    """Counted after NFC: "é" typed as e and an accent is one character, as it is composed."""
    service.check_password_policy("Cafe\u0301-Noir-12")  # ten characters once composed, with the accent
    with pytest.raises(ValidationFailed):
        service.check_password_policy("Cafe\u0301-Noi1")  # nine


def change_form(console: Console, current: str, new: str = "New-Secret-42"):
    return console.post_form("/account/password", {"current_password": current, "new_password": new,
                                                   "confirm": new})


def test_wrong_current_passwords_on_the_change_form_lock_the_account_and_sign_this_session_out(app, make_user):
    """A console left signed in, or a stolen cookie, guessed the current password on the change form without
    limit and without a trace. Each wrong one now counts with the failed sign-ins of the account and is audited;
    the one that locks the account also ends the session it was typed in."""
    make_user("alice")
    console = Console(app.test_client())
    console.login("alice")
    limit = app.config["MPIM_LOGIN_MAX_FAILURES"]
    for attempt in range(limit - 1):
        response = change_form(console, f"Guess-{attempt:04d}x")
        assert response.status_code == 422 and "当前密码错误" in response.get_data(as_text=True)
    assert not service.is_locked("alice")

    response = change_form(console, "Guess-last-x")

    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert "锁定" in console.client.get(response.headers["Location"]).get_data(as_text=True)
    assert service.is_locked("alice")
    assert console.client.get("/").status_code == 302  # signed out
    assert console.login("alice").status_code == 401  # the right password too, until the lock ends
    failed = list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == "auth.password_change_failed")
                                     .order_by(AuditRecord.seq)))
    assert [(record.actor, record.target) for record in failed] == [("alice", "alice")] * limit
    assert failed[-1].detail == {"locked": ["user:alice"]} and failed[0].remote_addr == "127.0.0.1"
    assert "auth.logout" in actions()


def test_a_session_open_on_a_locked_account_cannot_change_its_password(app, make_user):
    """Locked by failed sign-ins elsewhere: the change is refused, even with the right password, and audited;
    the session stays (the guesses may be someone else's, who must not be able to sign the owner out)."""
    make_user("alice")
    console = Console(app.test_client())
    console.login("alice")
    for _ in range(app.config["MPIM_LOGIN_MAX_FAILURES"]):
        Console(app.test_client()).login("alice", "Wrong-Password-1")

    response = change_form(console, PASSWORD)

    assert response.status_code == 429 and "锁定" in response.get_data(as_text=True)
    assert actions()[-1] == "auth.password_change_blocked"
    assert console.client.get("/").status_code == 200
    service.unlock("alice")
    db.session.commit()
    assert Console(app.test_client()).login("alice").status_code == 302  # the password did not change


def test_the_right_current_password_clears_the_count_even_when_the_new_one_is_refused(app, make_user):
    make_user("alice")
    console = Console(app.test_client())
    console.login("alice")
    limit = app.config["MPIM_LOGIN_MAX_FAILURES"]
    for attempt in range(limit - 1):
        change_form(console, f"Guess-{attempt:04d}x")
    assert "密码至少需要 10 个字符" in change_form(console, PASSWORD, "weak").get_data(as_text=True)
    for attempt in range(limit - 1):
        assert change_form(console, f"Guess-{attempt:04d}y").status_code == 422
    assert not service.is_locked("alice")


def test_password_change_logs_out_other_sessions(app, make_user):
    make_user("alice")
    first, second = Console(app.test_client()), Console(app.test_client())
    first.login("alice")
    second.login("alice")
    response = first.post_form("/account/password", {"current_password": PASSWORD, "new_password": "New-Secret-42",
                                                      "confirm": "New-Secret-42"})
    assert response.status_code == 302
    assert first.client.get("/").status_code == 200  # the one who changed it stays in
    assert second.client.get("/").status_code == 302  # the other session is gone
    assert Console(app.test_client()).login("alice", "New-Secret-42").status_code == 302


def test_a_change_or_a_reset_cannot_bring_back_any_of_the_last_five_passwords(app, admin_console, make_user):
    user = make_user("alice")
    passwords = [PASSWORD] + [f"Rotated-Secret-{n}" for n in range(1, 6)]
    for current, new in zip(passwords[:4], passwords[1:5], strict=True):
        service.change_own_password(user, current, new)
        db.session.commit()
    console = Console(app.test_client())
    console.login("alice", passwords[4])
    for earlier in passwords[:4]:
        response = console.post_form("/account/password", {"current_password": passwords[4], "new_password": earlier,
                                                           "confirm": earlier})
        assert response.status_code == 422
        assert re.search(r'<input[^>]*aria-invalid="true"[^>]*name="new_password"|'
                         r'<input[^>]*name="new_password"[^>]*aria-invalid="true"', response.get_data(as_text=True))
        assert "新密码不能与该账号最近 5 次使用过的密码相同" in response.get_data(as_text=True)
    html = admin_console.client.get("/users/alice").get_data(as_text=True)
    refusal = admin_console.client.post("/users/alice/password", data={"reset-password": passwords[2],
                                                                       "reset-csrf_token": csrf_token(html)})
    assert refusal.status_code == 422  # the user's page again, the refusal at the reset form's field
    assert re.search(r'id="reset-password-error-1">新密码不能与该账号最近 5 次使用过的密码相同',
                     refusal.get_data(as_text=True))
    assert Console(app.test_client()).login("alice", passwords[4]).status_code == 302  # nothing changed

    service.change_own_password(user, passwords[4], passwords[5])
    db.session.commit()
    minister = service.get_user("minister")
    service.reset_password(user, PASSWORD, by=minister)  # six passwords ago: allowed again
    db.session.commit()
    with pytest.raises(ValidationFailed) as refused:
        service.reset_password(user, passwords[2], by=minister)
    assert refused.value.code == "password_reused"


def test_an_admin_cannot_reset_their_own_password_on_the_users_page(app, admin_console, make_user):
    """A reset asks for no current password and ended the owner's other sessions: whoever found a ministry
    admin's console signed in took the account. One's own password is changed on /account/password, with
    the current one; the user page offers no reset for oneself, and refuses one sent anyway."""
    elsewhere = Console(app.test_client())
    elsewhere.login("minister")
    html = admin_console.client.get("/users/minister").get_data(as_text=True)
    assert 'name="reset-password"' not in html and 'href="/account/password"' in html
    make_user("alice")
    assert 'name="reset-password"' in admin_console.client.get("/users/alice").get_data(as_text=True)

    response = admin_console.client.post("/users/minister/password", data={
        "reset-password": "Thief-Chosen-77", "reset-csrf_token": csrf_token(html)})

    assert response.status_code == 302 and response.headers["Location"] == "/account/password"
    page = admin_console.client.get(response.headers["Location"]).get_data(as_text=True)
    assert "不能在此重置自己的密码" in page
    empty = admin_console.client.post("/users/minister/password", data={  # refused so too, not at a form not shown
        "reset-password": "", "reset-csrf_token": csrf_token(html)})
    assert empty.status_code == 302 and empty.headers["Location"] == "/account/password"
    assert elsewhere.client.get("/").status_code == 200  # no session of the owner ended
    assert Console(app.test_client()).login("minister", "Thief-Chosen-77").status_code == 401
    assert Console(app.test_client()).login("minister").status_code == 302
    assert "user.password_reset" not in actions()
    minister = service.get_user("minister")
    with pytest.raises(PermissionDenied) as refused:
        service.reset_password(minister, "Thief-Chosen-77", by=minister)
    assert refused.value.code == "own_password"


def lock_the_account(app, username: str) -> None:
    for index in range(app.config["MPIM_LOGIN_MAX_FAILURES"]):  # from other addresses: only the account locks
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.7.0.{index + 1}"
        Console(client).login(username, f"Wrong-Guess-{index}")
    assert service.is_locked(username)


def test_changes_refused_while_the_account_is_locked_are_one_audit_record_and_a_count(app, make_user):
    """Each POST to /account/password during a lock wrote an auth.password_change_blocked record (20 posts,
    20 records) and counted nothing: as for sign-ins, the lock's first refusal is recorded, the rest counted
    on the lock, which the unlock's record carries."""
    make_user("alice")
    console = Console(app.test_client())
    console.login("alice")
    for _ in range(app.config["MPIM_LOGIN_MAX_FAILURES"]):
        Console(app.test_client()).login("alice", "Wrong-Password-1")
    for _ in range(20):
        assert change_form(console, PASSWORD).status_code == 429
    assert actions().count("auth.password_change_blocked") == 1
    db.session.expire_all()
    assert db.session.get(LoginThrottle, "user:alice").refused == 20
    assert Console(app.test_client()).login("alice").status_code == 401  # counted too: no new record
    assert actions().count("auth.login_blocked") == 0
    service.unlock("alice", actor="tests")
    db.session.commit()
    assert db.session.scalars(select(AuditRecord.detail).where(AuditRecord.action == "auth.unlock")).one() \
        == {"refused": {"user:alice": 21}}


def test_a_lock_that_ran_out_takes_its_refusal_count_with_it(app, runner, make_user):
    """An account lock that ran out kept its `refused` count: a later failure counted on the same row, and a
    later `flask users unlock` recorded the refusals of a lock no longer in force."""
    from datetime import timedelta

    from app.database import utcnow

    make_user("erin")
    lock_the_account(app, "erin")
    for index in range(4):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.8.0.{index + 1}"
        assert Console(client).login("erin", "Wrong-Guess-9").status_code == 401
    row = db.session.get(LoginThrottle, "user:erin")
    assert row.refused == 4
    row.locked_until = utcnow() - timedelta(seconds=1)  # the lock has run out
    db.session.commit()
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "10.9.0.1"
    assert Console(client).login("erin", "Wrong-Guess-10").status_code == 401  # a failure, counted anew
    db.session.expire_all()
    assert db.session.get(LoginThrottle, "user:erin").refused == 0

    row = db.session.get(LoginThrottle, "user:erin")
    row.refused = 4  # as a row written before this fix has it
    db.session.commit()
    assert runner.invoke(args=["users", "unlock", "erin"]).exit_code == 0
    db.session.expire_all()
    record = db.session.scalars(select(AuditRecord.detail).where(AuditRecord.action == "auth.unlock")).one()
    assert "refused" not in record


def test_an_admins_reset_lifts_the_accounts_lock_and_says_so(app, admin_console, make_user):
    """After a reset the user was still refused as locked until the admin also clicked unlock."""
    make_user("alice")
    lock_the_account(app, "alice")
    admin_console.post_form("/users/alice", {"reset-password": "Temp-Pass-4567"}, action="/users/alice/password")
    assert not service.is_locked("alice")
    assert Console(app.test_client()).login("alice", "Temp-Pass-4567").status_code == 302
    assert db.session.scalars(select(AuditRecord.detail).where(AuditRecord.action == "user.password_reset")) \
        .one() == {"lock_lifted": True}


def test_the_clis_reset_lifts_the_accounts_lock_too(app, runner, make_user):
    make_user("alice")
    lock_the_account(app, "alice")
    result = runner.invoke(args=["users", "reset-password", "alice", "--password-stdin"], input="Temp-Pass-4567\n")
    assert result.exit_code == 0, result.output
    assert not service.is_locked("alice")
    assert db.session.scalars(select(AuditRecord.detail).where(AuditRecord.action == "user.password_reset")) \
        .one() == {"lock_lifted": True}


def test_a_reset_of_an_account_not_locked_records_no_lock(app, admin_console, make_user):
    make_user("alice")
    Console(app.test_client()).login("alice", "Wrong-Guess-1")  # one failure: counted, no lock
    admin_console.post_form("/users/alice", {"reset-password": "Temp-Pass-4567"}, action="/users/alice/password")
    assert db.session.scalars(select(AuditRecord.detail).where(AuditRecord.action == "user.password_reset")) \
        .one() == {}
    assert db.session.get(LoginThrottle, "user:alice") is None  # its failures go with the old password


def test_the_password_history_keeps_only_the_four_before_the_current_one(app, make_user):
    """Five passwords count (the current one and four kept hashes); older hashes are deleted, not kept for good."""
    user = make_user("alice")
    passwords = [PASSWORD] + [f"Rotated-Secret-{n}" for n in range(1, 8)]
    for current, new in zip(passwords, passwords[1:], strict=False):
        service.change_own_password(user, current, new)
        db.session.commit()
    kept = list(db.session.scalars(select(PasswordHistory.password_hash).where(PasswordHistory.user_id == user.id)))
    assert len(kept) == 4
    assert sorted(passwords[3:7]) == sorted(next(p for p in passwords if check_password_hash(hashed, p))
                                            for hashed in kept)


def test_password_change_with_wrong_current_password(app, console, make_user):
    make_user("alice")
    console.login("alice")
    response = console.post_form("/account/password", {"current_password": "nope-Nope-1",
                                                       "new_password": "New-Secret-42", "confirm": "New-Secret-42"})
    assert response.status_code == 422 and "当前密码错误" in response.get_data(as_text=True)


@pytest.mark.parametrize("weak", ["Short-1", "alllowercaseletters", "My-alice-Secret-1"])
def test_a_weak_new_password_is_refused_at_the_new_password_field(app, console, make_user, weak):
    """The rule's refusal sits under the field it is about, tied to it and marked invalid, next to the rule
    itself (the change form's fields are current_password, new_password and confirm; a refusal naming a
    field the form lacks was a flash at the top of the page, apart from the field)."""
    make_user("alice")
    console.login("alice")
    response = console.post_form("/account/password", {"current_password": PASSWORD, "new_password": weak,
                                                       "confirm": weak})
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    field = re.search(r'<div class="field has-error">\s*<label for="new_password".*?</div>\s*</div>', html, re.S)
    assert field, "the new password field is not marked in error"
    assert 'aria-invalid="true"' in field.group(0)
    assert 'id="new_password-error-1"' in field.group(0) and 'id="new_password-hint"' in field.group(0)
    assert 'class="flash error"' not in html


def test_ministry_admin_creates_a_provincial_admin_in_the_console(admin_console):
    response = admin_console.post_form("/users/new", {"username": "jx-admin", "display_name": "江西省厅",
                                                      "role": "provincial_admin", "scopes": "360000",
                                                      "password": "Jiangxi-Admin-1"})
    assert response.status_code == 302
    user = db.session.scalar(select(User).where(User.username == "jx-admin"))
    assert user.scopes == ["360000"] and user.can_access_division("360102")
    assert not user.can_access_division("440100")
    assert "user.create" in actions()


def test_user_forms_without_their_optional_fields_save_instead_of_failing(admin_console, make_user):
    """A form posted without the name or scope box (a script, an older page) answered 500: WTForms gives None
    for a text field absent from the request, and the view stripped it."""
    created = admin_console.post_form("/users/new", {"username": "eye", "password": "Correct-Horse-9x",
                                                     "role": "auditor"})
    assert created.status_code == 302
    make_user("jx-admin", "provincial_admin", ("360000",))
    edited = admin_console.post_form("/users/jx-admin", {"role": "auditor", "active": "y"})
    assert edited.status_code == 302
    db.session.expire_all()
    users = {user.username: user for user in db.session.scalars(select(User))}
    assert users["eye"].role == "auditor" and users["eye"].display_name == ""
    assert users["jx-admin"].role == "auditor" and users["jx-admin"].scopes == []


def test_renaming_a_user_is_in_the_audit_record(admin_console, make_user):
    """The name is shown beside a user's actions: a rename left no trace of what it was before."""
    make_user("auditor1", "auditor")
    response = admin_console.post_form("/users/auditor1", {"display_name": "王五", "role": "auditor", "active": "y"})
    assert response.status_code == 302
    record = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "user.update")).one()
    assert (record.detail["before"]["display_name"], record.detail["after"]["display_name"]) == ("", "王五")


@pytest.mark.parametrize("username", ["a", "alice\n", "alice bob", "al/ice", "ａｌｉｃｅ", "x" * 65, "..", "..."])
def test_malformed_usernames_are_refused(app, username):
    """"alice\n" would sit in the users list looking like alice."""
    with pytest.raises(ValidationFailed) as caught:
        service.create_user(service.UserDraft(username=username, password=PASSWORD, role="auditor"))
    assert caught.value.code == "invalid_username"
    assert db.session.scalars(select(User).where(User.username == username)).first() is None


def test_scope_codes_typed_with_chinese_punctuation_or_blanks_between_are_taken(admin_console, runner):
    """A zh-CN typist's "360000，440000" (full-width comma) or "360000、440000" was refused as an unknown code, the
    whole text taken as one."""
    for username, typed in (("pa-1", "360000，440000"), ("pa-2", "360000、 440000"), ("pa-3", "360000 440000")):
        response = admin_console.post_form("/users/new", {"username": username, "role": "provincial_admin",
                                                          "scopes": typed, "password": "Correct-Horse-Battery-9"})
        assert response.status_code == 302, typed
        assert service.get_user(username).scopes == ["360000", "440000"], typed
    response = admin_console.post_form("/users/pa-1", {"role": "provincial_admin", "scopes": "360000；360100",
                                                       "active": "y"})
    assert response.status_code == 302 and service.get_user("pa-1").scopes == ["360000", "360100"]
    # the CLI reads --scope as the console's field (it refused "360000，440000" as one code)
    created = runner.invoke(args=["users", "create", "--role", "provincial_admin", "--username", "pa-4",
                                  "--scope", "360000，440000", "--password-stdin"], input="Correct-Horse-Battery-9\n")
    assert created.exit_code == 0, created.output
    assert service.get_user("pa-4").scopes == ["360000", "440000"]
    updated = runner.invoke(args=["users", "update", "pa-4", "--scope", "360000 360100"])
    assert updated.exit_code == 0, updated.output
    assert service.get_user("pa-4").scopes == ["360000", "360100"]


def test_provincial_admin_needs_a_valid_current_scope(app):
    for scopes, code in [((), "scope_required"), (("999999",), "unknown_division_code"),
                         (("36000",), "invalid_division_code")]:
        with pytest.raises(ValidationFailed) as caught:
            service.create_user(service.UserDraft(username="pa", password=PASSWORD, role="provincial_admin",
                                                  scopes=scopes))
        assert caught.value.code == code


def test_provincial_admin_cannot_reach_user_management_or_outside_scope(app, make_user):
    from app.auth.access import require_division_scope

    user = make_user("jx", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx")
    assert console.client.get("/users/").status_code == 403
    assert console.client.get("/audit/").status_code == 403
    require_division_scope(user, "360102")
    with pytest.raises(PermissionDenied) as caught:
        require_division_scope(user, "440300")
    assert caught.value.code == "out_of_scope"


def test_auditor_reads_the_audit_log_but_not_users(app, make_user):
    make_user("eye", "auditor")
    console = Console(app.test_client())
    console.login("eye")
    assert console.client.get("/audit/").status_code == 200
    assert console.client.get("/users/").status_code == 403


def test_cli_users_create_reads_password_from_stdin(runner):
    result = runner.invoke(args=["users", "create", "--role", "provincial_admin", "--username", "gd",
                                 "--scope", "440000,360000", "--password-stdin", "--json"],
                           input="Guangdong-Admin-7\n")
    assert result.exit_code == 0, result.output
    assert '"scopes": ["360000", "440000"]' in result.output
    assert service.authenticate("gd", "Guangdong-Admin-7", "127.0.0.1").role == "provincial_admin"
    created = db.session.scalars(db.select(AuditRecord).where(AuditRecord.action == "user.create",
                                                          AuditRecord.target == "gd")).one()
    assert created.actor == "cli"  # as the other CLI actions without --user; "system" is the scheduler's


def test_cli_refuses_a_bad_scope(runner):
    result = runner.invoke(args=["users", "create", "--role", "provincial_admin", "--username", "gd",
                                 "--scope", "999999", "--password-stdin"], input="Guangdong-Admin-7\n")
    assert result.exit_code == 1 and "999999" in result.output


def test_ensure_admin_creates_the_first_admin_once(runner, monkeypatch):
    monkeypatch.setenv("MPIM_ADMIN_PASSWORD", "First-Minister-Pass-1")
    first = runner.invoke(args=["users", "ensure-admin"])
    assert "created ministry admin" in first.output
    assert "exists already" in runner.invoke(args=["users", "ensure-admin"]).output
    assert service.authenticate("admin", "First-Minister-Pass-1", "127.0.0.1").is_ministry_admin


def test_ensure_admin_takes_the_first_admins_name(runner, monkeypatch):
    """Every first admin was named "部级管理员", the console's name for the role, with no way to give theirs
    but a second command (`users update --name`)."""
    monkeypatch.setenv("MPIM_ADMIN_PASSWORD", "First-Minister-Pass-1")
    assert runner.invoke(args=["users", "ensure-admin", "--name", "公安部科信局 张三"]).exit_code == 0
    assert service.authenticate("admin", "First-Minister-Pass-1", "127.0.0.1").display_name == "公安部科信局 张三"


def test_one_submit_of_the_user_form_shows_the_weak_password_and_the_missing_scope_together(admin_console):
    """The form showed the weak password first and the missing scope only on the next try."""
    response = admin_console.post_form("/users/new", {"username": "jx-admin", "display_name": "江西省厅",
                                                      "role": "provincial_admin", "scopes": "",
                                                      "password": "short"})
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert 'id="password-error-1"' in html and 'id="scopes-error-1"' in html
    assert 'value="jx-admin"' in html and 'value="江西省厅"' in html
    assert db.session.scalar(select(User).where(User.username == "jx-admin")) is None


def test_the_user_forms_empty_password_and_missing_scope_come_in_one_answer(admin_console):
    """WTForms' refusal of an empty field came alone; the service's (the missing scope) only on the next try."""
    response = admin_console.post_form("/users/new", {"username": "jx-admin", "role": "provincial_admin",
                                                      "scopes": "", "password": ""})
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert 'id="password-error-1"' in html and 'id="scopes-error-1"' in html
    assert 'id="password-error-2"' not in html and 'value="jx-admin"' in html
    assert db.session.scalar(select(User).where(User.username == "jx-admin")) is None


def _user_page_form(console: Console, username: str, data: dict):
    """The edit form on the user's page, posted as a browser does."""
    return console.post_form(f"/users/{username}", data)


@pytest.mark.parametrize("name", ["江西\x07省厅", "江" * 121], ids=["control character", "past WTForms' limit"])
def test_one_submit_of_the_edit_form_shows_every_fields_refusal_at_its_field(admin_console, make_user, name):
    """The edit form showed one refusal per submit (the scope first, the name on the next try), and a field
    WTForms refused (a name past 120 characters) came alone, without the service's refusals of the others."""
    make_user("jx-admin", "provincial_admin", ("360000",))
    response = _user_page_form(admin_console, "jx-admin", {"display_name": name, "role": "provincial_admin",
                                                           "scopes": "", "active": "y"})
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert 'id="display_name-error-1"' in html and 'id="scopes-error-1"' in html
    assert 'id="display_name-error-2"' not in html and 'class="flash error"' not in html
    db.session.expire_all()
    user = service.get_user("jx-admin")
    assert (user.display_name, user.scopes) == ("", ["360000"])
    assert "user.update" not in actions()


def test_the_edit_forms_field_refusals_come_before_the_refusal_of_ones_own_demotion(admin_console):
    """A check about no one field (here: one's own account) comes after the fields': the form refused the
    deactivation alone, and the wrong scope only on the next try."""
    response = _user_page_form(admin_console, "minister", {"display_name": "部\x1b厅", "role": "ministry_admin",
                                                           "scopes": "360000"})
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert 'id="display_name-error-1"' in html and 'id="scopes-error-1"' in html
    assert service.get_user("minister").active

    fields_right = _user_page_form(admin_console, "minister", {"display_name": "部厅", "role": "ministry_admin",
                                                                "scopes": ""})
    assert "不能降低自己的角色或停用自己" in fields_right.get_data(as_text=True)
    db.session.expire_all()
    assert service.get_user("minister").active and service.get_user("minister").display_name == ""


def test_one_submit_of_the_change_form_shows_the_wrong_current_password_and_the_weak_new_one(app, make_user):
    """The wrong current password came alone, and the new one's refusal only once the current one was right."""
    make_user("alice")
    console = Console(app.test_client())
    console.login("alice")
    html = change_form(console, "Guess-0000x", "short").get_data(as_text=True)
    assert "当前密码错误" in html and 'id="current_password-error-1"' in html
    assert 'id="new_password-error-1"' in html and 'id="new_password-error-2"' in html  # too short, too plain
    assert 'class="flash error"' not in html


def test_the_change_forms_differing_repeat_comes_with_the_weak_new_password(app, make_user):
    """WTForms' refusal (the repeat differs) came alone; the new password's only on the next try. Its
    current password is not checked then (no guess is counted): the rules are the same for everyone."""
    make_user("alice")
    console = Console(app.test_client())
    console.login("alice")
    html = console.post_form("/account/password", {"current_password": "Guess-0000x", "new_password": "short",
                                                   "confirm": "shorter"}).get_data(as_text=True)
    assert 'id="confirm-error-1"' in html and 'id="new_password-error-1"' in html
    assert 'id="current_password-error-1"' not in html
    assert "auth.password_change_failed" not in actions()


def test_one_submit_of_the_reset_form_shows_every_rule_the_password_breaks_at_its_field(app, admin_console,
                                                                                      make_user):
    """The reset form flashed the first broken rule after a redirect, apart from its field; now each one is at
    the field, on the user's page."""
    make_user("alice")
    html = admin_console.client.get("/users/alice").get_data(as_text=True)
    response = admin_console.client.post("/users/alice/password", data={"reset-password": "alice",
                                                                        "reset-csrf_token": csrf_token(html)})
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    for number in (1, 2, 3):  # too short; fewer than three kinds of character; holds the username
        assert f'id="reset-password-error-{number}"' in page, number
    assert "密码至少需要 10 个字符" in page and 'class="flash error"' not in page
    assert 'action="/users/alice"' in page  # shown at the reset's address, the edit form still saves the user
    empty = admin_console.client.post("/users/alice/password", data={"reset-password": "",
                                                                     "reset-csrf_token": csrf_token(html)})
    page = empty.get_data(as_text=True)  # WTForms' refusal alone: the field is not refused twice
    assert 'id="reset-password-error-1"' in page and 'id="reset-password-error-2"' not in page
    assert Console(app.test_client()).login("alice").status_code == 302  # unchanged


def test_the_account_link_says_it_changes_the_password_and_a_user_page_says_it_is_a_users(admin_console, make_user):
    """The header's username link said where it led only in its title, which keyboard and touch users never see
    and many screen readers skip; a user's page was titled by the bare username."""
    make_user("jx-admin", "provincial_admin", ("360000",))
    html = admin_console.client.get("/users/jx-admin").get_data(as_text=True)
    link = re.search(r'<a href="/account/password" class="user"[^>]*>(.*?)</a>', html, re.S).group(1)
    assert re.sub(r"<[^>]+>", "", link) == "minister · 修改密码"
    assert re.search(r"<title>([^<]*)</title>", html).group(1).startswith("用户 jx-admin · ")
