"""The node's operator page in a real headless Chromium, over the node's own HTTPS."""

from __future__ import annotations

from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)


def test_a_long_word_stays_inside_the_window_and_line_breaks_are_kept(browser, network):  # noqa: F811
    """A 4,980-character word made the conversation 50,266 px wide, and a message's line breaks were shown as
    spaces."""
    a, b = network["a"], network["b"]
    sent = a.node.send_text("zhangsan", b.user("lisi"), "line1\nline2\n" + "A" * 4980)
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800},
                                  http_credentials={"username": "operator", "password": "operator-password"})
    try:
        page = context.new_page()
        page.goto(f"https://127.0.0.1:{b.port}/conversation?user=lisi&id={sent.conversation_id}&lang=en")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        assert page.inner_text("td.message-text").startswith("line1\nline2\nAAA")
    finally:
        context.close()
