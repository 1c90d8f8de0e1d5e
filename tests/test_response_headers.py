"""The management node's pages carry the headers a browser needs to keep them where they belong: not framed by
another site (clickjacking an approval or a revocation), no script or style but the console's own files, no
sniffing of a download into a page, and no signed-in page kept in a shared browser's cache."""

from __future__ import annotations

import pytest

from tests.conftest import Console
from tests.test_console_browser import sign_in


def test_console_pages_carry_the_policy_and_are_not_cached(app, make_user):
    make_user("minister")
    console = Console(app.test_client())
    for response in (console.client.get("/login"), console.client.get("/no-such-page")):
        assert response.mimetype == "text/html"
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy and "style-src 'self'" in policy
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["Cache-Control"] == "no-store"
    console.login("minister")
    assert console.client.get("/").headers["Cache-Control"] == "no-store"


def test_api_and_static_answers_keep_their_own_caching(app, client):
    divisions = client.get("/api/v1/divisions/360000")
    assert divisions.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in divisions.headers.get("Cache-Control", "")
    crl = client.get("/ca/crl.pem")
    assert crl.headers["Cache-Control"] == "public, no-cache" and crl.headers["X-Content-Type-Options"] == "nosniff"
    style = client.get("/static/css/console.css")
    assert "no-store" not in style.headers.get("Cache-Control", "")


@pytest.mark.parametrize("username", ["minister", "jx-admin"])
def test_the_console_breaks_no_rule_of_its_own_policy_in_a_real_browser(page, live_server, make_user, username):
    """Every page a walk opens, with the policy in force: an inline style or script the policy refuses is reported
    on the browser's console ("Refused to apply inline style ...") and fails here."""
    make_user("minister")
    make_user("jx-admin", "provincial_admin", ("360000",))
    refused = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
            else None)
    sign_in(page, live_server, username)
    page.wait_for_selector("nav.mainnav")
    links = page.eval_on_selector_all("nav.mainnav a", "links => links.map(link => link.href)")
    for url in [*links, f"{live_server}/applications/new", f"{live_server}/divisions/360000"]:
        page.goto(url)
    assert len(links) >= 3 and refused == []
