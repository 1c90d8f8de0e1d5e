"""Files on disk at either end (A.10, docs/protocol.md §7.2): a file gone from its origin's data directory, part
files a download leaves when its process is ended, and sending a file a chunk at a time."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import threading

import pytest
from sqlalchemy import func, select

from app.appnode import part_files
from app.appnode.protocol import FileGone
from app.appnode.registry import CannotRead
from app.appnode.store import Message, StoredFile
from tests.appnode_processes import PYTHON, ROOT, eventually
from tests.test_appnode import PDF, network  # noqa: F401 (fixture)
from tests.test_appnode_cli import refusal
from tests.test_sessions import people  # noqa: F401 (fixture)

BIG_PDF = b"%PDF-1.7\n" + b"0" * (512 * 1024) + b"\n%%EOF\n"  # several chunks: a download can stall part way


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


@pytest.fixture
def stalling(network, monkeypatch):  # noqa: F811
    """Node A serves the first chunk of every download, then nothing until the test ends: a download in progress
    for as long as the test needs one."""
    a = network["a"]
    serve, release = a.node._serve_download, threading.Event()

    def first_chunk_only(envelope):
        reply = serve(envelope)

        def body():
            chunks = iter(reply.body)
            yield next(chunks)
            release.wait(120)
            yield from chunks
        return dataclasses.replace(reply, body=body())

    monkeypatch.setattr(a.node, "_serve_download", first_chunk_only)
    yield network
    release.set()


def parts(served, origin) -> list[str]:
    directory = served.dir / "files" / origin.id
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) if directory.exists() else []


def stalled_download(b, message_id: str, a) -> subprocess.Popen:
    """`download` run as an operator runs it, once its part file holds the first chunk."""
    before = parts(b, a)
    process = subprocess.Popen([PYTHON, "-m", "app.appnode", "--data", str(b.dir), "download", "--as", "lisi",
                                message_id], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    eventually(lambda: any((b.dir / "files" / a.id / name).stat().st_size
                           for name in parts(b, a) if name not in before), what="the part file's first chunk")
    return process


@pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGHUP])
def test_a_download_ended_by_sigterm_or_sighup_leaves_no_part_file(stalling, ending):
    """SIGINT removed the part file (KeyboardInterrupt), but SIGTERM (a service stopping, `kill`) and SIGHUP (the
    terminal closed) ended the process where it was, leaving up to 1 GiB hidden in files/<origin>/ for ever."""
    a, b = stalling["a"], stalling["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), BIG_PDF, "file", file_name="协查通报.pdf")
    process = stalled_download(b, message.message_id, a)
    process.send_signal(ending)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + ending, stderr
    assert parts(b, a) == []


def test_part_files_of_killed_downloads_are_swept_and_one_in_use_is_not(stalling, monkeypatch):
    """SIGKILL (the OOM killer, a power cut) leaves its part file: the next download into the directory removed
    none of them. Those no live download holds are swept; the part of a download still running stays."""
    a, b = stalling["a"], stalling["b"]
    first = a.node.send_file("zhangsan", b.user("lisi"), BIG_PDF, "file", file_name="一.pdf")
    killed = stalled_download(b, first.message_id, a)
    killed.kill()
    killed.communicate(timeout=60)
    abandoned = parts(b, a)
    assert len(abandoned) == 1
    running = stalled_download(b, first.message_id, a)
    in_use = [name for name in parts(b, a) if name not in abandoned]
    try:
        monkeypatch.undo()  # A serves whole files again
        second = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="二.pdf")
        b.node.download("lisi", second.message_id)
        assert parts(b, a) == in_use
    finally:
        running.send_signal(signal.SIGTERM)
        running.communicate(timeout=60)
    assert parts(b, a) == []


def test_a_node_starting_sweeps_part_files_no_process_holds_in_every_origin_s_directory(network):  # noqa: F811
    """`run` sweeps at start (NodeServer.load): the part files of origins no download comes from again."""
    a, b = network["a"], network["b"]
    abandoned = b.dir / "files" / a.id / ".f-0123456789abcdef01234567.abcd1234"
    abandoned.parent.mkdir(parents=True)
    abandoned.write_bytes(b"%PDF-1.7\n")
    with part_files.part_file(b.dir / "files" / "44000000002025000009", "f-00000000000000000000000f") as (held, _):
        assert b.node.sweep_part_files() == [abandoned.name]
        assert held.exists() and not abandoned.exists()


# The command run through main(), as `python -m app.appnode` runs it, its peak of Python allocations written to
# PEAK. Traced from after the imports, which are the same whatever the file's size.
SENDING_MEASURED = """
import sys, tracemalloc
from app.appnode.cli import main
tracemalloc.start()
sys.argv = ["app.appnode", *sys.argv[1:]]
try:
    main()
finally:
    with open(PEAK, "w") as out:
        out.write(str(tracemalloc.get_traced_memory()[1]))
"""


def test_send_file_reads_the_file_a_chunk_at_a_time_not_whole(network, tmp_path):  # noqa: F811
    """`send-file` read the whole file into memory (up to 1 GiB) and copied it again to hash and keep it: 404 MB
    resident for a file of 300 MiB, where downloading it took 92 MB. Measured by tracemalloc in the command's
    own process: its peak stays a small part of the file's size."""
    a, b = network["a"], network["b"]
    size = 48 * 1024 * 1024
    sent = tmp_path / "现场录像.pdf"
    with sent.open("wb") as stream:
        stream.write(b"%PDF-1.7\n")
        for _ in range(size // (1024 * 1024)):
            stream.write(os.urandom(1024 * 1024))
    peak = tmp_path / "peak"
    script = SENDING_MEASURED.replace("PEAK", repr(str(peak)))
    done = subprocess.run([PYTHON, "-c", script, "--data", str(a.dir), "--json", "send-file", "--as",
                           "zhangsan", b.user("lisi"), str(sent)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(peak.read_text()) < size // 6, f"peak {int(peak.read_text()) // 1024} KiB"
    file_id = json.loads(done.stdout)["file_id"]
    kept = a.dir / "files" / a.id / file_id
    with sent.open("rb") as original, kept.open("rb") as copy:
        assert hashlib.file_digest(copy, "sha256").digest() == hashlib.file_digest(original, "sha256").digest()
    assert parts(a, a) == []


def test_two_downloads_of_one_file_at_once_both_end_with_the_file(network):  # noqa: F811
    """Two users of one node downloading the same file at the same moment (a file sent to a group, say): both
    found it not yet kept and fetched it; the one recording it second failed with a traceback (the files table's
    primary key, `IntegrityError`), though its bytes were the same, checked against the same checksum. Here the
    second download runs whole at the moment the first is about to record the file."""
    from sqlalchemy import event

    a, b = network["a"], network["b"]
    sent = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    engine = b.node.db.kw["bind"]
    other: dict = {}

    def other_download_first(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO FILES") and not other:
            other["running"] = True
            worker = threading.Thread(target=lambda: other.update(kept=b.node.download("lisi", sent.message_id)))
            worker.start()
            worker.join(60)

    event.listen(engine, "before_cursor_execute", other_download_first)
    try:
        kept = b.node.download("lisi", sent.message_id)
    finally:
        event.remove(engine, "before_cursor_execute", other_download_first)
    assert other["kept"].sha256 == kept.sha256 == hashlib.sha256(PDF).hexdigest()
    assert b.node.file_bytes(kept) == PDF
    assert [p.name for p in (b.dir / "files" / a.id).iterdir()] == [kept.file_id]


def test_send_file_ended_before_its_message_is_kept_leaves_no_file(network, tmp_path):  # noqa: F811
    """`send-file` keeps the file, then looks the recipient's node up in the routing table, pulling it from the
    management node when the node is not in it, and only then stores the message. SIGTERM during that pull
    ended the command with the file and its row kept for a message that never was (up to 1 GiB). A file whose
    message was stored stays: the node loop still delivers it."""
    import socket

    a = network["a"]
    silent = socket.create_server(("127.0.0.1", 0))  # takes the connection, never answers: a stalled pull
    document = tmp_path / "协查通报.pdf"
    document.write_bytes(PDF)
    unknown = "lisi@44000000002025000099"
    env = {**os.environ, "MPIM_NODE_REGISTRY_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"}
    own = a.dir / "files" / a.id
    before = set(own.iterdir()) if own.exists() else set()
    with a.node.db() as session:
        messages_before = session.scalar(select(func.count()).select_from(Message))
    process = subprocess.Popen([PYTHON, "-m", "app.appnode", "--data", str(a.dir), "send-file", "--as", "zhangsan",
                                unknown, str(document)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        silent.settimeout(60)
        connection, _ = silent.accept()  # the pull has begun: the file is kept by now
        assert {p.name for p in set(own.iterdir()) - before if not p.name.startswith(".")}
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 128 + signal.SIGTERM
        connection.close()
    finally:
        process.kill()
        silent.close()
    assert set(own.iterdir()) == before
    with a.node.db() as session:
        assert session.scalar(select(func.count()).select_from(StoredFile).where(
            StoredFile.origin_node == a.id)) == len(before)
        assert session.scalar(select(func.count()).select_from(Message)) == messages_before
