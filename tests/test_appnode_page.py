"""The node's page for its operator (docs/protocol.md §10, "a person"): its language switch, and the words it
shows for delivery states, message types and a contact's presence, fetched over the node's real HTTPS."""

from __future__ import annotations

import base64
import re
import ssl
import urllib.request
from datetime import UTC, datetime, timedelta
from html import unescape

from app.appnode import protocol
from app.appnode.store import Presence
from app.appnode.web import create_node_app
from tests.appnode_harness import raw_post
from tests.test_appnode import network, png, text_envelope  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)


def page(served, path: str) -> str:
    context = ssl.create_default_context(cafile=str(served.node.identity.bundle_file))
    credentials = base64.b64encode(b"operator:operator-password").decode()
    request = urllib.request.Request(f"https://127.0.0.1:{served.port}{path}",
                                     headers={"Authorization": f"Basic {credentials}"})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        return response.read().decode()


def heading(html: str) -> str:
    return re.search(r"<h1>(.*?)</h1>", html, re.S).group(1).strip()


def switch_link(html: str) -> str:
    return unescape(re.search(r'<div class="account">\s*<a href="([^"]+)"', html).group(1))


def test_the_language_switch_goes_both_ways_and_keeps_the_user(network):  # noqa: F811
    b = network["b"]
    english = page(b, "/?user=lisi&lang=en")
    assert heading(english) == "Conversations"
    to_chinese = switch_link(english)
    assert to_chinese.count("lang=") == 1 and "lang=zh_CN" in to_chinese and "user=lisi" in to_chinese
    chinese = page(b, to_chinese)
    assert heading(chinese) == "会话"
    assert heading(page(b, switch_link(chinese))) == "Conversations"


def test_the_conversation_page_names_delivery_message_types_and_the_contacts_presence(network):  # noqa: F811
    a, b = network["a"], network["b"]
    sent = a.node.send_file("zhangsan", b.user("lisi"), png(), "image", file_name="现场.png")
    b.node.set_presence("lisi", "busy", "android")
    assert b.node.flush_ephemeral() == 1
    path = f"/conversation?user=zhangsan&id={sent.conversation_id}"
    english = page(a, path + "&lang=en")
    assert "<th>Sender</th>" in english and "[Image] 现场.png" in english
    assert "<td>Delivered</td>" in english
    assert re.search(r"Presence:\s*Busy · android · last active \d{4}-", english)
    chinese = page(a, path + "&lang=zh_CN")
    assert "[图片] 现场.png" in chinese and "在线状态" in chinese and "<td>delivered</td>" not in chinese


def test_a_peers_time_at_the_end_of_the_calendar_is_shown_as_sent_instead_of_failing_the_page(network):  # noqa: F811
    """9999-12-31T23:59:59Z names a moment, but none in UTC+08:00: the list and the conversation answered 500.
    A message's send_time that far ahead is refused at the door now (stale_timestamp), and so is a presence's
    last_active; what a node kept from before those rules is still shown."""
    a, b = network["a"], network["b"]
    envelope = text_envelope(a, b, "来自未来", message={"send_time": "9999-12-31T23:59:59Z"})
    status, body = raw_post(a.node, b, "message", envelope)
    assert (status, body["error"]["code"], body["error"]["field"]) == (400, "stale_timestamp", "payload.send_time")
    envelope = text_envelope(a, b, "你好")
    assert raw_post(a.node, b, "message", envelope)[0] == 200
    now = protocol.format_timestamp(datetime.now(UTC))
    presence = {"items": [{"user_id": a.user("zhangsan"), "status": "online", "client_type": "pc",
                           "last_active": "9999-12-31T23:59:59Z", "updated_at": now}]}
    ephemeral = protocol.make_envelope(from_node=a.id, to_node=b.id, type="ephemeral", payload={"presence": presence})
    status, body = raw_post(a.node, b, "ephemeral", ephemeral)
    assert (status, body["error"]["code"], body["error"]["field"]) == (400, "stale_timestamp",
                                                                       "payload.presence.items[0].last_active")
    with b.node.db.begin() as session:  # kept from before that rule
        session.add(Presence(**presence["items"][0], peer_node=a.id))
    assert envelope["payload"]["conversation_id"] in page(b, "/?user=lisi")  # listed, the page whole
    conversation = page(b, f"/conversation?user=lisi&id={envelope['payload']['conversation_id']}")
    assert "9999-12-31T23:59:59Z" in conversation and "你好" in conversation


def test_a_user_or_conversation_the_node_does_not_have_is_refused_on_a_page_in_the_readers_language(network):  # noqa: F811
    """The operator's page answered an unknown user or conversation in its address with the protocol's English
    JSON ({"error": {"code": "not_found", "message": "no messages in …"}})."""
    import urllib.error

    b = network["b"]
    for path, chinese, english in (("/?user=nobody", "本节点没有这个用户或这个会话。", "This node has no such user"),
                                   ("/conversation?user=lisi&id=s:0", "本节点没有这个用户或这个会话。",
                                    "no such conversation")):
        for lang, words in (("zh_CN", chinese), ("en", english)):
            try:
                page(b, f"{path}&lang={lang}")
            except urllib.error.HTTPError as refused:
                html = refused.read().decode()
                assert refused.code == 404 and refused.headers["Content-Type"].startswith("text/html")
                assert words in html and '"error"' not in html, html
            else:
                raise AssertionError(f"{path} was not refused")


def test_the_language_switch_keeps_the_query_as_given_and_builds_nothing_from_it(network):  # noqa: F811
    """The query went to url_for as keywords: `?endpoint=x` and `?_method=POST` failed the page (500), and
    `_external=1` made the link absolute, to whatever `_scheme` said. Now the link is this page's path and its
    query, repeated names kept, with only `lang` replaced."""
    from urllib.parse import parse_qsl, urlsplit

    a, b = network["a"], network["b"]
    sent = a.node.send_text("zhangsan", b.user("lisi"), "在吗")
    for path in ("/", "/conversation"):
        for query in ("endpoint=x", "_method=POST", "_external=1&_scheme=javascript&_anchor=%0Aalert(1)",
                      "tag=a&tag=b&lang=zh_CN"):
            link = switch_link(page(a, f"{path}?user=zhangsan&id={sent.conversation_id}&lang=en&{query}"))
            parts = urlsplit(link)
            assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == ("", "", path, ""), link
            assert parse_qsl(parts.query) == [("user", "zhangsan"), ("id", sent.conversation_id),
                                              *[(name, value) for name, value in parse_qsl(query) if name != "lang"],
                                              ("lang", "zh_CN")], link


def operator(password: str = "operator-password") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"operator:{password}".encode()).decode()}


def test_an_empty_or_missing_password_file_disables_the_page_instead_of_opening_it(network):  # noqa: F811
    """An empty file let anyone in with an empty password, and a missing one failed every request (500): both
    answer 503 now, saying how to turn the page on, and no password is taken."""
    b = network["b"]
    client = create_node_app(b.node).test_client()
    password_file = b.dir / "ui_password"
    for state in ("empty", "missing"):
        if state == "empty":
            password_file.write_text("\n")
        else:
            password_file.unlink()
        for headers in ({}, operator(""), operator("operator-password")):
            answer = client.get("/?lang=en", headers=headers)
            assert answer.status_code == 503, (state, headers, answer.status_code)
            assert "The operator page is disabled" in answer.text and "ui_password" in answer.text
        assert "操作员页面未启用" in client.get("/conversation?user=lisi&id=s:0").text
        assert client.get("/api/v1/health").status_code == 200  # peers are not the operator
    password_file.write_text("operator-password")
    password_file.chmod(0o600)
    assert client.get("/?lang=en", headers=operator()).status_code == 200
    assert client.get("/?lang=en", headers=operator("")).status_code == 401


def test_a_short_or_exposed_operator_password_disables_the_page(network, caplog):  # noqa: F811
    """The page shares its port with the federation API, so anyone who reaches the node can guess: a password
    written by hand ("1") was taken, as was a file other users of the machine could read (`echo pw > file`),
    and a thousand wrong guesses left no trace. `init` writes 16 characters, readable by the owner only."""
    b = network["b"]
    client = create_node_app(b.node).test_client()
    password_file = b.dir / "ui_password"
    password_file.write_text("1\n")
    password_file.chmod(0o600)
    for headers in ({}, operator("1")):
        answer = client.get("/?lang=en", headers=headers)
        assert answer.status_code == 503 and "shorter than 12 characters" in answer.text, answer.text
    password_file.write_text("a-long-enough-password")
    password_file.chmod(0o644)
    answer = client.get("/?lang=en", headers=operator("a-long-enough-password"))
    assert answer.status_code == 503 and "chmod 600" in answer.text, answer.text
    assert "chmod 600" in client.get("/", headers=operator("a-long-enough-password")).text  # in Chinese too
    password_file.chmod(0o600)
    assert client.get("/?lang=en", headers=operator("a-long-enough-password")).status_code == 200
    with caplog.at_level("WARNING", logger="mpim.appnode.web"):
        for _ in range(5):
            assert client.get("/?lang=en", headers=operator("guess")).status_code == 401
    failed = [record.getMessage() for record in caplog.records if "operator login failed" in record.getMessage()]
    assert len(failed) == 1, failed  # logged, once a minute for an address, not once a guess


def test_the_page_is_never_cached_framed_or_sniffed(network):  # noqa: F811
    """The operator's page shows users' messages: a shared browser's cache kept them, and any site could frame
    the page. The federation API only gains nosniff."""
    b = network["b"]
    client = create_node_app(b.node).test_client()
    for path, headers in (("/?lang=en", operator()), ("/?lang=en", {}), ("/conversation?user=lisi&id=s:0", operator())):
        answer = client.get(path, headers=headers)
        assert answer.status_code in (200, 401, 404), answer.status_code
        assert answer.headers["Cache-Control"] == "no-store", path
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    health = client.get("/api/v1/health")
    assert health.headers["X-Content-Type-Options"] == "nosniff" and "X-Frame-Options" not in health.headers


def test_the_page_says_when_the_node_is_in_trouble(network):  # noqa: F811
    """`status` showed a certificate or registry problem and the outbox's failed envelopes; the page, where the
    operator looks, said nothing and looked healthy."""
    from sqlalchemy import update

    from app.appnode.store import Outbox, put_setting

    a, b = network["a"], network["b"]
    client = create_node_app(a.node).test_client()
    assert 'class="banner' not in client.get("/?lang=en", headers=operator()).text
    for _ in range(2):  # held, as while the peer is unreachable
        a.node.send_text("zhangsan", b.user("lisi"), "在吗", deliver=False)
    with a.node.db.begin() as session:
        put_setting(session, "certificate_problem", "the certificate <b>was revoked</b>")
        put_setting(session, "registry_problem", "node_suspended: the node is suspended")
        session.execute(update(Outbox).where(Outbox.id == session.query(Outbox.id).limit(1).scalar_subquery())
                        .values(state="failed"))
    english = client.get("/?lang=en", headers=operator()).text
    assert "Certificate problem: the certificate &lt;b&gt;was revoked&lt;/b&gt;" in english
    assert "Management node problem: node_suspended: the node is suspended" in english
    assert "Outbox: 1 failed, 1 waiting to be delivered" in english
    chinese = client.get(f"/conversation?user=zhangsan&id={a.node.conversations('zhangsan')[0]['conversation_id']}",
                         headers=operator()).text
    assert "证书问题" in chinese and "管理节点问题" in chinese and "发件箱：1 条失败，1 条等待投递" in chinese
    assert "node_suspended" not in client.get("/?lang=en").text  # not to whoever is refused


def test_direction_overrides_in_a_message_are_shown_not_obeyed(network):  # noqa: F811
    """"pay to \u202e1234567\u202c" showed as "pay to 7654321": a peer's text may hold any character (A.4), so
    the page shows each direction control as its code point instead of letting it reorder what follows."""
    a, b = network["a"], network["b"]
    sent = a.node.send_text("zhangsan", b.user("lisi"), "pay to \u202e1234567\u202c, \u2067ok\u2069")
    html = create_node_app(b.node).test_client().get(
        f"/conversation?user=lisi&id={sent.conversation_id}&lang=en", headers=operator()).text
    assert "pay to [U+202E]1234567[U+202C], [U+2067]ok[U+2069]" in html
    assert not any(ch in html for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def with_conversations(served, count: int) -> list[str]:
    """`count` more single conversations of `lisi`, one message each from another user of the peer, as a
    peer's many users would make them; their ids, newest first."""
    import copy
    import uuid

    from sqlalchemy import select

    from app.appnode.store import Message

    with served.node.db.begin() as session:
        model = session.scalars(select(Message)).first()
        fields = {column.name: getattr(model, column.name) for column in Message.__table__.columns}
        made = []
        for n in range(count):
            message_id, document = str(uuid.uuid4()), copy.deepcopy(fields["document"])
            later = protocol.parse_timestamp(fields["send_time"]) + timedelta(seconds=n + 1)
            document.update(message_id=message_id, conversation_id=f"s:{uuid.uuid4().hex}",
                            send_time=protocol.format_timestamp(later))
            document["sender"]["user_id"] = f"v{n}"
            session.add(Message(**{**fields, "message_id": message_id, "document": document,
                                   "sender_address": f"v{n}@{model.origin_node}",
                                   "conversation_id": document["conversation_id"],
                                   "send_time": protocol.sortable_time(document["send_time"])}))
            made.append(document["conversation_id"])
    return made[::-1]


def statements(served, path: str) -> int:
    """How many SQL statements the page at `path` ran."""
    from sqlalchemy import event

    seen = []
    listener = lambda *args: seen.append(args[2])  # noqa: E731
    event.listen(served.node.engine, "before_cursor_execute", listener)
    try:
        assert create_node_app(served.node).test_client().get(path, headers=operator()).status_code == 200
    finally:
        event.remove(served.node.engine, "before_cursor_execute", listener)
    return len(seen)


def test_the_conversation_list_costs_the_same_queries_however_many_conversations(network):  # noqa: F811
    """A query or two per conversation, and every message of the user loaded: a peer's 20,000 conversations
    took the page 8-12 s and 5.9 MB."""
    a, b = network["a"], network["b"]
    a.node.send_text("zhangsan", b.user("lisi"), "你好")
    with_conversations(b, 2)
    few = statements(b, "/?user=lisi&lang=en")
    with_conversations(b, 30)
    assert statements(b, "/?user=lisi&lang=en") == few
    counted = {row["conversation_id"]: (row["count"], row["unread"]) for row in b.node.conversations("lisi")}
    assert len(counted) == 33 and set(counted.values()) == {(1, 1)}


def test_the_conversation_list_is_paged_newest_first(network):  # noqa: F811
    a, b = network["a"], network["b"]
    first = a.node.send_text("zhangsan", b.user("lisi"), "你好")
    b.node.mark_read("lisi", first.conversation_id)
    newest = with_conversations(b, 60)
    client = create_node_app(b.node).test_client()
    listed = re.compile(r"<code>(s:[0-9a-f]+)</code>")
    page_one = client.get("/?user=lisi&lang=en", headers=operator()).text
    assert listed.findall(page_one) == newest[:50]
    older = unescape(re.search(r'<a href="([^"]+)" rel="next">Older conversations</a>', page_one).group(1))
    page_two = client.get(older, headers=operator()).text
    assert listed.findall(page_two) == [*newest[50:], first.conversation_id]
    assert "Older conversations" not in page_two and "Newest conversations" in page_two
    cli_rows = b.node.conversations("lisi")  # all of them, the read one read
    assert len(cli_rows) == 61 and (cli_rows[-1]["unread"], cli_rows[0]["unread"]) == (0, 1)


def test_a_group_of_one_is_counted_as_one_member(network):  # noqa: F811
    """A group whose owner removed everyone else read "1 members"."""
    a, b = network["a"], network["b"]
    a.node.create_group("zhangsan", "值班组")
    a.node.create_group("zhangsan", "专案组", members=[b.user("lisi")])
    client = create_node_app(a.node).test_client()
    english = client.get("/?user=zhangsan&lang=en", headers=operator()).text
    assert "值班组 <code>" in english and " · 1 member · " in english and " · 2 members · " in english
    chinese = client.get("/?user=zhangsan&lang=zh_CN", headers=operator()).text
    assert " · 1 名成员 · " in chinese and " · 2 名成员 · " in chinese
