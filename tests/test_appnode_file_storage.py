"""Files on disk at either end (A.10, docs/protocol.md §7.2): a file gone from its origin's data directory, part
files a download leaves when its process is ended, and sending a file a chunk at a time."""

from __future__ import annotations

import pytest

from app.appnode.protocol import FileGone
from app.appnode.registry import CannotRead
from tests.test_appnode import PDF, network  # noqa: F401 (fixture)
from tests.test_appnode_cli import refusal
from tests.test_sessions import people  # noqa: F401 (fixture)


def test_a_file_gone_from_its_origin_is_refused_for_good_not_as_the_origin_s_fault(network):  # noqa: F811
    """Removed from the origin's files/ by hand, or a restore without its files: the origin failed with a
    traceback (500), and the downloading node was told `internal_error`, a fault to retry. Its own user's
    `download` printed the path where nothing was."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    own = a.dir / "files" / a.id / message.document["content"]["file_id"]
    own.unlink()
    with pytest.raises(FileGone) as refused:
        b.node.download("lisi", message.message_id)
    assert refused.value.status == 410 and refused.value.code == "file_gone"
    assert list((b.dir / "files" / a.id).iterdir()) == []
    with pytest.raises(CannotRead, match=str(own)):
        a.node.download("zhangsan", message.message_id)
    code, document = refusal(a.dir, "download", "--as", "zhangsan", message.message_id)
    assert code == 2 and document["error"]["code"] == "cannot_read" and str(own) in document["error"]["message"]
