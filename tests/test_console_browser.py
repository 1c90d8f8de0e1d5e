"""The console in a real headless Chromium: sign-in, dashboard, division drill-down, language."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD, screenshot


def sign_in(page, live_server, username, password=PASSWORD):
    page.goto(f"{live_server}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_login_lands_on_the_dashboard_with_real_figures(page, live_server, make_user):
    make_user("minister")
    sign_in(page, live_server, "minister")
    page.wait_for_selector("h1:has-text('仪表盘')")
    text = page.inner_text("main")
    assert "34 个省级" in text  # from the loaded 2023 revision, not a made-up number
    assert "部级管理员 1 人" in text
    screenshot(page, "dashboard")


def test_failed_login_shows_the_reason(page, live_server, make_user):
    make_user("minister")
    sign_in(page, live_server, "minister", "Not-The-Password-1")
    page.wait_for_selector(".flash.error")
    assert "用户名或密码错误" in page.inner_text(".flash.error")
    screenshot(page, "login-failed")


def test_division_drill_down_and_search(page, live_server, make_user):
    make_user("minister")
    sign_in(page, live_server, "minister")
    page.click("nav.mainnav >> text=行政区划")
    page.click("text=江西省")
    page.click("text=南昌市")
    page.wait_for_selector("text=东湖区")
    assert "全国 / 江西省 / 南昌市" in page.inner_text("nav.breadcrumb")
    screenshot(page, "divisions-nanchang")
    page.fill("input[name=q]", "济源")
    page.click("form.search button")
    page.wait_for_selector("text=419001")


def test_language_switch_to_english_and_back(page, live_server, make_user):
    make_user("minister")
    sign_in(page, live_server, "minister")
    page.click("text=English")
    page.wait_for_selector("h1:has-text('Dashboard')")
    assert "34 provinces" in page.inner_text("main")
    page.click("text=中文")
    page.wait_for_selector("h1:has-text('仪表盘')")


def test_english_navigation_stays_inside_the_header_at_1024_px(page, live_server, make_user):
    """English labels are longer: the navigation may wrap, and the header grows with it."""
    make_user("minister")
    page.set_viewport_size({"width": 1024, "height": 700})
    sign_in(page, live_server, "minister")
    page.click("text=English")
    page.wait_for_selector("h1:has-text('Dashboard')")
    header = page.eval_on_selector("header.topbar", "e => e.getBoundingClientRect().toJSON()")
    nav = page.eval_on_selector("nav.mainnav", "e => e.getBoundingClientRect().toJSON()")
    assert nav["top"] >= header["top"] + 4 and nav["bottom"] <= header["bottom"] - 4
    screenshot(page, "header-english-1024")


def test_console_fits_a_390_px_phone_in_both_languages(page, live_server, make_user):
    """Nothing runs off the side: the header wraps, and wide tables scroll inside themselves."""
    from tests.test_i18n import _admitted_node

    make_user("minister")
    _, node = _admitted_node(make_user)
    page.set_viewport_size({"width": 390, "height": 800})
    sign_in(page, live_server, "minister")
    for heading in ("仪表盘", "Dashboard"):
        page.wait_for_selector(f"h1:has-text('{heading}')")
        for path in ("/", "/users/", "/audit/", "/nodes/", f"/nodes/{node.node_id}"):
            page.goto(f"{live_server}{path}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide"
            assert page.is_visible("header.topbar >> text=minister")
        screenshot(page, f"phone-{heading}")
        page.goto(f"{live_server}/")
        if heading == "仪表盘":
            page.click("text=English")


def test_console_fits_a_360_px_phone_in_both_languages(page, live_server, make_user):
    """At 360 px the sessions page (417 px in English), the dashboard's recent activity (366 px) and other lists
    scrolled the whole page sideways: a column's heading for a screen reader only (.visually-hidden, absolutely
    placed) was placed against the page, not the table that scrolls, and stuck out past the screen's edge."""
    from app.admission import applications
    from app.admission.models import Node
    from app.auth import console_sessions
    from app.auth.models import User
    from app.extensions import db
    from tests.factories import change_document

    _one_of_each_row(make_user)
    minister = db.session.scalars(db.select(User).where(User.username == "minister")).one()
    console_sessions.start(minister, remote_addr="10.36.1.7", user_agent="Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
                           " AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")
    node = db.session.scalars(db.select(Node)).one()
    change = applications.submit_change(node, change_document(endpoint=node.endpoint + "/v2"), by=minister)
    db.session.commit()
    page.set_viewport_size({"width": 360, "height": 800})
    sign_in(page, live_server, "minister")
    page.wait_for_selector("h1:has-text('仪表盘')")
    paths = ("/", "/account/sessions", "/users/", "/tokens/", "/divisions/?q=3601", "/divisions/360000",
             f"/applications/{change.id}")
    wide = []
    for language in ("zh_CN", "en"):
        page.goto(f"{live_server}/lang/{language}")
        for path in paths:
            page.goto(f"{live_server}{path}")
            width = page.evaluate("document.documentElement.scrollWidth")
            if width > 360:
                wide.append((language, path, width))
    assert not wide, f"pages wider than the screen: {wide}"


def _one_of_each_row(make_user) -> None:
    """A row or more in every list: an admitted node (its certificate, route table and health), an unused
    token and a pending application from a provincial admin, and that admin locked out by failed sign-ins."""
    from datetime import UTC, datetime, timedelta

    from app.admission import applications, tokens
    from app.auth import service as auth
    from app.extensions import db
    from app.health.models import HealthEvent
    from tests.factories import node_document
    from tests.test_i18n import _admitted_node

    make_user("minister")
    _, node = _admitted_node(make_user)
    jx = make_user("jx-admin", "provincial_admin", ("360000",))
    tokens.create_token("360000", by=jx, note="南昌市公安局即时通信节点接入")
    document = node_document("360100")
    applications.submit_by_user(document, by=jx)
    now = datetime.now(UTC)
    for minutes, (old, new) in enumerate([("down", "up"), ("up", "down"), ("unknown", "up")]):
        db.session.add(HealthEvent(node_id=node.node_id, at=now - timedelta(minutes=minutes), old_status=old,
                                   new_status=new, reason="timeout" if new == "down" else None,
                                   detail="no answer within 2 s" if new == "down" else ""))
    db.session.commit()
    for attempt in range(5):
        try:
            auth.authenticate("jx-admin", "Not-The-Password-1", f"10.36.0.{attempt + 1}")
        except auth.LoginRefused:
            pass
    assert auth.is_locked("jx-admin")


# What a reader scans each list for, and so must be in the first screen of a 390 px phone beside the row's
# identifier: (path, data-column names of those header cells).
PHONE_LISTS = [
    ("/nodes/", ("node_id", "status", "health")),
    ("/certificates/", ("serial", "state")),
    ("/tokens/", ("token", "state", "actions")),
    ("/applications/", ("submitted", "status")),
    ("/users/", ("username", "state", "actions")),
    ("/health/events", ("at", "node", "change")),
    ("/audit/", ("at", "actor", "action")),
]


@pytest.mark.parametrize(("path", "columns"), PHONE_LISTS, ids=[path.strip("/").replace("/", "-")
                                                                 for path, _ in PHONE_LISTS])
def test_a_list_on_a_phone_shows_each_rows_state_beside_its_id(page, live_server, make_user, path, columns):
    """At 390 px a list's table scrolls sideways inside itself; what a reader scans the list for (the state
    of each row, and the button that acts on it) is in the first screen, next to the row's identifier, and
    the less needed text columns are the ones off to the side."""
    _one_of_each_row(make_user)
    page.set_viewport_size({"width": 390, "height": 800})
    sign_in(page, live_server, "minister")
    for language in ("zh_CN", "en"):
        page.goto(f"{live_server}/lang/{language}")
        page.goto(f"{live_server}{path}")
        table = page.eval_on_selector("main table.list", "t => ({right: t.getBoundingClientRect().right,"
                                      " scroll: t.scrollWidth, width: t.clientWidth})")
        assert table["scroll"] > table["width"]  # the rest is a sideways scroll inside the table
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        headers = page.eval_on_selector_all("main table.list th", "ths => ths.map(th => [th.dataset.column,"
                                            " th.getBoundingClientRect().right])")
        seen = {column: right for column, right in headers}
        for column in columns:
            assert seen[column] <= table["right"], f"{column} is off to the side ({language}): {headers}"
        screenshot(page, f"phone-{path.strip('/').replace('/', '-')}-{language}")


def test_audit_log_never_splits_an_actors_name(page, live_server, make_user):
    """A username reads as one word: in a log filtered to "jx-admin" the actor column is narrow, and the
    name broke after its hyphen ("jx-" over "admin"); on a phone and on a desktop it is one line."""
    _one_of_each_row(make_user)
    sign_in(page, live_server, "minister")
    for width in (390, 1366):
        page.set_viewport_size({"width": width, "height": 800})
        for language in ("zh_CN", "en"):
            page.goto(f"{live_server}/lang/{language}")
            page.goto(f"{live_server}/audit/?actor=jx-admin")
            lines = page.evaluate("""() => {
                const headers = [...document.querySelectorAll('main table.list th')];
                const column = headers.findIndex(th => th.dataset.column === 'actor');
                return [...document.querySelectorAll('main table.list tbody tr')].map(tr => {
                    const range = document.createRange();
                    range.selectNodeContents(tr.cells[column]);
                    return [tr.cells[column].innerText, range.getClientRects().length];
                });
            }""")
            assert lines and all(text == "jx-admin" for text, _ in lines)
            assert all(count == 1 for _, count in lines), f"{width} px, {language}: {lines}"
    screenshot(page, "audit-actor-jx-admin")


def test_an_applications_reject_form_fits_a_360_px_phone(page, live_server, make_user):
    """The reject reason's box (60 columns wide) made a pending application's page 536 px wide on a 360 px
    phone, the ministry admin who decides scrolling the whole page sideways; it takes the card's width now."""
    from app.admission.models import Application
    from app.extensions import db

    _one_of_each_row(make_user)
    pending = db.session.scalars(db.select(Application).where(Application.status == "pending")).first()
    page.set_viewport_size({"width": 360, "height": 800})
    sign_in(page, live_server, "minister")
    page.wait_for_selector("h1:has-text('仪表盘')")
    for language in ("zh_CN", "en"):
        page.goto(f"{live_server}/lang/{language}")
        page.goto(f"{live_server}/applications/{pending.id}")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{language}: the page is {width} px wide"
        reason = page.eval_on_selector("form.reject textarea", "t => t.getBoundingClientRect().toJSON()")
        card = page.eval_on_selector("section.decision", "s => s.getBoundingClientRect().toJSON()")
        assert card["left"] < reason["left"] and reason["right"] < card["right"], language
        assert reason["width"] >= 200, f"{language}: the reason's box shrank to {reason['width']} px"
    screenshot(page, "application-reject-360")


def test_application_page_sets_each_heading_apart_from_the_facts_above_it(page, live_server, make_user):
    """The reachability heading sat flush under the CSR's facts (0 px: the list and the heading both had no
    margin), reading as one more fact; a heading that follows something in a card has room above it."""
    from app.admission.models import Application
    from app.extensions import db

    _one_of_each_row(make_user)
    pending = db.session.scalars(db.select(Application).where(Application.status == "pending")).first()
    sign_in(page, live_server, "minister")
    for width in (390, 1366):
        page.set_viewport_size({"width": width, "height": 800})
        page.goto(f"{live_server}/applications/{pending.id}")
        gap = page.evaluate("""() => {
            const facts = document.querySelector('#csr-key').closest('dl');
            return facts.nextElementSibling.getBoundingClientRect().top - facts.getBoundingClientRect().bottom;
        }""")
        assert gap >= 12, f"{width} px: the heading is {gap} px under the facts"
    screenshot(page, "application-pending")


# The controls of each filter or search form that share a line: pairs whose heights differ by more than half a
# pixel, with the label (or button text) of each.
UNEVEN_CONTROLS = """(form) => {
  const controls = [...form.querySelectorAll("input:not([type=hidden], [type=checkbox], [type=radio]), select, button")]
    .filter(control => control.getClientRects().length)
    .map(control => ({name: (control.closest("label") || control).textContent.trim().slice(0, 20),
                      box: control.getBoundingClientRect()}));
  const pairs = [];
  controls.forEach((a, i) => controls.slice(i + 1).forEach(b => {
    const sameLine = a.box.top < b.box.bottom && b.box.top < a.box.bottom;
    const uneven = Math.abs(a.box.height - b.box.height) > 0.5;
    if (sameLine && uneven) pairs.push([a.name, a.box.height, b.name, b.box.height]);
  }));
  return pairs;
}"""


@pytest.mark.parametrize("language", ["zh_CN", "en"])
def test_filter_and_search_buttons_are_as_tall_as_the_fields_beside_them(page, live_server, make_user, language):
    """The nodes list's 筛选 button stood 2 px taller than the selects and the search box it ends the line with
    (buttons kept the form fields' padding, the filter rows' controls have less)."""
    make_user("minister")
    make_user("jx-admin", "provincial_admin", ("360000",))
    pages = {"minister": ["/nodes/", "/applications/", "/certificates/", "/audit/", "/health/events",
                          "/divisions/", "/nodes/resolve"], "jx-admin": ["/tokens/"]}
    for username, paths in pages.items():
        page.context.clear_cookies()
        sign_in(page, live_server, username)
        page.wait_for_selector("nav.mainnav")
        page.goto(f"{live_server}/lang/{language}")
        for path in paths:
            page.goto(f"{live_server}{path}")
            forms = page.locator("main form.filters, main form.search")
            assert forms.count() >= 1, path
            for index in range(forms.count()):
                assert forms.nth(index).evaluate(UNEVEN_CONTROLS) == [], (path, index)


def test_disabling_a_user_asks_first_and_a_rename_does_not(page, live_server, make_user):
    """Unticking "active" signs the account out everywhere at once: the only change on the user form that
    asked nothing while the smaller "end all sessions" beside it did."""
    from app.auth.models import User
    from app.extensions import db

    make_user("minister")
    make_user("auditor1", "auditor")
    sign_in(page, live_server, "minister")
    page.wait_for_selector("h1:has-text('仪表盘')")
    questions = []

    def answer(dialog, accept):
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.goto(f"{live_server}/users/auditor1")
    page.uncheck("input[name=active]")
    page.once("dialog", lambda dialog: answer(dialog, False))
    page.click("form[data-confirm-unchecking] button[type=submit]")
    page.wait_for_function("() => true")
    assert questions == ["停用 auditor1？该账户将立即在所有位置退出登录，重新启用前无法登录。"]
    db.session.expire_all()
    assert db.session.scalar(db.select(User.active).where(User.username == "auditor1")) is True
    page.once("dialog", lambda dialog: answer(dialog, True))
    page.click("form[data-confirm-unchecking] button[type=submit]")
    page.wait_for_selector(".flash.success")
    db.session.expire_all()
    assert db.session.scalar(db.select(User.active).where(User.username == "auditor1")) is False

    page.goto(f"{live_server}/users/auditor1")  # disabled now: a rename keeps it so, without a question
    page.fill("input[name=display_name]", "王五")
    page.click("form[data-confirm-unchecking] button[type=submit]")
    page.wait_for_selector(".flash.success")
    assert len(questions) == 2
    db.session.expire_all()
    assert db.session.scalar(db.select(User.display_name).where(User.username == "auditor1")) == "王五"


def test_a_disable_refused_for_another_field_still_asks_when_sent_again(page, live_server, make_user):
    """The question was asked only when the box had been ticked as the page loaded: a disable refused for
    another field (a scope for an auditor) came back with the box unticked, and the corrected form disabled the
    account without a question. It now asks whenever the stored account is active."""
    from app.auth.models import User
    from app.extensions import db

    make_user("minister")
    make_user("auditor1", "auditor")
    sign_in(page, live_server, "minister")
    page.wait_for_selector("h1:has-text('仪表盘')")
    questions = []

    def answer(dialog):
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    page.goto(f"{live_server}/users/auditor1")
    page.uncheck("input[name=active]")
    page.fill("[name=scopes]", "110000")
    page.click("form[data-confirm-unchecking] button[type=submit]")
    page.wait_for_selector(".has-error")
    assert len(questions) == 1 and not page.is_checked("input[name=active]")
    page.fill("[name=scopes]", "")
    page.click("form[data-confirm-unchecking] button[type=submit]")
    page.wait_for_selector(".flash.success")
    assert len(questions) == 2
    db.session.expire_all()
    assert db.session.scalar(db.select(User.active).where(User.username == "auditor1")) is False


def test_saving_only_a_maintenance_note_keeps_the_window_and_ending_it_asks_first(page, live_server, make_user):
    """The form under "Maintenance until ..." reset to "none (end it)": editing only the note and saving ended the
    window. It now keeps the window's end; ending is its own button, which asks first."""
    from app.extensions import db
    from app.health import service
    from app.health.models import NodeHealth
    from tests.test_i18n import _admitted_node

    make_user("minister")
    _, node = _admitted_node(make_user)
    sign_in(page, live_server, "minister")
    page.wait_for_selector("h1:has-text('仪表盘')")
    page.goto(f"{live_server}/nodes/{node.node_id}")
    page.select_option("#maintenance-form select[name=hours]", "24")
    page.fill("#maintenance-form input[name=note]", "机房搬迁")
    page.click("#maintenance-form button[type=submit]")
    page.wait_for_selector(".flash.success")
    db.session.expire_all()
    until = db.session.get(NodeHealth, node.node_id).maintenance_until

    assert page.input_value("#maintenance-form input[name=note]") == "机房搬迁"
    assert "备注：机房搬迁" in page.inner_text("#maintenance-window")
    page.fill("#maintenance-form input[name=note]", "机房搬迁，延期")
    page.click("#maintenance-form button[type=submit]")
    page.wait_for_selector(".flash.success:has-text('维护窗口已保存。')")
    db.session.expire_all()
    health = db.session.get(NodeHealth, node.node_id)
    assert service.in_maintenance(health)
    assert (health.maintenance_until, health.maintenance_note) == (until, "机房搬迁，延期")
    screenshot(page, "maintenance-window")

    questions = []

    def answer(dialog, accept):
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, False))
    page.click("#maintenance-end button[type=submit]")
    page.wait_for_function("() => true")
    assert len(questions) == 1 and node.node_id in questions[0]
    db.session.expire_all()
    assert service.in_maintenance(db.session.get(NodeHealth, node.node_id))
    page.once("dialog", lambda dialog: answer(dialog, True))
    page.click("#maintenance-end button[type=submit]")
    page.wait_for_selector(".flash.success:has-text('维护已结束。')")
    db.session.expire_all()
    assert not service.in_maintenance(db.session.get(NodeHealth, node.node_id))


@pytest.mark.parametrize("language, refusal", [("zh_CN", "该字段是必填字段。"), ("en", "This field is required.")])
def test_an_empty_password_reset_is_refused_by_the_server_in_the_consoles_words(page, live_server, make_user,
                                                                               language, refusal):
    """The reset form's `required` box, in a form without novalidate, was refused by Chromium itself, in its own
    English bubble on the Chinese console, and the form was never sent: the server's refusal, in the reader's
    language and tied to the box, is what is shown."""
    make_user("minister")
    make_user("alice")
    sign_in(page, live_server, "minister")
    page.wait_for_selector("h1:has-text('仪表盘')")
    page.goto(f"{live_server}/lang/{language}")
    page.goto(f"{live_server}/users/alice")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("form[action$='/users/alice/password'] button[type=submit]")
    page.wait_for_selector("form[action$='/users/alice/password'] .error", timeout=10000)
    box = page.locator("input[name=reset-password]")
    assert box.get_attribute("aria-invalid") == "true"
    error = page.locator(f"#{box.get_attribute('aria-describedby').split()[-1]}")
    assert error.inner_text() == refusal
