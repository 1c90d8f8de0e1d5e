"""The admission flow in a real Chromium: token, API application, approval, the node appears."""

from __future__ import annotations

import json
import urllib.request

from app.admission.models import EnrollmentToken
from app.extensions import db
from tests.conftest import screenshot
from tests.factories import node_document
from tests.test_console_browser import sign_in
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def sign_out(page):
    page.click("form[action='/logout'] button")
    page.wait_for_selector("input[name=username]")


def test_token_application_approval_and_the_node_appears(page, live_server, make_user):
    make_user("jx-admin", "provincial_admin", ("360000",))
    make_user("minister", "ministry_admin")
    page.on("dialog", lambda dialog: dialog.accept())  # the console confirms destructive actions

    sign_in(page, live_server, "jx-admin")
    page.click("nav.mainnav >> text=接入令牌")
    page.fill("input[name=division_code]", "360000")
    page.fill("input[name=note]", "赣警通 试点")
    page.click("form.filters button[type=submit]")
    token = page.inner_text("#issued-token").strip()
    assert token.startswith("mpet_")
    screenshot(page, "admission-token")
    page.reload()  # reads the list again: the form is not sent a second time, and the token is not shown again
    page.wait_for_selector("form.filters")
    assert page.locator("#issued-token").count() == 0 and f"{token[:11]}…" in page.inner_text("table.list")
    assert db.session.scalar(db.select(db.func.count()).select_from(EnrollmentToken)) == 1
    sign_out(page)

    request = urllib.request.Request(
        f"{live_server}/api/v1/applications", method="POST",
        data=json.dumps(node_document("360100", endpoint="https://im.nc.jx.example")).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        application = json.loads(response.read())
    assert response.status == 201 and application["status"] == "pending"

    sign_in(page, live_server, "minister")
    page.click("nav.mainnav >> text=接入申请")
    page.click("table.list a")
    page.wait_for_selector("#csr-key")
    assert "EC P-256" in page.inner_text("#csr-key")
    assert "江西省 / 南昌市" in page.inner_text("main")
    screenshot(page, "admission-review")
    page.click("#approve")
    page.wait_for_selector("#node-status")
    node_id = page.inner_text("h1 code")
    assert node_id == "36010000002025000001"
    screenshot(page, "admission-node")
    page.click("nav.mainnav >> text=节点")
    page.wait_for_selector(f"text={node_id}")
    page.goto(f"{live_server}/")
    screenshot(page, "dashboard-with-node")
    assert page.locator("svg.tilemap [data-province='36'] rect").get_attribute("fill") != "#e3e7eb"


def test_a_csr_file_over_the_limit_is_refused_in_the_browser_and_keeps_the_form(page, live_server, make_user):
    """Sent, a 2 MB file would be a 413 from the server and the typed form would be gone."""
    from app.admission.models import Application
    from app.extensions import db

    make_user("jx-admin", "provincial_admin", ("360000",))
    sign_in(page, live_server, "jx-admin")
    page.wait_for_selector("h1:has-text('仪表盘')")
    page.goto(f"{live_server}/applications/new")
    page.fill("input[name=org_name]", "江西省公安厅")
    page.fill("input[name=system_name]", "赣警通")
    page.set_input_files("input[name=csr_file]", files=[
        {"name": "big.csr", "mimeType": "application/octet-stream", "buffer": b"x" * 2_000_000}])
    page.wait_for_selector(".error.file-limit")
    assert "64 KB" in page.inner_text(".error.file-limit")
    page.click("main button[type=submit]")

    assert page.url.endswith("/applications/new")
    assert page.input_value("input[name=org_name]") == "江西省公安厅"  # nothing typed is lost
    assert page.input_value("input[name=system_name]") == "赣警通"
    screenshot(page, "admission-csr-file-too-large")
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


def test_probe_refused_before_approval_shows_that_it_is_expected(page, live_server, make_user):
    """The page's script shows the hint under the refusal, not only the JSON carrying it."""
    import socket

    from app.admission import applications
    from app.extensions import db
    from tests.factories import NodeKeys

    make_user("minister", "ministry_admin")
    jx = make_user("jx-admin", "provincial_admin", ("360000",))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    keys = NodeKeys()
    application = applications.submit_by_user(
        node_document("360000", csr=keys.csr, endpoint=f"https://127.0.0.1:{port}"), by=jx)
    db.session.commit()
    sign_in(page, live_server, "minister")
    page.wait_for_selector("nav.mainnav")
    page.goto(f"{live_server}/applications/{application.id}")
    page.click("#probe")
    page.wait_for_selector("#probe-result .hint")
    assert page.inner_text("#probe-result").startswith("✗ 连接被拒绝")
    assert page.inner_text("#probe-result .hint") == \
        "应用节点通常在获批并取得证书后才开始提供服务，因此批准前连接被拒绝属正常现象。"


# Labels side by side (fields in one line of a wrapping form, check boxes in one line of their group): the
# pairs whose label boxes are more than 1 px apart vertically.
MISALIGNED_LABELS = """(form) => {
  const labels = [...form.querySelectorAll("label, legend")].filter(label => label.getClientRects().length);
  const boxes = labels.map(label => ({text: label.textContent.trim(), own: label.getBoundingClientRect(),
                                      row: label.closest(".field, li").getBoundingClientRect()}));
  const pairs = [];
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach(b => {
    const sameLine = a.row.top < b.row.bottom && b.row.top < a.row.bottom;
    const sideBySide = a.row.right <= b.row.left || b.row.right <= a.row.left;
    if (sameLine && sideBySide && (Math.abs(a.own.top - b.own.top) > 1 || Math.abs(a.own.bottom - b.own.bottom) > 1)) {
      pairs.push([a.text, b.text, a.own.top, b.own.top]);
    }
  }));
  return pairs;
}"""


def test_labels_side_by_side_line_up_on_the_token_and_application_forms(page, live_server, make_user):
    """The token form's 有效期 (a select, which Chromium drew 3 px shorter than the inputs beside it) sat 3 px
    lower than 区划代码 and 备注 in a row aligned at the bottom."""
    make_user("jx-admin", "provincial_admin", ("360000",))
    sign_in(page, live_server, "jx-admin")
    page.wait_for_selector("h1:has-text('仪表盘')")
    for language in ("zh_CN", "en"):
        page.goto(f"{live_server}/lang/{language}")
        for width in (1280, 390):
            page.set_viewport_size({"width": width, "height": 900})
            page.goto(f"{live_server}/tokens/")
            form = page.locator("main form.filters")
            assert form.locator("label").count() == 3
            assert form.evaluate(MISALIGNED_LABELS) == [], (language, width)
            page.goto(f"{live_server}/applications/new")
            form = page.locator("main form").first
            assert form.locator(".checks label").count() == 10
            assert form.evaluate(MISALIGNED_LABELS) == [], (language, width)


# page.evaluate has no timeout and awaits the promise the function returns: a clipboard write that never settles
# (no focus, a permission prompt nobody answers) would hold the test for good. Raced against a timer instead.
WRITE_CLIPBOARD = """([text, ms]) => Promise.race([
    navigator.clipboard.writeText(text).then(() => "written", error => String(error)),
    new Promise(settle => setTimeout(() => settle(`no answer in ${ms} ms`), ms))])"""


def write_clipboard(page, text: str, seconds: float = 10) -> None:
    outcome = page.evaluate(WRITE_CLIPBOARD, [text, int(seconds * 1000)])
    assert outcome == "written", f"navigator.clipboard.writeText: {outcome}"


def test_a_reason_pasted_past_its_limit_says_it_was_cut(page, live_server, people):  # noqa: F811
    """The browser cuts a pasted text at the field's maxlength without a word; a reason pasted from a letter
    would be sent cut short and nobody would know. Pasted with the keyboard, from the real clipboard."""
    node, _ = admit_with_keys(people)
    sign_in(page, live_server, "minister")
    page.goto(f"{live_server}/nodes/{node.node_id}")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server)
    reason = page.locator("form.lifecycle input[name=reason]").first

    write_clipboard(page, "理由" * 300)
    reason.focus()
    page.keyboard.press("Control+V")
    note = page.locator("form.lifecycle .paste-cut")
    note.wait_for()
    assert len(reason.input_value()) == 500
    assert note.inner_text() == "粘贴的文字超过本栏的 500 个字符，超出部分没有粘贴进来。"
    assert note.get_attribute("role") == "alert" and reason.get_attribute("aria-describedby") == \
        note.get_attribute("id")
    screenshot(page, "node-reason-paste-cut")
    page.keyboard.press("Backspace")
    assert note.count() == 0 and reason.get_attribute("aria-describedby") is None

    page.keyboard.press("Control+A")
    page.keyboard.press("Backspace")
    write_clipboard(page, "重复接入")
    page.keyboard.press("Control+V")
    assert reason.input_value() == "重复接入" and note.count() == 0  # a paste that fits says nothing


def test_a_refused_reason_comes_back_typed_focused_and_read_with_its_refusal(page, live_server, people):  # noqa: F811
    """A reason the server refuses (a bidi override pasted with it) comes back in its field, which takes the focus
    and is described by the refusal; the redirect it replaced had emptied the field."""
    node, _ = admit_with_keys(people)
    sign_in(page, live_server, "minister")
    page.goto(f"{live_server}/nodes/{node.node_id}")
    page.on("dialog", lambda dialog: dialog.accept())
    typed = "机房搬迁\u202e后恢复"
    page.fill("form.lifecycle[action$='/suspend'] input[name=reason]", typed)
    page.click("form.lifecycle[action$='/suspend'] button")
    page.wait_for_selector("form.lifecycle.has-error .error")
    reason = page.locator("form.lifecycle[action$='/suspend'] input[name=reason]")
    assert reason.input_value() == typed and reason.evaluate("e => e === document.activeElement")
    error = page.locator(f"#{reason.get_attribute('aria-describedby')}")
    assert error.inner_text() == "理由：含有控制字符。"
    screenshot(page, "node-reason-refused")


def test_an_empty_reason_is_refused_by_the_server_in_the_consoles_words(page, live_server, people):  # noqa: F811
    """Chromium refused an empty `required` reason itself, in an English bubble on the Chinese console, and the
    form was never sent: the server's refusal, in the reader's words and tied to the box, is what is shown."""
    node, _ = admit_with_keys(people)
    sign_in(page, live_server, "minister")
    page.goto(f"{live_server}/nodes/{node.node_id}")
    page.on("dialog", lambda dialog: dialog.accept())
    page.focus("form.lifecycle[action$='/suspend'] input[name=reason]")
    page.keyboard.press("Enter")
    page.wait_for_selector("form.lifecycle.has-error .error", timeout=10000)
    reason = page.locator("form.lifecycle[action$='/suspend'] input[name=reason]")
    assert reason.evaluate("e => e === document.activeElement")
    error = page.locator(f"#{reason.get_attribute('aria-describedby')}")
    assert "需要填写理由" in error.inner_text()
