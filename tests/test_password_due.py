"""A password someone else chose, or one older than MPIM_PASSWORD_MAX_DAYS, is changed before anything else
(app/auth/password_due.py); the user then lands where they were going."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select, update

from app.audit.models import AuditRecord
from app.auth.models import User
from app.database import utcnow
from app.extensions import db
from tests.conftest import PASSWORD, Console

NEW_PASSWORD = "Own-Choice-2026"


def user(username: str) -> User:
    db.session.expire_all()
    return db.session.scalar(select(User).where(User.username == username))


def change(console: Console, page: str, current: str = PASSWORD):
    return console.post_form(page, {"current_password": current, "new_password": NEW_PASSWORD,
                                    "confirm": NEW_PASSWORD})


def test_a_user_an_admin_created_chooses_a_password_first_and_then_lands_where_they_were_going(
        app, admin_console):
    admin_console.post_form("/users/new", {"username": "jx-admin", "display_name": "江西省厅",
                                           "role": "provincial_admin", "scopes": "360000", "password": PASSWORD})
    assert user("jx-admin").password_must_change is True
    console = Console(app.test_client())
    assert console.login("jx-admin").status_code == 302
    response = console.client.get("/nodes/?status=active")
    assert response.status_code == 302
    assert response.headers["Location"] == "/account/password?next=/nodes/?status%3Dactive"
    form = console.client.get(response.headers["Location"]).get_data(as_text=True)
    assert "您的密码是为您预设的" in form
    assert 'class="mainnav"' not in form  # no menu whose every link leads back here
    assert console.client.get("/tokens/").status_code == 302  # every page, not only the first
    changed = change(console, response.headers["Location"])
    assert changed.status_code == 302 and changed.headers["Location"] == "/nodes/?status=active"
    assert user("jx-admin").password_must_change is False
    assert console.client.get("/nodes/?status=active").status_code == 200
    assert db.session.scalar(select(AuditRecord.actor).where(AuditRecord.action == "user.password_change")) \
        == "jx-admin"


def test_the_first_password_cannot_simply_be_kept(app, make_user):
    make_user("alice", "auditor", must_change_password=True)
    console = Console(app.test_client())
    console.login("alice")
    response = console.post_form("/account/password", {"current_password": PASSWORD, "new_password": PASSWORD,
                                                       "confirm": PASSWORD})
    assert response.status_code == 422 and user("alice").password_must_change is True


def test_an_admins_reset_must_be_replaced_at_the_next_sign_in(app, admin_console, make_user):
    make_user("alice", "auditor")
    page = "/users/alice"
    html = admin_console.client.get(page).get_data(as_text=True)
    token = re.search(r'name="reset-csrf_token"[^>]*value="([^"]+)"', html) or \
        re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    admin_console.client.post("/users/alice/password", data={"reset-password": "Reset-By-Admin-1",
                                                             "reset-csrf_token": token.group(1),
                                                             "csrf_token": token.group(1)})
    assert user("alice").password_must_change is True
    console = Console(app.test_client())
    console.login("alice", "Reset-By-Admin-1")
    assert console.client.get("/audit/").headers["Location"].startswith("/account/password")


def test_the_admin_choosing_a_password_is_told_its_rules_and_that_it_is_only_for_the_first_sign_in(
        admin_console, make_user):
    """The new-user form's initial password and the reset form's new one carry the rules and say the user
    replaces it at the first sign-in, tied to the field as its hint."""
    make_user("alice", "auditor")
    for page, field_id in (("/users/new", "password"), ("/users/alice", "reset-password")):
        html = admin_console.client.get(page).get_data(as_text=True)
        hint = re.search(rf'<small class="hint" id="{field_id}-hint">([^<]*)</small>', html)
        assert hint, f"{page}: no hint on {field_id}"
        assert "至少 10 个字符" in hint.group(1) and "首次登录" in hint.group(1)
        assert re.search(rf'<input[^>]*aria-describedby="{field_id}-hint"[^>]*id="{field_id}"', html)


def signed_in_with_a_password_aged(app, make_user, days: int) -> Console:
    make_user("alice", "auditor")
    db.session.execute(update(User).where(User.username == "alice").values(
        password_changed_at=utcnow() - timedelta(days=days)))
    db.session.commit()
    console = Console(app.test_client())
    console.login("alice")
    return console


def test_a_password_older_than_the_limit_is_due(app, make_user):
    console = signed_in_with_a_password_aged(app, make_user, 91)
    response = console.client.get("/audit/")
    assert response.headers["Location"] == "/account/password?next=/audit/"
    assert "超过 90 天" in console.client.get(response.headers["Location"]).get_data(as_text=True)
    # Changing it lets the user in; the stamp in the session id changed with it, the session did not end.
    assert change(console, response.headers["Location"]).headers["Location"] == "/audit/"
    assert console.client.get("/audit/").status_code == 200


def test_no_password_age_limit_when_it_is_zero(app, make_user):
    app.config["MPIM_PASSWORD_MAX_DAYS"] = 0
    console = signed_in_with_a_password_aged(app, make_user, 900)
    assert console.client.get("/audit/").status_code == 200


def test_signing_out_and_switching_language_stay_open_while_the_change_is_due(app, make_user):
    make_user("alice", "auditor", must_change_password=True)
    console = Console(app.test_client())
    console.login("alice")
    assert console.client.get("/lang/en").status_code == 302
    assert "Your password was chosen for you" in \
        console.client.get("/account/password").get_data(as_text=True)
    assert console.post_form("/account/password", {}, action="/logout").headers["Location"] == "/login"


def test_a_script_asking_for_json_is_told_plainly(app, make_user):
    make_user("alice", "auditor", must_change_password=True)
    console = Console(app.test_client())
    console.login("alice")
    response = console.client.get("/audit/", headers={"Accept": "application/json"})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "password_change_required"


def test_the_generated_first_admin_password_is_a_first_password_and_a_chosen_one_is_not(app, runner,
                                                                                        monkeypatch):
    monkeypatch.delenv("MPIM_ADMIN_PASSWORD", raising=False)
    result = runner.invoke(args=["users", "ensure-admin", "--username", "first"])
    assert result.exit_code == 0 and "asks for a new one at the first sign-in" in result.output
    assert user("first").password_must_change is True
    assert user("first").display_name == "部级管理员"  # a Chinese console's first account, named in Chinese
    # Its first sign-in does not speak of an administrator who set it: make run generated it.
    console = Console(app.test_client())
    console.login("first", re.search(r"with password: (\S+)", result.output).group(1))
    assert "在系统安装时生成" in console.client.get("/account/password").get_data(as_text=True)
    db.session.execute(update(User).where(User.username == "first").values(role="auditor"))
    db.session.commit()
    monkeypatch.setenv("MPIM_ADMIN_PASSWORD", "Operators-Own-Pass-1")
    assert runner.invoke(args=["users", "ensure-admin", "--username", "second"]).exit_code == 0
    assert user("second").password_must_change is False


def test_the_api_is_not_held_up_by_a_console_password(app, make_user):
    """The JSON API is the nodes' door: a console cookie whose password change is due does not turn it away."""
    make_user("alice", "auditor", must_change_password=True)
    console = Console(app.test_client())
    console.login("alice")
    assert console.client.get("/audit/").status_code == 302  # the console is held up
    response = console.client.get("/api/v1/divisions/360000", headers={"Accept": "application/json"})
    assert response.status_code == 200 and response.get_json()["code"] == "360000"


def test_first_sign_in_in_the_browser(page, live_server, make_user):
    make_user("first", must_change_password=True)
    page.goto(f"{live_server}/login")
    page.fill("input[name=username]", "first")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("text=您的密码是为您预设的")
    page.fill("input[name=current_password]", PASSWORD)
    page.fill("input[name=new_password]", NEW_PASSWORD)
    page.fill("input[name=confirm]", NEW_PASSWORD)
    page.click("form button[type=submit].primary")
    page.wait_for_selector("h1:has-text('仪表盘')")
    assert "密码已修改" in page.inner_text("main")


def test_the_users_list_shows_who_still_has_a_temporary_password(app, admin_console, make_user):
    make_user("alice", "auditor", must_change_password=True)
    make_user("bob", "auditor")
    html = admin_console.client.get("/users/").get_data(as_text=True)
    rows = {re.search(r">([a-z]+)</a>", row).group(1): row for row in re.findall(r"<tr>(.*?)</tr>", html, re.S)
            if "</a>" in row}
    assert "临时密码" in rows["alice"] and "临时密码" not in rows["bob"]
