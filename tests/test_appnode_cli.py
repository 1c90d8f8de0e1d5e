"""The reference node's CLI prints lines for a person, and the same JSON as ever only with `--json` (README).

`status`, `routes pull` and `routes show` are tested where their behaviour is (tests/test_appnode.py,
tests/test_appnode_shared_routes.py); these are the commands that printed JSON either way.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import event, update
from sqlalchemy.engine import Engine

from app.appnode.cli import cli
from app.appnode.store import Outbox
from app.readable import one_line
from tests.test_appnode import ELF, GIF, PDF, adts, network, png, settle  # noqa: F401 (fixture)
from tests.test_appnode_init import operator_runs
from tests.test_sessions import people  # noqa: F401 (fixture)


def node_cli(served, *args: str) -> str:
    """What the command prints on stdout, in this process (so a test can move the management node's clock)."""
    result = CliRunner().invoke(cli, ["--data", str(served.dir), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def test_read_prints_how_far_the_conversation_is_read_and_json_only_with_json(network):  # noqa: F811
    a, b = network["a"], network["b"]
    sent = a.node.send_text("zhangsan", b.user("lisi"), "请回电")
    conversation = sent.conversation_id
    assert node_cli(b, "read", "--as", "lisi", conversation) == f"{conversation} read up to {sent.message_id}\n"
    assert json.loads(node_cli(b, "--json", "read", "--as", "lisi", conversation)) == {
        "conversation_id": conversation, "read_up_to_message_id": sent.message_id}


def test_presence_prints_the_users_new_status_and_json_only_with_json(network):  # noqa: F811
    a = network["a"]
    assert node_cli(a, "presence", "--as", "zhangsan", "busy") == f"{a.user('zhangsan')} is busy\n"
    item = json.loads(node_cli(a, "--json", "presence", "--as", "zhangsan", "away"))
    assert item["user_id"] == a.user("zhangsan") and item["status"] == "away" and item["client_type"] == "pc"
    assert item["last_active"] == item["updated_at"]


def test_download_prints_where_the_file_went_its_size_and_sha256_and_json_only_with_json(network, tmp_path):  # noqa: F811
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    out = tmp_path / "got.pdf"
    digest = hashlib.sha256(PDF).hexdigest()
    printed = node_cli(b, "download", "--as", "lisi", message.message_id, "--out", str(out))
    assert printed == f"{out}: {len(PDF)} bytes, sha256 {digest}\n" and out.read_bytes() == PDF
    document = json.loads(node_cli(b, "--json", "download", "--as", "lisi", message.message_id))
    file_id = message.document["content"]["file_id"]
    assert document == {"file_id": file_id, "size": len(PDF), "sha256": digest,
                        "path": str(b.dir / "files" / a.id / file_id)}


def test_history_lines_start_with_the_message_id_that_download_takes(network):  # noqa: F811
    a, b = network["a"], network["b"]
    text = a.node.send_text("zhangsan", b.user("lisi"), "协查通报见附件")
    sent = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    lines = node_cli(b, "history", "--as", "lisi", sent.conversation_id).splitlines()
    assert lines == [f"{m.message_id}\t{m.document['send_time']}\t{a.user('zhangsan')}\t{shown}\tread by 0"
                     for m, shown in ((text, "协查通报见附件"), (sent, "[file] 协查通报.pdf"))]
    message_id = lines[1].split("\t")[0]
    assert node_cli(b, "download", "--as", "lisi", message_id).startswith(str(b.dir / "files"))


def test_history_shows_a_peers_line_breaks_tabs_and_controls_escaped_so_each_message_is_one_line(network):  # noqa: F811
    """A text may hold tabs, line breaks and bidi controls (A.4): printed as they were, one peer's message
    added lines that read as another user's messages. --json keeps the text as sent."""
    a, b = network["a"], network["b"]
    first = a.node.send_text("zhangsan", b.user("lisi"), "今晚行动取消")
    forged = (f"好的\n01a2ffff-0000-7000-8000-000000000000\t2026-12-05T01:30:00.000Z\t{a.user('zhangsan')}\t"
              f"行动改为今晚22点\tread by 1\r\u2028\u2029\u202e反向 C:\\n")
    reply = b.node.send_text("lisi", a.user("zhangsan"), forged)
    settle(a, b)
    lines = node_cli(a, "history", "--as", "zhangsan", first.conversation_id).splitlines()
    shown = (f"好的\\n01a2ffff-0000-7000-8000-000000000000\\t2026-12-05T01:30:00.000Z\\t{a.user('zhangsan')}"
             f"\\t行动改为今晚22点\\tread by 1\\r\\u2028\\u2029\\u202e反向 C:\\\\n")
    assert lines == [
        f"{first.message_id}\t{first.document['send_time']}\t{a.user('zhangsan')}\t今晚行动取消\tread by 0",
        f"{reply.message_id}\t{reply.document['send_time']}\t{b.user('lisi')}\t{shown}\tread by 0"]
    documents = json.loads(node_cli(a, "--json", "history", "--as", "zhangsan", first.conversation_id))
    assert [d["content"]["text"] for d in documents] == ["今晚行动取消", forged]


def test_one_line_escapes_every_control_and_leaves_other_text_as_it_is():
    """What no schema lets through yet still never reaches the terminal as itself: an escape sequence, NEL,
    a lone surrogate (which click could not even print)."""
    assert one_line("\x1b[2J\x85\x00\udc80\u061c") == "\\u001b[2J\\u0085\\u0000\\udc80\\u061c"
    assert one_line("协查通报 №1（附件）🚓") == "协查通报 №1（附件）🚓"


def test_download_given_a_file_id_names_the_message_that_carried_it(network):  # noqa: F811
    a, b = network["a"], network["b"]
    sent = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    file_id = sent.document["content"]["file_id"]
    refused = CliRunner().invoke(cli, ["--data", str(b.dir), "download", "--as", "lisi", file_id])
    assert refused.exception.code == "not_found"
    assert refused.exception.message == (f"no file message {file_id}: {file_id} is the file id of message "
                                         f"{sent.message_id}; download takes the message's id (the first column "
                                         f"of `history`)")
    # Not the user's conversation: the message is not named
    refused = CliRunner().invoke(cli, ["--data", str(b.dir), "download", "--as", "zhaoliu", file_id])
    assert refused.exception.message.endswith(f"{file_id} is no message id (a UUID); download takes the id of the "
                                              f"message that carried the file")
    assert sent.message_id not in refused.exception.message


def test_outbox_list_and_retry_print_a_line_per_envelope_and_what_was_retried_and_json_only_with_json(
        network):  # noqa: F811
    a, b = network["a"], network["b"]
    b.stop()
    message = a.node.send_text("zhangsan", b.user("lisi"), "稍后送达")
    row = a.node.outbox("pending")[0]
    error = " ".join(row.last_error.split())
    assert node_cli(a, "outbox", "list", "--state", "pending") == (
        f"{row.id}\t{b.id}\tmessage\t{message.message_id}\tpending\t1 attempt\t"
        f"next try {when(row.next_attempt_at)}\t{error}\n")
    listed = json.loads(node_cli(a, "--json", "outbox", "list", "--state", "pending"))
    assert listed == [{"id": row.id, "peer": b.id, "kind": "message", "message_id": message.message_id,
                       "state": "pending", "attempts": 1, "next_attempt_at": str(row.next_attempt_at),
                       "last_error": row.last_error}]
    assert node_cli(a, "outbox", "list", "--state", "failed") == "no failed envelopes\n"

    assert node_cli(a, "outbox", "retry") == "1 pending envelope due now: 0 delivered, 1 to retry, 0 failed\n"
    b.start()
    assert json.loads(node_cli(a, "--json", "outbox", "retry")) == {"due": 1, "delivered": 1, "retry": 0,
                                                                  "failed": 0}
    assert node_cli(a, "outbox", "retry") == "0 pending envelopes due now: 0 delivered, 0 to retry, 0 failed\n"
    delivered = node_cli(a, "outbox", "list").splitlines()
    assert delivered == [f"{row.id}\t{b.id}\tmessage\t{message.message_id}\tdelivered\t3 attempts"]


def test_renew_prints_the_new_certificates_serial_fingerprint_and_validity_and_json_only_with_json(
        network, monkeypatch):  # noqa: F811
    a, b = network["a"], network["b"]
    refused = CliRunner().invoke(cli, ["--data", str(a.dir), "renew"])
    assert refused.exception.code == "renewal_too_early"  # exit 2 through main(), as every refusal
    assert refused.exception.message == (f"renewal opens at {when(a.node.renewal_opens())}, in the last third of "
                                         f"the certificate's validity")
    import app.pki.service as pki_service
    later = datetime.now(UTC) + timedelta(days=70)  # of 90: inside the last third, on the management node's clock
    monkeypatch.setattr(pki_service, "utcnow", lambda: later)
    printed = node_cli(a, "renew", "--force")
    certificate = a.node.identity.certificate()
    assert printed == (f"certificate {format(certificate.serial_number, 'x')} installed, "
                       f"sha256 {a.node.identity.fingerprint()}, valid "
                       f"{when(certificate.not_valid_before_utc)} to {when(certificate.not_valid_after_utc)}\n")
    # B's turn: A's new certificate starts on the moved clock, so A opens no session until then.
    assert json.loads(node_cli(b, "--json", "renew", "--force")) == {
        "certificate_sha256": b.node.identity.fingerprint()}


def refusal(served_dir, *args: str) -> tuple[int, dict]:
    """A command run with --json that is refused: its exit code and the JSON object on stderr (stdout empty)."""
    result = CliRunner().invoke(cli, ["--data", str(served_dir), "--json", *args])
    assert result.stdout == "" and isinstance(result.exception, SystemExit)
    return result.exit_code, json.loads(result.stderr)


def test_json_refusals_are_a_json_error_object_on_stderr_with_the_usual_exit_code(network, tmp_path):  # noqa: F811
    a, b = network["a"], network["b"]
    assert refusal(a.dir, "send", "--as", "nobody", b.user("lisi"), "在吗") == (
        2, {"error": {"code": "not_found", "message": "no local user nobody"}})
    assert refusal(a.dir, "renew") == (2, {"error": {"code": "renewal_too_early", "message": (
        f"renewal opens at {when(a.node.renewal_opens())}, in the last third of the certificate's validity")}})
    (a.dir / "clip.aac").write_bytes(b"\xff\xf1")
    assert refusal(a.dir, "send-file", "--as", "zhangsan", "--kind", "sticker", b.user("lisi"), str(a.dir / "clip.aac")
                   ) == (2, {"error": {"code": "usage_error",
                                       "message": "a sticker needs --package, --sticker and --alt"}})
    assert refusal(tmp_path / "none", "status") == (1, {"error": {
        "code": "no_node", "message": f"{tmp_path / 'none'} holds no node: run `init` first"}})


def test_inbox_and_group_list_refuse_an_unknown_local_user_as_send_does(network):  # noqa: F811
    a = network["a"]
    assert node_cli(a, "inbox", "--as", "wangwu") == "no conversations\n"  # a user with an empty inbox
    unknown = (2, {"error": {"code": "not_found", "message": "no local user nobody"}})
    assert refusal(a.dir, "send", "--as", "nobody", a.user("zhangsan"), "在吗") == unknown
    assert refusal(a.dir, "inbox", "--as", "nobody") == unknown
    assert refusal(a.dir, "group", "list", "--as", "nobody") == unknown


def test_group_commands_refuse_a_name_that_is_no_address_in_the_words_send_uses(network):  # noqa: F811
    a = network["a"]
    group = a.node.create_group("zhangsan", "专案组", [a.user("wangwu")], "").address

    def said(*args: str) -> tuple[int, str, str]:
        exit_code, document = refusal(a.dir, *args)
        return exit_code, document["error"]["code"], document["error"]["message"]

    not_a_user = (2, "schema_violation", "not a user address: 'ghost'")
    assert said("send", "--as", "zhangsan", "ghost", "在吗") == not_a_user
    assert said("group", "invite", "--as", "zhangsan", group, "ghost") == not_a_user
    assert said("group", "kick", "--as", "zhangsan", group, "ghost") == not_a_user
    assert said("group", "transfer", "--as", "zhangsan", group, "ghost") == not_a_user
    assert said("group", "create", "--as", "zhangsan", "新组", "--member", "ghost") == not_a_user
    assert said("group", "quit", "--as", "wangwu", "ghost") == (2, "schema_violation", "not a group address: 'ghost'")
    assert [len(g.members) for g in a.node.groups("zhangsan")] == [2]


def test_group_commands_say_what_happened_in_words_and_nothing_changed_for_a_no_op(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专案组", [a.user("wangwu")], "").address
    wangwu, lisi = a.user("wangwu"), b.user("lisi")
    assert node_cli(a, "group", "rename", "--as", "zhangsan", group, "改名") == "renamed 改名\n"
    assert node_cli(a, "group", "rename", "--as", "zhangsan", group, "改名") == "nothing changed\n"
    assert node_cli(a, "group", "invite", "--as", "zhangsan", group, wangwu) == "nothing changed\n"
    assert node_cli(a, "group", "invite", "--as", "zhangsan", group, lisi) == f"invited {lisi}\n"
    assert node_cli(a, "group", "transfer", "--as", "zhangsan", group, wangwu) == f"{wangwu} is now the owner\n"
    assert node_cli(a, "group", "kick", "--as", "wangwu", group, lisi) == f"removed {lisi}\n"
    a.node.config.open_groups = True  # home A lets anyone join its groups, a kicked user too (config.json)
    assert node_cli(b, "group", "join", "--as", "lisi", group) == "joined the group (the home node accepted it)\n"
    assert node_cli(a, "group", "dismiss", "--as", "wangwu", group) == "dismissed the group\n"


def test_group_commands_with_json_say_whether_the_operation_changed_the_group(network):  # noqa: F811
    """--json printed outcome "applied" for an operation that changed nothing (inviting a member, renaming to
    the same name), where the line for a person says "nothing changed". The outcome stays what scripts
    compare with; `changed` says whether the group changed (null when the home node is another node, whose
    acknowledgement does not say). Removing a user who is not a member is refused, not reported."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专案组", [a.user("wangwu")], "").address
    wangwu, lisi = a.user("wangwu"), b.user("lisi")

    def said(*args: str) -> dict:
        return json.loads(node_cli(a, "--json", "group", *args))

    assert said("invite", "--as", "zhangsan", group, wangwu) == {
        "op": "invite", "group": group, "outcome": "applied", "changed": False}
    assert node_cli(a, "group", "invite", "--as", "zhangsan", group, wangwu) == "nothing changed\n"
    assert said("rename", "--as", "zhangsan", group, "专案组") == {
        "op": "update_info", "group": group, "outcome": "applied", "changed": False}
    assert said("transfer", "--as", "zhangsan", group, a.user("zhangsan")) == {
        "op": "transfer_owner", "group": group, "outcome": "applied", "changed": False}
    assert said("invite", "--as", "zhangsan", group, lisi) == {
        "op": "invite", "group": group, "outcome": "applied", "changed": True}
    assert json.loads(node_cli(b, "--json", "group", "join", "--as", "lisi", group)) == {
        "op": "join", "group": group, "outcome": "accepted", "changed": None}
    assert refusal(a.dir, "group", "kick", "--as", "zhangsan", group, a.user("nobody")) == (2, {"error": {
        "code": "not_a_participant", "message": f"not a member: {a.user('nobody')}",
        "field": "payload.target_user_ids"}})
    assert [(g.seq, len(g.members)) for g in a.node.groups("zhangsan")] == [(2, 3)]


def test_group_list_says_the_user_is_in_no_group_instead_of_printing_a_blank_line(network):  # noqa: F811
    a = network["a"]
    assert node_cli(a, "group", "list", "--as", "zhangsan") == "no groups\n"
    assert json.loads(node_cli(a, "--json", "group", "list", "--as", "zhangsan")) == []
    a.node.create_group("zhangsan", "专案组", [a.user("wangwu")], "")
    assert node_cli(a, "group", "list", "--as", "zhangsan").endswith("\t专案组\t2 members\n")


def test_quit_join_and_dismiss_take_no_addresses_after_the_group_and_leave_the_group_as_it_was(network):  # noqa: F811
    """`group quit --as wangwu GROUP zhangsan@...` reads as removing zhangsan; it made wangwu leave instead."""
    a = network["a"]
    group = a.node.create_group("zhangsan", "专案组", [a.user("wangwu")], "").address
    for op, user in (("quit", "wangwu"), ("join", "wangwu"), ("dismiss", "zhangsan")):
        result = CliRunner().invoke(cli, ["--data", str(a.dir), "group", op, "--as", user, group, a.user("zhangsan")])
        assert result.exit_code == 2 and "unexpected extra argument" in result.output, (op, result.output)
    assert node_cli(a, "group", "list", "--as", "wangwu").endswith("\t专案组\t2 members\n")


def test_users_list_says_the_node_has_no_users_instead_of_printing_a_blank_line(tmp_path):
    data = tmp_path / "jx"
    CliRunner().invoke(cli, ["--data", str(data), "init", "--registry", "http://127.0.0.1:5000", "--division",
                             "360000", "--endpoint", "https://127.0.0.1:8643"])
    assert CliRunner().invoke(cli, ["--data", str(data), "users", "list"]).stdout == "no users\n"
    assert CliRunner().invoke(cli, ["--data", str(data), "--json", "users", "list"]).stdout == "[]\n"


def test_an_argument_that_is_not_utf8_is_refused_naming_it_instead_of_a_traceback(network, tmp_path):  # noqa: F811
    """Bytes that are not UTF-8 (a name typed in GBK) reach Python as lone surrogates, which no database stores,
    no schema validates and no terminal prints: each ended in a UnicodeEncodeError traceback."""
    import os

    a, b = network["a"], network["b"]
    gbk = os.fsdecode("你好".encode("gbk"))
    (tmp_path / "r.pdf").write_bytes(PDF)
    named_in_gbk = os.fsdecode(os.fsencode(tmp_path) + b"/" + "报告.pdf".encode("gbk"))
    with open(os.fsencode(named_in_gbk), "wb") as stream:  # a real file, named on a GBK system
        stream.write(PDF)
    sent = a.node.send_text("zhangsan", b.user("lisi"), "在吗")
    cases = {("send", "--as", "zhangsan", b.user("lisi"), gbk): "text",
             ("send", "--as", "zhangsan", f"{gbk}@{b.id}", "在吗"): "to",
             ("send", "--as", gbk, b.user("lisi"), "在吗"): "user",
             ("users", "add", gbk, "张三"): "user_id",
             ("users", "add", "lisi2", gbk): "user_name",
             ("users", "add", "lisi2", "李四", "--org-name", gbk): "org_name",
             ("group", "create", "--as", "zhangsan", gbk): "name",
             ("group", "create", "--as", "zhangsan", "专案组", "--notice", gbk): "notice",
             ("send-file", "--as", "zhangsan", b.user("lisi"), named_in_gbk): "path",
             ("send-file", "--as", "zhangsan", b.user("lisi"), "--type", gbk, str(tmp_path / "r.pdf")): "declared",
             ("inbox", "--as", gbk): "user",
             ("history", "--as", "zhangsan", gbk): "conversation_id",
             ("history", "--as", "zhangsan", "--before", gbk, sent.conversation_id): "before",
             ("presence", "--as", gbk, "busy"): "user",
             ("download", "--as", "zhangsan", sent.message_id, "--out", named_in_gbk): "out"}
    for args, name in cases.items():
        assert refusal(a.dir, *args) == (2, {"error": {"code": "usage_error",
                                                       "message": f"Invalid value for '{name}': is not UTF-8 text."}})
        result = CliRunner().invoke(cli, ["--data", str(a.dir), *args])
        assert result.exit_code == 2 and f"Invalid value for '{name}'" in result.stderr, args
    assert [u.user_id for u in a.node.users()] == ["wangwu", "zhangsan"] and a.node.groups("zhangsan") == []
    data_in_gbk = os.fsdecode(os.fsencode(tmp_path) + b"/" + "江西".encode("gbk"))
    result = CliRunner().invoke(cli, ["--data", data_in_gbk, "init", "--registry", "http://127.0.0.1:5000",
                                      "--division", "360000", "--endpoint", "https://127.0.0.1:8643"])
    assert result.exit_code == 2 and "Invalid value for 'data': is not UTF-8 text." in result.stderr
    assert not os.path.exists(os.fsencode(data_in_gbk))
    assert len(a.node.history("zhangsan", sent.conversation_id)) == 1


def test_download_out_keeps_a_file_already_there_unless_told_and_names_a_missing_directory(network, tmp_path):  # noqa: F811
    """shutil.copyfile wrote over whatever --out named without a word, and a missing directory ended in a
    FileNotFoundError traceback."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    mine = tmp_path / "案卷.pdf"
    mine.write_bytes(b"the operator's own file")
    assert refusal(b.dir, "download", "--as", "lisi", message.message_id, "--out", str(mine)) == (2, {"error": {
        "code": "file_exists", "message": f"{mine} exists: download writes over no file unless given --overwrite"}})
    assert mine.read_bytes() == b"the operator's own file"
    node_cli(b, "download", "--as", "lisi", message.message_id, "--out", str(mine), "--overwrite")
    assert mine.read_bytes() == PDF
    missing = tmp_path / "no-such-directory" / "x.pdf"
    assert refusal(b.dir, "download", "--as", "lisi", message.message_id, "--out", str(missing)) == (2, {"error": {
        "code": "no_directory", "message": f"{missing.parent} is no directory to write x.pdf into"}})
    assert not missing.parent.exists()


def test_csr_out_writes_over_no_file_unless_told(network, tmp_path):  # noqa: F811
    """`csr --out` wrote over whatever it named: `--out tls/node.key` replaced the node's key with its CSR."""
    a = network["a"]
    key_file, key_pem = a.dir / "tls" / "node.key", (a.dir / "tls" / "node.key").read_bytes()
    assert refusal(a.dir, "csr", "--new-key", "--out", str(key_file)) == (2, {"error": {
        "code": "file_exists", "message": f"{key_file} exists: csr writes over no file unless given --overwrite"}})
    assert key_file.read_bytes() == key_pem and not (a.dir / "tls" / "pending.key").exists()
    missing = tmp_path / "no-such-directory" / "node.csr"
    assert refusal(a.dir, "csr", "--out", str(missing)) == (2, {"error": {
        "code": "no_directory", "message": f"{missing.parent} is no directory to write node.csr into"}})
    assert not missing.parent.exists()
    earlier = tmp_path / "node.csr"
    earlier.write_text("an earlier CSR")
    node_cli(a, "csr", "--out", str(earlier), "--overwrite")
    assert earlier.read_text().startswith("-----BEGIN CERTIFICATE REQUEST-----")


def test_send_file_refuses_a_fifo_instead_of_waiting_for_a_writer(network, tmp_path):  # noqa: F811
    """PATH was read whole before any check: a FIFO (click's `exists` takes one) blocked the command until some
    writer came. (A file over the limit is now refused by its size before it is read, too.)"""
    import contextlib
    import os
    import threading

    a, b = network["a"], network["b"]
    fifo = tmp_path / "report.pdf"
    os.mkfifo(fifo)

    def writer() -> None:  # the unfixed command would read this, then send it
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as stream:  # nobody reads it: the pipe breaks
            stream.write(PDF)

    feeding = threading.Thread(target=writer, daemon=True)
    feeding.start()
    assert refusal(a.dir, "send-file", "--as", "zhangsan", b.user("lisi"), str(fifo)) == (2, {"error": {
        "code": "not_a_regular_file", "message": f"{fifo} is no regular file: send-file sends a file's bytes"}})
    # Lets the writer through, now the command is done. Held open until the writer is done: a reader opened and
    # closed before the writer's thread reached its open() let nothing through, and the test failed under load.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        feeding.join(30)  # its 3 KB fit in the pipe's buffer
    finally:
        os.close(reader)
    assert not feeding.is_alive(), "the writer of the named pipe was never let through"
    assert a.node.outbox() == []


def test_send_file_declares_a_mime_type_in_lower_case_however_it_was_guessed_or_typed(network, tmp_path, monkeypatch):  # noqa: F811
    """MIME types are case-insensitive (RFC 2045) and A.7 takes them in lower case: Debian's /etc/mime.types has
    audio/AMR for .amr and ...macroEnabled.12 for .xlsm, and sending such a file was refused with a regex dump."""
    a, b = network["a"], network["b"]
    if not mimetypes.inited:
        mimetypes.init()
    monkeypatch.setitem(mimetypes.types_map, ".amr", "audio/AMR")  # as Debian's /etc/mime.types has it
    monkeypatch.setitem(mimetypes.types_map, ".xlsm", "application/vnd.ms-excel.sheet.macroEnabled.12")
    sent = {}
    for name, typed, data in (("memo.amr", None, b"#!AMR\n" + b"x" * 100), ("budget.xlsm", None, b"PK" + b"x" * 100),
                              ("r.pdf", "Application/PDF", PDF)):
        (tmp_path / name).write_bytes(data)
        declared = ("--type", typed) if typed else ()
        document = json.loads(node_cli(a, "--json", "send-file", "--as", "zhangsan", *declared, b.user("lisi"),
                                       str(tmp_path / name)))
        sent[document["message_id"]] = name
    received = b.node.history("lisi", a.node.conversations("zhangsan")[0]["conversation_id"])
    assert {sent[r["message"].message_id]: r["message"].document["content"]["mime_type"] for r in received} == {
        "memo.amr": "audio/amr", "budget.xlsm": "application/vnd.ms-excel.sheet.macroenabled.12",
        "r.pdf": "application/pdf"}
    # an executable is one however its type is written
    (tmp_path / "tool").write_bytes(ELF)
    assert refusal(a.dir, "send-file", "--as", "zhangsan", "--type", "Application/X-Executable", b.user("lisi"),
                   str(tmp_path / "tool")) == (2, {"error": {"code": "unsupported_media_type",
                                                             "message": "this node does not send executables"}})


def test_send_file_type_takes_the_format_names_and_mime_types_its_help_promises(network, tmp_path):  # noqa: F811
    """--type is a "declared format or MIME type", and the content check maps jpeg and image/png to JPG and PNG;
    but images and stickers compared the value upper-cased (JPEG, IMAGE/PNG) with JPG, PNG and GIF, and refused."""
    a, b = network["a"], network["b"]
    jpeg = (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
            b"\xff\xc0\x00\x11\x08\x00\x02\x00\x03\x03\x01\x11\x00\x02\x11\x00\x03\x11\x00\xff\xd9")
    (tmp_path / "photo").write_bytes(jpeg)  # no extension: the format is the one typed
    (tmp_path / "picture").write_bytes(png())
    (tmp_path / "ok").write_bytes(GIF)
    sticker = ("--package", "jingwu", "--sticker", "ok", "--alt", "[好的]")
    sent = {}
    for kind, typed, name, expected in (("image", "jpeg", "photo", "JPG"), ("image", "image/jpeg", "photo", "JPG"),
                                        ("image", "Image/PNG", "picture", "PNG"), ("image", "gif", "ok", "GIF"),
                                        ("sticker", "image/png", "picture", "PNG"),
                                        ("sticker", "image/gif", "ok", "GIF")):
        document = json.loads(node_cli(a, "--json", "send-file", "--as", "zhangsan", "--kind", kind, "--type", typed,
                                       *(sticker if kind == "sticker" else ()), b.user("lisi"), str(tmp_path / name)))
        sent[document["message_id"]] = (kind, typed, expected)
    received = b.node.history("lisi", a.node.conversations("zhangsan")[0]["conversation_id"])
    assert sorted(sent[r["message"].message_id][:2] + (r["message"].document["content"]["format"],)
                  for r in received) == sorted(sent.values())
    assert received[0]["message"].document["content"]["width"] == 3  # the JPEG's size was read as a JPEG's
    # a declared format is still checked against the bytes, and a sticker is still GIF or PNG
    assert refusal(a.dir, "send-file", "--as", "zhangsan", "--kind", "image", "--type", "image/jpeg", b.user("lisi"),
                   str(tmp_path / "picture"))[1]["error"] == {
        "code": "unsupported_media_type", "message": "declared 'JPG', but the content is PNG"}
    assert refusal(a.dir, "send-file", "--as", "zhangsan", "--kind", "sticker", "--type", "jpeg", *sticker,
                   b.user("lisi"), str(tmp_path / "photo"))[1]["error"] == {
        "code": "unsupported_media_type", "message": "a sticker is GIF or PNG, not JPG"}


def test_numbers_are_ascii_digits_not_whatever_int_reads(network, tmp_path):  # noqa: F811
    """click's INT is int(), which reads fullwidth (１２) and Arabic-Indic (١٢) digits: a voice clip went out as
    12 ms from `--duration-ms １２`. Superscript digits (²) it refused, in another message."""
    a, b = network["a"], network["b"]
    (tmp_path / "clip.aac").write_bytes(adts(1200))
    for typed in ("１２", "١٢", "²", "+12", " 12", "12\n"):
        code, document = refusal(a.dir, "send-file", "--as", "zhangsan", "--kind", "voice", "--duration-ms", typed,
                                 b.user("lisi"), str(tmp_path / "clip.aac"))
        assert code == 2 and document["error"] == {"code": "usage_error", "message": (
            f"Invalid value for '--duration-ms': {typed!r} is not a whole number in ASCII digits.")}, typed
    assert refusal(a.dir, "run", "--threads", "８")[1]["error"]["message"] == (
        "Invalid value for '--threads': '８' is not a whole number in ASCII digits.")
    assert refusal(a.dir, "run", "--threads", "0")[1]["error"]["message"] == (
        "Invalid value for '--threads': 0 is not in the range 1 to 1000.")
    for typed, message in (("nan", "'nan' is not a whole number in ASCII digits."),
                           ("1e400", "'1e400' is not a whole number in ASCII digits."),
                           (str(10**30), f"{10**30} is not in the range 0 to 2592000.")):
        # float() read these: nan and inf made join wait for ever, the deadline never reached
        assert refusal(a.dir, "join", "--token", "mpim_et_x", "--wait", typed)[1]["error"]["message"] == (
            f"Invalid value for '--wait': {message}"), typed
    assert a.node.outbox() == []


def test_download_says_a_message_id_ending_in_a_newline_is_no_message_id(network):  # noqa: F811
    """MESSAGE_ID.match passed "<uuid>\\n" ($ matches before a final newline), so the refusal read "no file message
    <the very id history shows>" without the reason."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    code, document = refusal(b.dir, "download", "--as", "lisi", message.message_id + "\n")
    assert code == 2 and document["error"]["message"] == (
        f"no file message {message.message_id}\n: {message.message_id}\n is no message id (a UUID); download takes "
        f"the id of the message that carried the file")


def test_download_and_csr_out_that_cannot_be_written_are_refused_naming_the_path(network, tmp_path):  # noqa: F811
    """An OSError writing --out (here a name longer than the file system takes; as root, permissions stop
    nothing) ended in a traceback. 250 bytes is a name the file itself could have, but not the temporary file
    `csr` writes first, beside it."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    folder = tmp_path / "out"
    folder.mkdir()
    too_long, almost = folder / ("案" * 100 + ".pdf"), folder / ("x" * 250)
    for overwrite in ((), ("--overwrite",)):
        code, document = refusal(b.dir, "download", "--as", "lisi", message.message_id, "--out", str(too_long),
                                 *overwrite)
        error = document["error"]
        assert code == 2 and error["code"] == "cannot_write" and str(too_long) in error["message"], document
        for out in (too_long, almost):
            code, document = refusal(a.dir, "csr", "--out", str(out), *overwrite)
            error = document["error"]
            assert code == 2 and error["code"] == "cannot_write" and str(out) in error["message"], document
    assert list(folder.iterdir()) == []


def test_csr_new_key_whose_out_cannot_be_written_leaves_no_pending_key(network, tmp_path):  # noqa: F811
    """The pending key was made before --out was written: the refused run left it, and the next `csr --new-key`
    reused a key whose CSR nobody had. The CSR is now written first and the key kept only after."""
    a = network["a"]
    pending = a.dir / "tls" / "pending.key"
    folder = tmp_path / "out"
    folder.mkdir()
    too_long = folder / ("x" * 250)  # the file's name fits; the temporary file beside it does not
    code, document = refusal(a.dir, "csr", "--new-key", "--out", str(too_long))
    assert code == 2 and document["error"]["code"] == "cannot_write", document
    assert not pending.exists() and list(folder.iterdir()) == []
    out = folder / "node.csr"
    document = json.loads(node_cli(a, "--json", "csr", "--new-key", "--out", str(out)))
    assert document["key"] == "pending" and document["reused"] is False and pending.exists()
    assert out.read_text() == document["csr"]


def test_download_out_of_a_kept_file_that_cannot_be_read_is_refused_naming_it(network, tmp_path):  # noqa: F811
    """The node's own copy of the file, removed (or, here, a directory in its place: as root, permissions stop
    nothing) ended `download --out` in a traceback."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    node_cli(b, "download", "--as", "lisi", message.message_id)
    kept = b.dir / "files" / a.id / message.document["content"]["file_id"]
    out = tmp_path / "got.pdf"
    kept.unlink()
    kept.mkdir()  # a directory where the file was: there, but not to be read
    code, document = refusal(b.dir, "download", "--as", "lisi", message.message_id, "--out", str(out))
    error = document["error"]
    assert code == 2 and error["code"] == "cannot_read" and str(kept) in error["message"], document
    assert not out.exists()
    done = operator_runs(b.dir, "download", "--as", "lisi", message.message_id, "--out", str(out))
    assert done.returncode == 2 and done.stderr.startswith("error (cannot_read): "), done.stderr
    # The node's own file (it is the origin: nothing to fetch it again from), removed.
    own = a.dir / "files" / a.id / message.document["content"]["file_id"]
    own.unlink()
    code, document = refusal(a.dir, "download", "--as", "zhangsan", message.message_id, "--out", str(out))
    assert code == 2 and document["error"]["code"] == "cannot_read" and str(own) in document["error"]["message"]


def test_download_of_a_kept_file_gone_from_the_data_directory_fetches_it_again(network, tmp_path):  # noqa: F811
    """Without --out, `download` said the file was at a path where nothing was any more (removed by hand, or a
    data directory restored without its files): it is fetched again from its origin, and checked again."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    node_cli(b, "download", "--as", "lisi", message.message_id)
    kept = b.dir / "files" / a.id / message.document["content"]["file_id"]
    kept.unlink()
    document = json.loads(node_cli(b, "--json", "download", "--as", "lisi", message.message_id))
    assert document["path"] == str(kept) and kept.read_bytes() == PDF
    out = tmp_path / "got.pdf"
    kept.unlink()
    node_cli(b, "download", "--as", "lisi", message.message_id, "--out", str(out))
    assert out.read_bytes() == PDF and kept.read_bytes() == PDF


def test_download_out_whose_copy_fails_part_way_names_the_kept_file_and_leaves_no_part(network, tmp_path):  # noqa: F811
    """A read error during the copy (a failing disk under the data directory) was reported as cannot_write, naming
    --out, and left an empty or partial file under the name asked for. The kept file here is a link to
    /proc/self/mem, which opens and then fails its first read with EIO: a real read error, not a simulated one."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    node_cli(b, "download", "--as", "lisi", message.message_id)
    kept = b.dir / "files" / a.id / message.document["content"]["file_id"]
    kept.unlink()
    kept.symlink_to("/proc/self/mem")
    out = tmp_path / "got.pdf"
    for overwrite in ((), ("--overwrite",)):
        code, document = refusal(b.dir, "download", "--as", "lisi", message.message_id, "--out", str(out), *overwrite)
        error = document["error"]
        assert code == 2 and error["code"] == "cannot_read" and str(kept) in error["message"], document
        assert not out.exists()
    out.write_bytes(b"an earlier download")
    code, document = refusal(b.dir, "download", "--as", "lisi", message.message_id, "--out", str(out))
    assert code == 2 and document["error"]["code"] == "file_exists" and out.read_bytes() == b"an earlier download"


def test_download_out_over_the_kept_file_or_a_link_to_it_keeps_the_node_s_copy(network, tmp_path):  # noqa: F811
    """`download --out <the path download prints> --overwrite` opened the kept file for writing, which emptied it
    before a byte was read: the command reported the whole size, every later download handed out 0 bytes, and on
    the origin node the file was gone for good. The copy is now made beside --out and renamed over it."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    kept = Path(json.loads(node_cli(b, "--json", "download", "--as", "lisi", message.message_id))["path"])
    own = a.dir / "files" / a.id / message.document["content"]["file_id"]
    link = tmp_path / "link.pdf"
    link.symlink_to(own)
    for node, user, out in ((b, "lisi", kept), (a, "zhangsan", link)):
        document = json.loads(node_cli(node, "--json", "download", "--as", user, message.message_id, "--out",
                                       str(out), "--overwrite"))
        assert document["size"] == len(PDF), document
        assert out.read_bytes() == PDF
    assert kept.read_bytes() == PDF and own.read_bytes() == PDF  # both nodes' copies whole
    assert not link.is_symlink()  # the link itself was replaced by the copy, not what it pointed to
    leftovers = [path for path in tmp_path.iterdir() if path.name.startswith(".")]
    assert leftovers == []


def test_download_out_overwrite_keeps_the_replaced_file_s_permissions_and_takes_any_name(network, tmp_path):  # noqa: F811
    """The copy made beside --out and renamed over it took the umask's mode, so a file its user had made private
    became readable by everyone; and its temporary name, --out's own and 10 characters more, failed a name that
    works without --overwrite."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    folder = tmp_path / "out"
    folder.mkdir()
    private = folder / "secret.pdf"
    private.write_bytes(b"an earlier download")
    private.chmod(0o600)
    node_cli(b, "download", "--as", "lisi", message.message_id, "--out", str(private), "--overwrite")
    assert private.read_bytes() == PDF and (private.stat().st_mode & 0o777) == 0o600
    longest = folder / ("x" * 250)
    longest.write_bytes(b"an earlier download")
    node_cli(b, "download", "--as", "lisi", message.message_id, "--out", str(longest), "--overwrite")
    assert longest.read_bytes() == PDF
    assert sorted(path.name for path in folder.iterdir()) == sorted(["secret.pdf", longest.name])


def test_send_file_refuses_a_voice_type_other_than_aac_instead_of_ignoring_it(network, tmp_path):  # noqa: F811
    """A.6 voice is AAC, and --type was ignored for it: `--type amr` sent the clip as AAC without a word."""
    a, b = network["a"], network["b"]
    (tmp_path / "clip.aac").write_bytes(adts(1200))
    voice = ("send-file", "--as", "zhangsan", "--kind", "voice", "--duration-ms", "1200")
    assert refusal(a.dir, *voice, "--type", "amr", b.user("lisi"), str(tmp_path / "clip.aac"))[1]["error"] == {
        "code": "unsupported_media_type", "message": "a voice message is AAC, not amr"}
    sent = {json.loads(node_cli(a, "--json", *voice, "--type", typed, b.user("lisi"), str(tmp_path / "clip.aac"))
                       )["message_id"] for typed in ("aac", "audio/AAC", "audio/mp4")}
    rows = a.node.history("zhangsan", a.node.conversations("zhangsan")[0]["conversation_id"])
    assert {r["message"].message_id for r in rows} == sent
    assert {r["message"].document["content"]["format"] for r in rows} == {"AAC"}


def test_send_file_name_announces_another_name_and_a_name_refused_is_said_in_words(network, tmp_path):  # noqa: F811
    """A file whose own name a message may not carry (a backslash, a line break) could be sent only renamed on
    disk, and its refusal was a regex dump."""
    a, b = network["a"], network["b"]
    path = tmp_path / "a\\b.pdf"
    path.write_bytes(PDF)
    code, document = refusal(a.dir, "send-file", "--as", "zhangsan", b.user("lisi"), str(path))
    assert (code, document["error"]["message"]) == (2, '$.content.file_name: "a\\\\b.pdf" holds a backslash '
                                                       "(U+005C), which a file name may not hold")
    sent = json.loads(node_cli(a, "--json", "send-file", "--as", "zhangsan", "--name", "协查通报.pdf",
                               b.user("lisi"), str(path)))
    (received,) = b.node.history("lisi", a.node.conversations("zhangsan")[0]["conversation_id"])
    assert received["message"].message_id == sent["message_id"]
    assert received["message"].document["content"]["file_name"] == "协查通报.pdf"
    assert received["message"].document["content"]["mime_type"] == "application/pdf"  # guessed from --name


def test_send_file_names_the_format_of_an_image_it_refuses(network, tmp_path):  # noqa: F811
    a, b = network["a"], network["b"]
    (tmp_path / "x.bmp").write_bytes(b"BM" + b"\0" * 100)
    (tmp_path / "x.pdf").write_bytes(PDF)
    assert refusal(a.dir, "send-file", "--as", "zhangsan", "--kind", "image", b.user("lisi"),
                   str(tmp_path / "x.bmp"))[1]["error"]["message"] == "an image is JPG, PNG or GIF, not an " \
                                                                      "unrecognised format"
    assert refusal(a.dir, "send-file", "--as", "zhangsan", "--kind", "image", b.user("lisi"),
                   str(tmp_path / "x.pdf"))[1]["error"]["message"] == "an image is JPG, PNG or GIF, not PDF"
    assert refusal(a.dir, "send-file", "--as", "zhangsan", "--kind", "sticker", "--package", "p", "--sticker", "s",
                   "--alt", "[好的]", b.user("lisi"), str(tmp_path / "x.bmp"))[1]["error"]["message"] == \
        "a sticker is GIF or PNG, not an unrecognised format"


def test_status_counts_the_outbox_by_state_in_sql_without_reading_any_envelope(network):  # noqa: F811
    """`status` loaded every outbox row, envelope included, to count them: 300,000 delivered rows took 15 s and
    2.4 GB. Every statement it runs is looked at: none reads the envelope column."""
    a, b = network["a"], network["b"]
    for text in ("一", "二"):
        a.node.send_text("zhangsan", b.user("lisi"), text)
    b.stop()
    a.node.send_text("zhangsan", b.user("lisi"), "三")
    statements = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        document = json.loads(node_cli(a, "--json", "status"))
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert document["outbox"] == {"delivered": 2, "pending": 1}
    assert any("outbox" in statement for statement in statements)  # the hook saw the count
    assert [statement for statement in statements if "envelope" in statement] == []


def test_history_says_which_messages_are_not_delivered_and_nothing_for_delivered_or_received_ones(network):  # noqa: F811
    """§6: a given-up message is told to its sender. `history` printed it exactly as a delivered one; only --json
    had its delivery state."""
    a, b = network["a"], network["b"]
    delivered = a.node.send_text("zhangsan", b.user("lisi"), "已送达")
    b.stop()
    a.node.send_text("zhangsan", b.user("lisi"), "等待中")
    given_up = a.node.send_text("zhangsan", b.user("lisi"), "已放弃")
    with a.node.db.begin() as session:
        session.execute(update(Outbox).where(Outbox.message_id == given_up.message_id)
                        .values(state="failed", last_error="gave up"))
    lines = node_cli(a, "history", "--as", "zhangsan", delivered.conversation_id).splitlines()
    assert [line.split("\t")[3:] for line in lines] == [
        ["已送达", "read by 0"],
        ["等待中", "read by 0", "not delivered yet: waiting to be sent again"],
        ["已放弃", "read by 0", "delivery failed: the node gave up (outbox list --state failed)"]]
    received = node_cli(b, "history", "--as", "lisi", delivered.conversation_id).splitlines()
    assert [line.split("\t")[3:] for line in received] == [["已送达", "read by 0"]]  # received: no delivery state
