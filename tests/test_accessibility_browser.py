"""The console for people on the keyboard alone or with a screen reader (WCAG 2.1 AA, which GB/T 37668
follows), in a real Chromium: what its accessibility tree says of each page, and the main flows driven with
Tab, Enter and Space only."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD
from tests.test_console_browser import _one_of_each_row, sign_in

# Roles a reader operates: each must have a name, or a screen reader says only "button" or "edit text".
CONTROL_ROLES = {"button", "checkbox", "combobox", "link", "listbox", "radio", "searchbox", "spinbutton",
                 "textbox", "menuitem", "tab", "switch", "slider"}


def ax_tree(page) -> list[dict]:
    """Chromium's own accessibility tree of the page (what a screen reader is given), not a guess from the DOM."""
    session = page.context.new_cdp_session(page)
    try:
        nodes = session.send("Accessibility.getFullAXTree")["nodes"]
    finally:
        session.detach()
    return [{"role": node.get("role", {}).get("value"), "name": node.get("name", {}).get("value", ""),
             "description": node.get("description", {}).get("value", ""),
             "properties": {p["name"]: p["value"].get("value") for p in node.get("properties", [])}}
            for node in nodes if not node.get("ignored")]


def press_tab_until(page, test: str, limit: int = 60, key: str = "Tab") -> None:
    """Tab (only the key) until the focused element passes the JavaScript `test(element)`."""
    for _ in range(limit):
        page.keyboard.press(key)
        if page.evaluate(f"() => {{ const e = document.activeElement; return Boolean(e && ({test})(e)); }}"):
            return
    raise AssertionError(f"{test} never took the focus in {limit} presses of Tab")


def keyboard_sign_in(page, live_server, username: str) -> None:
    page.goto(f"{live_server}/login")
    assert page.evaluate("document.activeElement.name") == "username"  # the form starts with the focus
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector("h1:has-text('仪表盘')")


def _paths() -> dict[str, str]:
    """The pages of the main flows, each with a row of every kind in it (see _one_of_each_row)."""
    from sqlalchemy import select

    from app.admission.models import Application, Node
    from app.auth import console_sessions
    from app.auth.models import User
    from app.extensions import db
    from app.pki.models import Certificate

    for username in ("minister", "jx-admin"):  # signed in on another machine too: the sessions tables have rows
        console_sessions.start(db.session.scalars(select(User).where(User.username == username)).one(),
                               remote_addr="10.36.1.7", user_agent="Mozilla/5.0 (Windows NT 10.0; Win64; x64) "
                               "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")
    db.session.commit()

    node = db.session.scalars(select(Node)).one()
    pending = db.session.scalars(select(Application).where(Application.status == "pending")).one()
    certificate = db.session.scalars(select(Certificate).where(Certificate.node_id == node.node_id)).first()
    return {
        "dashboard": "/", "divisions": "/divisions/", "division": "/divisions/360100",
        "division-search": "/divisions/?q=南昌", "applications": "/applications/",
        "application": f"/applications/{pending.id}", "application-new": "/applications/new",
        "nodes": "/nodes/?sort=org_name", "node": f"/nodes/{node.node_id}", "resolve": "/nodes/resolve?division=360102",
        "certificates": "/certificates/", "certificate": f"/certificates/{certificate.serial}",
        "tokens": "/tokens/", "users": "/users/", "user": "/users/jx-admin", "user-new": "/users/new",
        "audit": "/audit/", "health-events": "/health/events", "routes": "/routes/", "password": "/account/password",
        "sessions": "/account/sessions",
        "not-found": "/nodes/99999999999999999999",
    }


PAGES = ["dashboard", "divisions", "division", "division-search", "applications", "application", "application-new",
         "nodes", "node", "resolve", "certificates", "certificate", "tokens", "users", "user", "user-new", "audit",
         "health-events", "routes", "password", "sessions", "not-found"]


def check_page(page, language: str) -> None:
    """What every console page owes a keyboard or screen reader user, in either language."""
    assert page.evaluate("document.documentElement.lang") == {"zh_CN": "zh-CN", "en": "en"}[language]
    tree = ax_tree(page)
    unnamed = [node for node in tree if node["role"] in CONTROL_ROLES and not node["name"].strip()]
    assert not unnamed, f"controls without a name: {unnamed}"
    headers = [node for node in tree if node["role"] == "columnheader"]
    assert all(node["name"].strip() for node in headers), f"a column with no name: {headers}"
    roles = [node["role"] for node in tree]
    assert roles.count("banner") == 1 and roles.count("main") == 1
    navigations = [node for node in tree if node["role"] == "navigation"]
    assert all(node["name"] for node in navigations), f"navigation landmarks not told apart: {navigations}"

    levels = page.eval_on_selector_all("h1, h2, h3, h4, h5, h6", "hs => hs.map(h => Number(h.tagName[1]))")
    assert levels.count(1) == 1 and levels[0] == 1, levels
    assert all(b <= a + 1 for a, b in zip(levels, levels[1:], strict=False)), f"a heading level skipped: {levels}"

    # The first Tab of a page reaches the skip link (the sign-in page starts in its first field: it is back
    # from there); following it puts the focus on the page, and the next Tab goes on inside it.
    if page.evaluate("document.activeElement === document.body"):
        page.keyboard.press("Tab")
    else:
        press_tab_until(page, "e => e.classList.contains('skip-link')", key="Shift+Tab", limit=10)
    assert page.evaluate("document.activeElement.getAttribute('href')") == "#content"
    words = {"zh_CN": "跳到正文", "en": "Skip to content"}[language]
    assert page.evaluate("document.activeElement.textContent") == words
    assert page.evaluate("document.activeElement.getBoundingClientRect().top >= 0")  # seen once it has the focus
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.tagName") == "MAIN"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('main') !== null")


@pytest.mark.parametrize("name", PAGES)
def test_every_page_is_named_landmarked_and_skippable_in_both_languages(page, live_server, make_user, name):
    _one_of_each_row(make_user)
    path = _paths()[name]
    sign_in(page, live_server, "minister")
    for language in ("zh_CN", "en"):
        page.goto(f"{live_server}/lang/{language}")
        page.goto(f"{live_server}{path}")
        check_page(page, language)


def test_the_sign_in_page_and_its_refusal(page, live_server, make_user):
    """Signed out, in both languages; a refused sign-in interrupts the reader (role=alert), a success
    does not."""
    make_user("minister")
    for language in ("en", "zh_CN"):
        page.goto(f"{live_server}/lang/{language}")
        page.goto(f"{live_server}/login")
        check_page(page, language)
    sign_in(page, live_server, "minister", "Not-The-Password-1")
    assert page.get_attribute(".flash.error", "role") == "alert"


def test_the_navigation_marks_the_page_shown(page, live_server, make_user):
    make_user("minister")
    sign_in(page, live_server, "minister")
    page.goto(f"{live_server}/users/")
    current = page.eval_on_selector_all("nav.mainnav [aria-current=page]", "links => links.map(a => a.textContent)")
    assert current == ["用户"]
    page.goto(f"{live_server}/users/new")  # a page inside the section: its link is the current one of the set
    assert page.eval_on_selector_all("nav.mainnav [aria-current]", "links => links.map(a => [a.textContent, "
                                     "a.getAttribute('aria-current')])") == [["用户", "true"]]


def test_a_field_in_error_says_so_and_reads_its_error(page, live_server, make_user):
    """The server's refusal is on the field: marked invalid, with the error as its description, and focused."""
    make_user("minister")
    sign_in(page, live_server, "minister")
    page.goto(f"{live_server}/users/new")
    page.fill("input[name=username]", "x")
    page.fill("input[name=password]", "short")
    page.press("input[name=password]", "Enter")
    page.wait_for_selector(".field.has-error")
    focused = page.evaluate("""() => { const e = document.activeElement;
        return {name: e.name, invalid: e.getAttribute('aria-invalid'),
                described: (e.getAttribute('aria-describedby') || '').split(' ').filter(Boolean)
                    .map(id => document.getElementById(id).textContent)}; }""")
    errors = page.eval_on_selector_all(f".field.has-error:has([name={focused['name']}]) .error",
                                       "es => es.map(e => e.textContent)")
    assert focused["invalid"] == "true" and errors and set(errors) <= set(focused["described"])
    described = [node for node in ax_tree(page) if node["role"] == "textbox" and errors[0] in node["description"]]
    assert described, "the error is not the field's accessible description"


def test_the_csr_file_limit_is_announced_and_tied_to_its_input(page, live_server, make_user):
    make_user("jx-admin", "provincial_admin", ("360000",))
    sign_in(page, live_server, "jx-admin")
    page.goto(f"{live_server}/applications/new")
    page.set_input_files("input[name=csr_file]", files=[
        {"name": "big.csr", "mimeType": "application/octet-stream", "buffer": b"x" * 2_000_000}])
    note = page.wait_for_selector(".error.file-limit")
    assert note.get_attribute("role") == "alert"
    assert page.get_attribute("input[name=csr_file]", "aria-invalid") == "true"
    assert note.get_attribute("id") in page.get_attribute("input[name=csr_file]", "aria-describedby").split()


def test_approving_an_application_with_the_keyboard_alone(page, live_server, make_user):
    """Sign in, reach the applications list from the navigation, open the application, think again at the
    confirmation, then approve: Tab, Enter and Space only, never a click."""
    _one_of_each_row(make_user)
    keyboard_sign_in(page, live_server, "minister")
    press_tab_until(page, "e => e.closest('nav.mainnav') && e.textContent === '接入申请'")
    page.keyboard.press("Enter")
    page.wait_for_selector("h1:has-text('接入申请')")
    press_tab_until(page, "e => e.closest('table.list') && e.tagName === 'A'")
    page.keyboard.press("Enter")
    page.wait_for_selector("#csr-key")
    press_tab_until(page, "e => e.id === 'approve'")
    questions = []

    def answer(dialog, accept):
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, False))  # the browser's own confirmation: Escape
    page.keyboard.press("Space")
    page.wait_for_function("() => document.activeElement.id === 'approve'")  # nothing sent, focus kept
    assert page.inner_text("#application-status") == "待审核"
    page.once("dialog", lambda dialog: answer(dialog, True))
    page.keyboard.press("Enter")
    page.wait_for_selector("#node-status")
    assert len(questions) == 2 and "节点编号" in questions[0]
    assert page.get_attribute(".flash.success", "role") == "status"


def test_revoking_a_certificate_with_the_keyboard_alone(page, live_server, make_user):
    from sqlalchemy import select

    from app.admission.models import Node
    from app.extensions import db
    from app.pki.models import Certificate

    _one_of_each_row(make_user)
    node = db.session.scalars(select(Node)).one()
    serial = db.session.scalars(select(Certificate.serial).where(Certificate.node_id == node.node_id)).first()
    keyboard_sign_in(page, live_server, "minister")
    press_tab_until(page, "e => e.closest('nav.mainnav') && e.textContent === '证书'")
    page.keyboard.press("Enter")
    page.wait_for_selector("h1:has-text('证书')")
    press_tab_until(page, f"e => e.closest('table.list') && e.href && e.href.endsWith('{serial}')")
    page.keyboard.press("Enter")
    page.wait_for_selector("#fingerprint")
    press_tab_until(page, "e => e.name === 'reason'")
    page.keyboard.press("ArrowDown")  # a closed select changes its choice with the arrow keys
    chosen = page.evaluate("document.activeElement.value")
    press_tab_until(page, "e => e.tagName === 'BUTTON' && e.classList.contains('danger')")
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("Enter")
    page.wait_for_selector(".flash.success")
    db.session.expire_all()
    assert db.session.get(Certificate, serial).revocation_reason == chosen


FOCUS_STYLE = """e => { const s = getComputedStyle(e);
    return {style: s.outlineStyle, width: parseFloat(s.outlineWidth), colour: s.outlineColor}; }"""


def test_the_keyboard_focus_is_drawn_on_links_buttons_and_fields(page, live_server, make_user):
    """A 2 px ring in the brand blue (white on the blue header), where unfocused there is none."""
    _one_of_each_row(make_user)
    sign_in(page, live_server, "minister")
    page.goto(f"{live_server}/nodes/")
    targets = [("header .account a", "rgb(255, 255, 255)"), ("main table.list a", "rgb(11, 61, 145)"),
               ("main form.filters input[name=q]", "rgb(11, 61, 145)"),
               ("main form.filters button", "rgb(11, 61, 145)")]
    for selector, colour in targets:
        before = page.eval_on_selector(selector, FOCUS_STYLE)
        press_tab_until(page, f"e => e === document.querySelector({selector!r})")
        after = page.eval_on_selector(selector, FOCUS_STYLE)
        assert before["style"] == "none", (selector, before)
        assert after["style"] == "solid" and after["width"] >= 2 and after["colour"] == colour, (selector, after)


def test_a_link_in_a_sentence_is_underlined(page, live_server, make_user):
    """Its blue is 1.5:1 against the text around it: colour alone does not mark it (WCAG 1.4.1)."""
    _one_of_each_row(make_user)
    sign_in(page, live_server, "minister")
    page.goto(f"{live_server}{_paths()['node']}")
    decoration = page.eval_on_selector("dl.facts dd a", "a => getComputedStyle(a).textDecorationLine")
    assert decoration == "underline"


def test_the_tile_map_is_a_group_of_named_province_links(page, live_server, make_user):
    """A tile's colour says how its province stands; a screen reader hears it as the link's name. The map is
    a group of those links, not an image (whose parts a screen reader's reading mode never enters)."""
    _one_of_each_row(make_user)
    sign_in(page, live_server, "minister")
    for language, name in (("zh_CN", "江西：启用 1，"), ("en", "Jiangxi: 1 active")):
        page.goto(f"{live_server}/lang/{language}")
        page.goto(f"{live_server}/")
        tree = ax_tree(page)
        label = {"zh_CN": "省级节点分布图", "en": "Province tile map"}[language]
        assert [node["role"] for node in tree if node["name"] == label] == ["group"]
        assert any(node["name"].startswith(name) for node in tree if node["role"] == "link")
        press_tab_until(page, "e => e.closest('svg.tilemap') !== null && e.dataset.province === '36'")


def test_the_health_charts_name_their_figures(page, live_server, make_user):
    """A chart is an image to a screen reader: its name carries what the line and the bars show."""
    _one_of_each_row(make_user)
    sign_in(page, live_server, "minister")
    page.goto(f"{live_server}{_paths()['node']}")
    images = [node["name"] for node in ax_tree(page) if node["role"] == "image"]
    assert "延迟（最近 24 小时）：无成功巡检" in images
    assert "24 小时：24 个时段中 0 个全程正常，0 个部分正常，0 个故障，24 个无数据" in images
