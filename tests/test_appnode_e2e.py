"""End to end, all real processes on 127.0.0.1 (issue 7): the management node under gunicorn, two
reference nodes (Jiangxi 360000, Guangdong 440000) under their own gunicorn, driven through their CLI.

They go through admission, certificates and routes, then exchange text, image, voice, a file and its
download, a single chat, a group across both nodes with invite, kick and quit, read counts, a sticker and
presence. Then B is suspended and A refuses B's messages after its next route pull; B is resumed and
it works again.
"""

from __future__ import annotations

import base64
import ssl
import urllib.request

from sqlalchemy import select

from app.admission import applications, nodes, tokens
from app.admission.models import Application
from app.appnode.node import Node
from app.extensions import db
from tests.appnode_processes import ManagementNode, NodeProcess, eventually
from tests.test_appnode import GIF, PDF, adts, network, png  # noqa: F401 (network: fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)


def admit(node: NodeProcess, minister) -> str:
    """The provincial side applies through the CLI; the ministry approves; the CLI fetches the certificate."""
    _, token = tokens.create_token(node.division, by=minister)
    db.session.commit()
    joining = node.join_in_background(token)

    def pending():
        db.session.expire_all()
        return db.session.scalar(select(Application).where(Application.endpoint == node.endpoint,
                                                           Application.status == "pending"))
    applications.approve(eventually(pending, 60, what="the application"), by=minister)
    db.session.commit()
    return node.finish_join(joining)


def texts(node: Node, user: str, conversation_id: str) -> list[str]:
    if not node.conversations(user):
        return []
    return [entry["message"].document["content"].get("text") or entry["message"].msg_type
            for entry in node.history(user, conversation_id)]


def held_entry(node: Node, node_id: str) -> dict | None:
    """The entry in the table the node's server process holds now (it stores every table it accepts)."""
    node.reload_routes()
    return node.routes.entry(node_id)


def test_two_nodes_join_and_exchange_every_appendix_a_message(app, people, tmp_path):  # noqa: F811, PLR0915
    minister, _ = people
    registry = ManagementNode(app.config["SQLALCHEMY_DATABASE_URI"], app.config["MPIM_INSTANCE_PATH"],
                              log=tmp_path / "registry.log")
    jx = NodeProcess(tmp_path, "jx", registry.url, "360000", "江西省公安厅")
    gd = NodeProcess(tmp_path, "gd", registry.url, "440000", "广东省公安厅")
    try:
        assert admit(jx, minister).startswith("360000000020250")
        assert admit(gd, minister).startswith("440000000020250")
        jx.cli("users", "add", "zhangsan", "张三")
        jx.cli("users", "add", "wangwu", "王五")
        gd.cli("users", "add", "lisi", "李四")
        gd.cli("users", "add", "zhaoliu", "赵六")
        jx.start()
        gd.start()
        a, b = Node(jx.data), Node(gd.data)  # the test reads each node's own database, as its page does
        zhangsan, wangwu, lisi, zhaoliu = (jx.address("zhangsan"), jx.address("wangwu"), gd.address("lisi"),
                                           gd.address("zhaoliu"))

        # --- single chat: text, image, voice, file (+ download), sticker --------------------------------------
        sent = jx.cli("send", "--as", "zhangsan", lisi, "下午三点在指挥中心开会。")
        single = sent["conversation_id"]
        files = tmp_path / "files"
        files.mkdir()
        (files / "现场.png").write_bytes(png(4, 3))
        (files / "语音.aac").write_bytes(adts(1500))
        (files / "协查通报.pdf").write_bytes(PDF)
        (files / "ok.gif").write_bytes(GIF)
        image = jx.cli("send-file", "--as", "zhangsan", "--kind", "image", lisi, str(files / "现场.png"))
        jx.cli("send-file", "--as", "zhangsan", "--kind", "voice", "--duration-ms", "1500", lisi,
               str(files / "语音.aac"))
        document = jx.cli("send-file", "--as", "zhangsan", "--kind", "file", lisi, str(files / "协查通报.pdf"))
        gd.cli("send-file", "--as", "lisi", "--kind", "sticker", "--package", "jingwu", "--sticker", "ok",
               "--alt", "[好的]", zhangsan, str(files / "ok.gif"))
        gd.cli("send", "--as", "lisi", zhangsan, "收到，准时到。")
        expected = ["下午三点在指挥中心开会。", "image", "voice", "file", "sticker", "收到，准时到。"]
        eventually(lambda: texts(a, "zhangsan", single) == expected, what="the single chat on A")
        assert texts(b, "lisi", single) == expected
        inbox = gd.cli("inbox", "--as", "lisi")
        assert inbox[0]["conversation_id"] == single and inbox[0]["unread"] == 4

        downloaded = gd.cli("download", "--as", "lisi", document["message_id"], "--out", str(tmp_path / "got.pdf"))
        assert (tmp_path / "got.pdf").read_bytes() == PDF and downloaded["size"] == len(PDF)
        gd.cli("download", "--as", "lisi", image["message_id"], "--out", str(tmp_path / "got.png"))
        assert (tmp_path / "got.png").read_bytes() == png(4, 3)
        sticker = next(e["message"] for e in a.history("zhangsan", single) if e["message"].msg_type == "sticker")
        assert sticker.document["content"]["alt_text"] == "[好的]"
        jx.cli("download", "--as", "zhangsan", sticker.message_id, "--out", str(tmp_path / "got.gif"))
        assert (tmp_path / "got.gif").read_bytes() == GIF

        # --- read counts and presence (ephemeral, batched every 2 s) --------------------------------------
        gd.cli("read", "--as", "lisi", single)
        first = a.history("zhangsan", single)[0]["message"].message_id
        eventually(lambda: {e["message"].message_id: e for e in a.history("zhangsan", single)}[first]["read_by"]
                   == [lisi], what="lisi's read state on A")
        assert gd.cli("inbox", "--as", "lisi")[0]["unread"] == 0
        jx.cli("presence", "--as", "zhangsan", "busy")
        eventually(lambda: (b.presence_of(zhangsan) or {}).get("status") == "busy", what="presence on B")

        # --- a group across both nodes: create, invite, message, read counts, kick, quit --------------------
        group = jx.cli("group", "create", "--as", "zhangsan", "治安专班", "--member", wangwu, "--member", lisi)["group"]
        eventually(lambda: [g["group"] for g in gd.cli("group", "list", "--as", "lisi")] == [group],
                   what="the group on B")
        gd.cli("group", "invite", "--as", "lisi", group, zhaoliu)  # asked of the home node A
        eventually(lambda: any(g.address == group for g in b.groups("zhaoliu")), what="zhaoliu invited")
        gd.cli("send", "--as", "zhaoliu", group, "赵六报到")
        jx.cli("send", "--as", "zhangsan", group, "欢迎")
        conversation = f"g:{group}"
        eventually(lambda: texts(b, "lisi", conversation) == ["赵六报到", "欢迎"], what="group messages on B")
        assert texts(a, "wangwu", conversation) == ["赵六报到", "欢迎"]
        jx.cli("read", "--as", "wangwu", conversation)
        gd.cli("read", "--as", "lisi", conversation)
        welcome = lambda: a.history("zhangsan", conversation)[-1]  # noqa: E731
        eventually(lambda: set(welcome()["read_by"]) == {wangwu, lisi}, what="group read counts on A")
        assert welcome()["unread_by"] == 1  # zhaoliu has not read it
        jx.cli("group", "kick", "--as", "zhangsan", group, zhaoliu)
        eventually(lambda: b.groups("zhaoliu") == [] and b.groups("lisi"), what="zhaoliu kicked")
        gd.cli("group", "quit", "--as", "lisi", group)
        eventually(lambda: b.groups() == [], what="B has left the group")
        assert [g["group"] for g in jx.cli("group", "list", "--as", "zhangsan")] == [group]
        assert a.groups("zhangsan")[0].members == [zhangsan, wangwu]

        # --- the operator's page ---------------------------------------------------------------------------
        context = ssl.create_default_context(cafile=str(jx.data / "tls" / "ca-bundle.pem"))
        credentials = base64.b64encode(f"operator:{jx.ui_password}".encode()).decode()
        request = urllib.request.Request(f"{jx.endpoint}/?user=zhangsan",
                                         headers={"Authorization": f"Basic {credentials}"})
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            page = response.read().decode()
        assert single in page and "治安专班" in page

        # --- B suspended: A refuses B after its next route pull; B resumed: it works again -----------------
        nodes.suspend(nodes.get(gd.node_id), "drill", by=minister)
        db.session.commit()
        eventually(lambda: held_entry(a, gd.node_id) is None, what="A's next route pull")
        refused = gd.cli("send", "--as", "lisi", zhangsan, "暂停期间")["message_id"]
        row = next(r for r in b.outbox() if r.message_id == refused)
        assert row.state == "pending" and "unknown_peer" in row.last_error  # B keeps it for retries
        assert all(e["message"].message_id != refused for e in a.history("zhangsan", single))

        nodes.resume(nodes.get(gd.node_id), "drill over", by=minister)
        db.session.commit()
        eventually(lambda: held_entry(a, gd.node_id) is not None, what="B back in A's table")
        gd.cli("outbox", "retry")
        eventually(lambda: any(e["message"].message_id == refused for e in a.history("zhangsan", single)),
                   what="the held message delivered after resumption")
        gd.cli("send", "--as", "lisi", zhangsan, "恢复了")
        eventually(lambda: texts(a, "zhangsan", single)[-1] == "恢复了", what="a new message after resumption")
    finally:
        for process in (jx, gd):
            process.stop()
        registry.stop()


def test_the_management_nodes_poll_takes_the_reference_nodes_real_health_answer(network):  # noqa: F811
    """The poller was tested against servers made for it; here it polls reference nodes as they serve, over mutual
    TLS: the one served in-process, and one served as production does (gunicorn), whose answer the schema's
    `version` and `time` checks must take."""
    from app.health import poller
    from app.pki import own_keys
    from app.pki import service as pki

    a, c = network["a"], network["join"]("110000")
    c.stop()
    c.start_process()
    context = own_keys.management_client_ssl_context()
    targets = [poller.PollTarget(n.id, f"https://127.0.0.1:{n.port}", pki.current_certificate(n.id).sha256)
               for n in (a, c)]
    results = poller.poll_once(targets, ssl_context=context, timeout=10.0)
    assert [(r.node_id, r.ok, r.failure, r.cert_matches) for r in results] == [
        (a.id, True, None, True), (c.id, True, None, True)], results
