"""Copies of a file message forged into another conversation (docs/protocol.md §6, §7.2). A node that is home of
a group of its own and a member node of another group sees that group's file messages, and may relay a copy of
one (same message id, same file id, any declared type) into its own group. What the copy must not get: the
file's bytes for users of its group, or the real message's download at the member node spoiled for good."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import update

from app.appnode import protocol
from app.appnode.protocol import NotFound
from app.appnode.store import StoredFile
from tests.appnode_harness import raw_post
from tests.test_appnode import PDF, network, settle, stored_messages  # noqa: F401 (fixture)
from tests.test_appnode_hostile_peers import group_message
from tests.test_appnode_message_ids import three_nodes_and_a_group
from tests.test_sessions import people  # noqa: F401 (fixture)


def real_file_and_a_group_of_c(network):  # noqa: F811
    """zhangsan's file in A's group (lisi at B, sunqi at C), and C's own group with zhaoliu at B."""
    a, b, c, group = three_nodes_and_a_group(network)
    real = a.node.send_file("zhangsan", group.address, PDF, "file", file_name="通报.pdf")
    group_of_c = c.node.create_group("sunqi", "C的群", [b.user("zhaoliu")])
    settle(a, b, c)
    return a, b, c, real, group_of_c


def forge(a, b, c, real, group_of_c, *, message_id: str | None = None, **content) -> tuple[dict, int]:
    """C relays to B, into its own group, zhangsan's file message as C saw it, with `content` changed."""
    seen = next(m for m in stored_messages(c) if m.message_id == real.message_id).document["content"]
    forged = group_message(a, c, b, group_of_c.address, "zhangsan", "x")
    payload = forged["payload"]
    payload["message_id"] = forged["message_id"] = message_id or real.message_id
    payload["msg_type"], payload["content"] = "file", {**copy.deepcopy(seen), **content}
    status, _ = raw_post(c.node, b, "message", forged)
    return payload, status


def download_request(b, a, payload: dict) -> tuple[int, dict]:
    envelope = protocol.make_envelope(from_node=b.id, to_node=a.id, type="download", payload=payload)
    protocol.validate("download", payload)
    return raw_post(b.node, a, "download", envelope)


def test_the_origin_serves_no_forged_copy_of_its_file_message_and_the_real_one_still_downloads(network):  # noqa: F811
    """The download request named the message by id and file id only, and the origin found its own message and
    served the file to any node taking part in it: zhaoliu, in C's group only, got zhangsan's file. And B kept
    the bytes under the copy's declared type, so lisi's download of the real message was refused from then on."""
    a, b, c, real, group_of_c = real_file_and_a_group_of_c(network)
    forged, status = forge(a, b, c, real, group_of_c, mime_type="application/octet-stream", file_name="看这个.bin")
    if status == 200:
        assert {m.conversation_id for m in stored_messages(b) if m.message_id == real.message_id} == {
            real.conversation_id, forged["conversation_id"]}
    with pytest.raises(NotFound, match="no such file|no file message"):
        b.node.download("zhaoliu", real.message_id)
    kept = b.node.download("lisi", real.message_id)
    assert (b.node.file_bytes(kept), kept.declared, kept.file_name) == (PDF, "application/pdf", "通报.pdf")


def test_the_origin_answers_a_download_in_another_conversation_as_it_answers_an_unknown_message(network):  # noqa: F811
    """Named with the conversation, the origin's message must be in it; the refusal says nothing of the message
    the id is in."""
    a, b, c, real, group_of_c = real_file_and_a_group_of_c(network)
    file_id = real.document["content"]["file_id"]
    elsewhere = download_request(b, a, {"file_id": file_id, "message_id": real.message_id,
                                        "conversation_id": f"g:{group_of_c.address}"})
    unknown = download_request(b, a, {"file_id": file_id, "message_id": protocol.new_message_id(),
                                      "conversation_id": real.conversation_id})
    assert elsewhere[0] == unknown[0] == 404
    assert elsewhere[1]["error"] == unknown[1]["error"]
    named = download_request(b, a, {"file_id": file_id, "message_id": real.message_id,
                                    "conversation_id": real.conversation_id, "range": {"offset": 0, "length": 4}})
    assert named[0] == 206


@pytest.mark.parametrize("other_id", [False, True], ids=["same message id", "another message id"])
def test_a_file_kept_for_the_real_message_is_not_given_to_a_forged_copy_of_it(network, other_id):  # noqa: F811
    """Once lisi has the file at B, a copy naming the same file (under the real message's id or another), with
    the same declared type, was given the kept bytes without the origin being asked."""
    a, b, c, real, group_of_c = real_file_and_a_group_of_c(network)
    kept = b.node.download("lisi", real.message_id)
    forged, status = forge(a, b, c, real, group_of_c, message_id=protocol.new_message_id() if other_id else None)
    assert status == 200
    with pytest.raises(NotFound, match="no such file"):
        b.node.download("zhaoliu", forged["message_id"], forged["conversation_id"])
    again = b.node.download("lisi", real.message_id, real.conversation_id)
    assert (again.path, b.node.file_bytes(again)) == (kept.path, PDF)


def test_the_real_file_kept_under_a_forged_copys_type_is_given_to_the_real_message(network):  # noqa: F811
    """A node of the earlier release kept the bytes the origin served for a forged copy under the copy's type,
    and refused the real message's download for good: the same bytes, passing as the real message's type, are
    its file, under its own name and type."""
    a, b, c, real, _ = real_file_and_a_group_of_c(network)
    kept = b.node.download("lisi", real.message_id)
    with b.node.db.begin() as session:  # as the earlier release left it: kept for the copy, and not saying whose
        session.execute(update(StoredFile).where(StoredFile.file_id == kept.file_id).values(
            declared="application/octet-stream", file_name="看这个.bin", conversation_id=None))
    again = b.node.download("lisi", real.message_id)
    assert (b.node.file_bytes(again), again.declared, again.file_name) == (PDF, "application/pdf", "通报.pdf")
