"""A console form is sent once (console.js): a double click or Enter twice does not do the thing twice."""

from __future__ import annotations

import re
import time

import pytest

from app.admission.models import EnrollmentToken
from app.audit.models import AuditRecord
from app.extensions import db
from tests.factories import make_csr, node_document
from tests.test_console_browser import sign_in


def count(model, *where) -> int:
    db.session.rollback()  # a fresh read of what the server's threads committed
    return db.session.scalar(db.select(db.func.count()).select_from(model).where(*where))


def slow_issue(monkeypatch):
    """The token is issued half a second late, as by a loaded server: the second click comes while the first
    answer is on its way."""
    from app.admission import tokens

    issue = tokens.create_token

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return issue(*args, **kwargs)
    monkeypatch.setattr(tokens, "create_token", slow)


def double_click(page, selector):
    """A person's double click: two clicks 0.1 s apart. (Playwright's dblclick sends both in one turn of the page's
    event loop, and Chromium sends a form submitted twice in one turn only once.)"""
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    for pause in (100, 0):
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_timeout(pause)


def open_tokens(page, live_server, make_user):
    make_user("jx-admin", "provincial_admin", ("360000",))
    sign_in(page, live_server, "jx-admin")
    page.wait_for_selector("h1:has-text('仪表盘')")
    page.goto(f"{live_server}/tokens/")
    page.fill("input[name=division_code]", "360000")
    page.fill("input[name=note]", "赣警通 试点")


@pytest.mark.parametrize("how", ["double click", "Enter twice"])
def test_a_token_form_sent_twice_quickly_issues_one_token(page, live_server, make_user, monkeypatch, how):
    """Two tokens were issued and audited, and only the second was shown: the first, never seen by anyone,
    stayed active for its 7 days."""
    open_tokens(page, live_server, make_user)
    slow_issue(monkeypatch)
    if how == "double click":
        double_click(page, "main form.filters button[type=submit]")
    else:
        page.focus("input[name=note]")
        page.keyboard.press("Enter")
        page.wait_for_timeout(100)
        page.keyboard.press("Enter")
    page.wait_for_selector("#issued-token")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(300)  # a second request, had one been sent, is answered by now
    assert count(EnrollmentToken) == 1
    assert count(AuditRecord, AuditRecord.action == "token.create") == 1
    assert page.inner_text("#issued-token").strip().startswith("mpet_")


def test_an_application_form_sent_twice_quickly_submits_one_application(page, live_server, make_user, monkeypatch):
    """The second answer blamed the user (the key is already in an application awaiting review: each node must use
    its own) although the first application was made."""
    from app.admission import applications
    from app.admission.models import Application

    make_user("jx-admin", "provincial_admin", ("360000",))
    sign_in(page, live_server, "jx-admin")
    page.wait_for_selector("h1:has-text('仪表盘')")
    page.goto(f"{live_server}/applications/new")
    document = node_document("360100")
    page.fill("input[name=division_code]", "360100")
    for name in ("org_name", "system_name", "vendor", "endpoint"):
        page.fill(f"input[name={name}]", document[name])
    page.fill("input[name=contact_name]", "张三")
    page.fill("input[name=contact_phone]", "0791-12345678")
    page.fill("input[name=contact_email]", "ops@jx.example")
    page.check("input[name=capabilities][value=text]")
    page.fill("textarea[name=csr]", make_csr())
    submit = applications.submit_by_user

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return submit(*args, **kwargs)
    monkeypatch.setattr(applications, "submit_by_user", slow)
    double_click(page, "main form button[type=submit]")
    page.wait_for_url(re.compile(r"/applications/[0-9a-f]{8,}$"))
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(300)
    assert count(Application) == 1
    assert page.locator("main .error").count() == 0


def test_a_confirmation_declined_leaves_the_form_free(page, live_server, make_user):
    """The guard marks a form only once it is really sent: declining the confirmation marks nothing."""
    open_tokens(page, live_server, make_user)
    page.click("main form.filters button[type=submit]")
    page.wait_for_selector("#issued-token")
    answers = iter([False, True])
    page.on("dialog", lambda dialog: dialog.accept() if next(answers) else dialog.dismiss())
    page.click("form.inline button.danger")  # revoke: declined
    assert page.locator("form.inline[data-sent]").count() == 0
    page.click("form.inline button.danger")  # asked again, accepted
    page.wait_for_selector(".flash.success")
    db.session.rollback()
    assert db.session.scalars(db.select(EnrollmentToken)).one().revoked_at is not None


def test_a_form_left_by_its_answer_and_come_back_to_with_back_sends_again(page, live_server, make_user):
    """The first answer refuses the division code; Back shows the form again, and it can be sent. (Chromium under
    Playwright loads the page again; a page kept in the back-forward cache is played in the next test.)"""
    open_tokens(page, live_server, make_user)
    page.fill("input[name=division_code]", "999999")
    page.click("main form.filters button[type=submit]")
    page.wait_for_selector(".has-error")
    page.go_back()
    page.wait_for_selector("main form.filters")
    page.fill("input[name=division_code]", "360000")
    page.click("main form.filters button[type=submit]")
    page.wait_for_selector("#issued-token")
    assert count(EnrollmentToken) == 1
    assert page.locator("main form.filters button[aria-disabled]").count() == 0  # the new page's form is free


def test_a_page_brought_back_from_the_back_forward_cache_is_free_again(page, live_server, make_user):
    """A page restored by Back from the back-forward cache keeps its script's state, the form marked as sent with
    it. Chromium under Playwright kept no page in that cache here (not even a plain page without no-store), so the
    restore is played: the form is sent but kept from leaving (a listener after the console's), and the page told
    it was shown again from the cache (pageshow, persisted), as a browser keeping the page would."""
    open_tokens(page, live_server, make_user)
    page.evaluate("""() => { window.held = 0;
        window.addEventListener('submit', event => { if (window.held++ === 0) event.preventDefault(); }); }""")
    state = """() => [document.querySelector('main form.filters').hasAttribute('data-sent'),
                   document.querySelector('main form.filters button').getAttribute('aria-disabled')]"""
    page.fill("input[name=division_code]", "360000")
    page.click("main form.filters button[type=submit]")
    page.click("main form.filters button[type=submit]", force=True)  # Playwright waits for aria-disabled to go
    assert page.evaluate(state) == [True, "true"] and page.evaluate("window.held") == 1  # the second is ignored
    assert page.inner_text("main form.filters button[type=submit]") == "签发"  # the button keeps its label
    looks = """() => { const style = getComputedStyle(document.querySelector('main form.filters button'));
                       return [style.cursor, style.opacity]; }"""
    assert page.evaluate(looks) == ["progress", "0.6"]  # and shows it is on its way (it looked as before)
    page.evaluate("window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))")
    assert page.evaluate(state) == [False, None]
    assert page.evaluate(looks) == ["pointer", "1"]
    page.click("main form.filters button[type=submit]")  # this time it leaves
    page.wait_for_selector("#issued-token")
    assert count(EnrollmentToken) == 1


def test_the_audit_export_answered_with_a_file_can_be_sent_again(page, live_server, make_user):
    """The export's answer is a download and the list stays: a double click gives one file, a later click
    another."""
    make_user("minister", "ministry_admin")
    sign_in(page, live_server, "minister")
    page.wait_for_selector("h1:has-text('仪表盘')")
    page.goto(f"{live_server}/audit/")
    downloads = []
    page.on("download", lambda download: downloads.append(download))
    button = page.locator("form.export button[type=submit]")
    with page.expect_download():
        double_click(page, "form.export button[type=submit]")
    page.wait_for_timeout(1000)  # a second file, had the second click sent the form, is here by now
    assert len(downloads) == 1
    page.wait_for_selector("form.export button[type=submit]:not([aria-disabled])")
    with page.expect_download():
        button.click()
    assert len(downloads) == 2
    assert count(AuditRecord, AuditRecord.action == "audit.export") == 2
    assert all(download.suggested_filename.endswith(".csv") for download in downloads)
