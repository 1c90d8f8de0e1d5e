"""One caller cannot take more than its share of the node's threads, and a caller that stops reading its answer
loses its thread, against the reference node as production serves it (gunicorn, mutual TLS on 127.0.0.1):
docs/protocol.md §10, app/appnode/caller_limit.py and request_deadline.py."""

from __future__ import annotations

import http.client
import inspect
import json
import socket
import threading
from datetime import timedelta

import gunicorn
import pytest
from gunicorn.workers import gthread

from app.appnode import protocol, validation
from app.appnode.caller_limit import RETRY_AFTER_SECONDS
from app.appnode.outbox import DELIVERY_PARALLELISM
from app.appnode.peer_slots import CREEP_AFTER, PeerSlots
from tests.appnode_harness import ServedNode, raw_post
from tests.appnode_processes import eventually
from tests.test_appnode import network, stored_messages  # noqa: F401 (fixture)
from tests.test_appnode_slow_senders import (  # noqa: F401 (fixture)
    FEDERATION_POST,
    THREADS,
    bounded,
    finished,
    honest_message,
    in_background,
    logged_cut_off,
    peer_connection,
    sent_until_closed,
)
from tests.test_sessions import people  # noqa: F401 (fixture)

LIMITED_THREADS, LIMIT = 4, 2


@pytest.fixture
def limited(network, live_server, people, tmp_path):  # noqa: F811
    """Nodes A and B, and node C served by gunicorn with 4 threads, 2 per caller, and a 60 s request deadline:
    whoever holds a thread here holds it for the whole test."""
    minister, _ = people
    c = ServedNode(tmp_path, live_server, "110000", minister, request_read_seconds=60.0,
                   max_connections_per_caller=LIMIT).start_process(threads=LIMITED_THREADS)
    for node in (network["a"], network["b"]):
        node.node.sync_routes()
    yield network["a"], network["b"], c
    c.stop()


@pytest.fixture
def default_limit(network, live_server, people, tmp_path):  # noqa: F811
    """Nodes A and B, and node C served by gunicorn with `run`'s threads and limit per caller, and a 60 s request
    deadline: whoever holds a thread here holds it for the whole test."""
    minister, _ = people
    c = ServedNode(tmp_path, live_server, "110000", minister, request_read_seconds=60.0).start_process()
    for node in (network["a"], network["b"]):
        node.node.sync_routes()
    yield network["a"], network["b"], c
    c.stop()


def answer_of(connection) -> tuple[int, dict, dict]:
    """The status, headers and JSON body of the answer on `connection`."""
    answer = http.client.HTTPResponse(connection)
    answer.begin()
    return answer.status, dict(answer.getheaders()), json.loads(answer.read())


def answer_or_closed(connection) -> tuple[int, dict, dict] | None:
    """The answer on `connection` (`answer_of`), or None when the node closed it without one."""
    try:
        return answer_of(connection)
    except OSError:  # reset, or ended before a status line (http.client.RemoteDisconnected)
        return None


def logged_refusals(c: ServedNode, who: str) -> list[str]:
    return [line for line in c.log.read_text("utf-8", "replace").splitlines()
            if "refused a connection from" in line and who in line]


def test_a_peer_holding_its_limit_is_refused_more_threads_and_another_peer_is_served(limited):
    """Peer B sends requests slowly on as many connections as C has threads: it used to hold them all until each
    was cut off at its deadline, and to take them again on reconnecting. Now two are served, the others are
    refused at once without their requests being read: the first answered 503 too_many_connections with
    Retry-After, the next, while that refusal is still being answered, closed without an answer. A's message
    goes through while B's two still hold their threads."""
    a, b, c = limited
    envelope = json.dumps(honest_message(b, c, "慢慢来"), ensure_ascii=False).encode()
    waiting = []
    for i in range(LIMITED_THREADS):  # each from an address of its own: they are one caller by their certificate
        connection = peer_connection(b, c, source=f"127.0.0.{10 + i}")
        connection.sendall(FEDERATION_POST % (len(envelope) + 10) + envelope)
        waiting.append((connection, in_background(answer_or_closed, connection)))
    eventually(lambda: sum(not outcome["thread"].is_alive() for _, outcome in waiting) == LIMITED_THREADS - LIMIT,
               timeout=30, what="the connections past B's limit refused")
    refused = [finished(outcome) for _, outcome in waiting if not outcome["thread"].is_alive()]
    answered = [answer for answer in refused if answer is not None]
    assert answered
    for status, headers, body in answered:
        assert (status, body["error"]["code"], headers["Retry-After"]) == (503, "too_many_connections", "5"), body
        validation.validate("error", body)
    status, body = raw_post(a.node, c, "message", honest_message(a, c))
    assert (status, body["status"]) == (200, "accepted"), body
    held = [(connection, outcome) for connection, outcome in waiting if outcome["thread"].is_alive()]
    assert len(held) == LIMIT  # still waiting for their answers while A was served
    assert len(logged_refusals(c, b.id)) == 1  # once, however many were refused
    for connection, outcome in held:
        connection.shutdown(socket.SHUT_RDWR)
        outcome["thread"].join(30)
    assert [m.document["content"]["text"] for m in stored_messages(c)] == ["你好"]


def test_callers_without_a_certificate_are_limited_by_address_during_the_handshake(limited):
    """The handshake is reached without a certificate, so until it is done a caller is its address: a third
    connection from an address with two handshakes in progress is closed at once, and a peer from another
    address is served meanwhile."""
    a, _, c = limited
    waiting = []
    for _ in range(LIMIT + 1):
        half_handshake = socket.create_connection(("127.0.0.1", c.port), timeout=30, source_address=("127.0.0.3", 0))
        half_handshake.sendall(b"\x16\x03\x01")  # the start of a TLS record header, and nothing more
        waiting.append((half_handshake, in_background(sent_until_closed, half_handshake)))
    eventually(lambda: sum(not outcome["thread"].is_alive() for _, outcome in waiting) == 1, timeout=30,
               what="the third half handshake closed")
    assert [finished(outcome) for _, outcome in waiting if not outcome["thread"].is_alive()] == [b""]
    status, body = raw_post(a.node, c, "message", honest_message(a, c))
    assert (status, body["status"]) == (200, "accepted"), body
    held = [(connection, outcome) for connection, outcome in waiting if outcome["thread"].is_alive()]
    assert len(held) == LIMIT
    assert len(logged_refusals(c, "127.0.0.3")) == 1
    for connection, outcome in held:
        connection.shutdown(socket.SHUT_RDWR)
        assert finished(outcome) == b""


def big_pdf(size: int) -> bytes:
    return b"%PDF-1.7\n" + b"0" * (size - 16) + b"\n%%EOF\n"


def test_a_download_whose_reader_stops_reading_frees_its_thread(bounded):  # noqa: F811
    """A peer asked for a file on as many connections as the node has threads and read none of it: each answer
    stopped when the sockets' buffers were full and the threads waited on them for as long as the peer liked.
    Each is cut off when a write waits past the deadline, an honest message is answered, and an honest
    download of the same file is served whole."""
    a, c = bounded
    data = big_pdf(24 * 1024 * 1024)  # far more than loopback's socket buffers hold
    message = c.node.send_file("sunqi", a.user("zhangsan"), data, "file", file_name="卷宗.pdf")
    request = protocol.make_envelope(from_node=a.id, to_node=c.id, type="download", payload={
        "file_id": message.document["content"]["file_id"], "message_id": message.message_id})
    stalled = []
    for _ in range(THREADS):
        body = json.dumps(protocol.restamp(request)).encode()
        connection = peer_connection(a, c)
        connection.sendall(FEDERATION_POST.replace(b"messages", b"download") % len(body) + body)
        answer = http.client.HTTPResponse(connection)
        answer.begin()  # and then reads nothing
        assert answer.status == 200
        stalled.append(answer)
    status, reply = raw_post(a.node, c, "message", honest_message(a, c))
    assert (status, reply["status"]) == (200, "accepted"), reply
    eventually(lambda: len([line for line in logged_cut_off(c, a.id) if "did not take its answer" in line])
               == THREADS, timeout=30, what="the stalled downloads cut off")
    for answer in stalled:
        with pytest.raises(http.client.IncompleteRead):  # closed before the length it announced
            answer.read()
    assert a.node.file_bytes(a.node.download("zhangsan", message.message_id)) == data


def test_the_gunicorn_internals_the_node_worker_relies_on_are_there():
    """NodeWorker does the wait for data and the handshake of a new connection itself (server.py), relying on
    gthread's `handle` skipping both for a connection already initialised and on its deferral to the poller:
    a gunicorn other than the pinned one must be checked against them before it is taken."""
    assert gunicorn.__version__ == "27.0.1"
    assert "if not conn.initialized and not conn.data_ready:" in inspect.getsource(gthread.ThreadWorker.handle)
    assert "if self.initialized:\n            return" in inspect.getsource(gthread.TConn.init)
    assert gthread._DEFER is not None and gthread.DEFAULT_WORKER_DATA_TIMEOUT > 0


def honest_message_within(a: ServedNode, c: ServedNode, seconds: float) -> tuple[int, dict]:
    """A's message to C, answered within `seconds`: a functional deadline, far below the stall it guards
    against (tens of seconds) and far above an answer on loopback."""
    outcome = in_background(raw_post, a.node, c, "message", honest_message(a, c))
    outcome["thread"].join(seconds)
    assert not outcome["thread"].is_alive(), f"A's message was not answered within {seconds} s"
    return finished(outcome)


STALLERS = 20  # each held gunicorn's main loop for 2 s: 40 s in all


def test_callers_failing_their_handshake_and_never_closing_do_not_hold_up_the_node(limited):
    """A connection whose TLS handshake failed was closed by gunicorn's main loop, which waited up to 2 s for
    the caller to close it too, accepting nothing meanwhile: callers sending a few bytes of anything and then
    nothing held up every other caller, certificate or not, 2 s each. Such a connection is now shut at once
    (nothing was sent on it, so nothing is lost), and A's message is answered while they are all still open."""
    a, _, c = limited
    stallers = []
    for i in range(STALLERS):
        staller = socket.create_connection(("127.0.0.1", c.port), timeout=30, source_address=(f"127.0.1.{i}", 0))
        staller.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # plain HTTP on the TLS port
        stallers.append(staller)
    status, body = honest_message_within(a, c, 15)
    assert (status, body["status"]) == (200, "accepted"), body
    for staller in stallers:
        assert sent_until_closed(staller) == b""  # shut by the node, the staller never closed it
        staller.close()


def test_a_peer_asking_to_close_and_never_closing_holds_no_more_than_its_own_threads(limited):
    """After an answer with "Connection: close" gunicorn's main loop waited up to 2 s for the caller to close
    its end too (so that the answer is not reset away), accepting nothing meanwhile: a peer asking so and never
    closing held up every other caller, 2 s a connection. The wait now happens in the thread that served the
    connection, counted against the peer's own limit: B's next connection meanwhile is refused, not queued
    behind it, and A is served."""
    a, b, c = limited
    health = b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    lingering = []
    for i in range(LIMIT):
        connection = peer_connection(b, c, source=f"127.0.2.{i}")
        connection.sendall(health)
        lingering.append(connection)
    for connection in lingering:  # answered in full, and B does not close its end
        answer = http.client.HTTPResponse(connection)
        answer.begin()
        assert (answer.status, json.loads(answer.read())["status"]) == (200, "ok")
    another = peer_connection(b, c, source="127.0.2.9")
    another.sendall(health)
    status, headers, body = answer_of(another)
    assert (status, body["error"]["code"]) == (503, "too_many_connections"), body
    status, reply = honest_message_within(a, c, 15)
    assert (status, reply["status"]) == (200, "accepted"), reply
    for connection in [*lingering, another]:
        assert sent_until_closed(connection) == b""  # shut by the node once B's time to close was up
        connection.close()



FLOODERS = 40  # each refusal held one of C's two free threads about 1 s: A's handshake queued some 20 s behind


def holding_the_limit(b: ServedNode, c: ServedNode, addresses: str) -> list[tuple]:
    """B's limit on C, held for the whole test: one connection more than it, each from an address in `addresses`
    and sending a request whose rest never comes, until one is refused; the others, each with the background read
    of its answer. B's client handshake ends before C's, which counts the connection, so C may count them in
    another order, or after a connection B opens next: which ones C serves is only known from the refusal."""
    envelope = json.dumps(honest_message(b, c, "慢慢来"), ensure_ascii=False).encode()
    waiting = []
    for i in range(LIMIT + 1):
        connection = peer_connection(b, c, source=f"{addresses}.{i}")
        connection.sendall(FEDERATION_POST % (len(envelope) + 10) + envelope)
        waiting.append((connection, in_background(answer_or_closed, connection)))
    eventually(lambda: sum(not outcome["thread"].is_alive() for _, outcome in waiting) == 1, timeout=30,
               what="B's connection past its limit refused")
    [(connection, refused)] = [(connection, finished(outcome)) for connection, outcome in waiting
                               if not outcome["thread"].is_alive()]
    assert refused is None or refused[0] == 503, refused  # refused, not answered: its request never ended
    connection.close()  # C stops waiting for B to close it: B's next refusal is answered, not closed at once
    return [(connection, outcome) for connection, outcome in waiting if outcome["thread"].is_alive()]


def flood(b: ServedNode, c: ServedNode, source: str, stop: threading.Event, connected: list) -> None:
    """Connect to C as B from `source`, again and again until `stop`, sending nothing and closing each connection
    only once the next one's handshake is done; each handshake done goes into `connected`."""
    last = None
    while not stop.is_set():
        try:
            connection = peer_connection(b, c, source=source)
        except OSError:  # closed during the handshake, or C's queue was longer than 30 s
            continue
        connected.append(source)
        if last is not None:
            last.close()
        last = connection
    if last is not None:
        last.close()


def test_a_peer_flooding_past_its_limit_does_not_starve_another_peer(limited):
    """A refusal held a thread while its 503 was written and B given time to close (up to 2 s), outside B's
    count: B, holding its limit, kept connecting from many addresses and closing nothing, and A's message
    queued behind its refusals for as long as B went on. Now one refusal of B's at a time is answered, the
    others are closed at once, and A is answered while B floods."""
    a, b, c = limited
    held = holding_the_limit(b, c, "127.0.4")
    stop, connected = threading.Event(), []
    flooders = [in_background(flood, b, c, f"127.0.5.{i}", stop, connected) for i in range(FLOODERS)]
    try:
        eventually(lambda: len(connected) > LIMITED_THREADS, timeout=30, what="B's flood past C's threads")
        status, body = honest_message_within(a, c, 15)
        assert (status, body["status"]) == (200, "accepted"), body
    finally:
        stop.set()
        for outcome in flooders:
            finished(outcome)
    assert len(logged_refusals(c, b.id)) == 1  # once, however many were refused
    for connection, outcome in held:
        connection.shutdown(socket.SHUT_RDWR)
        outcome["thread"].join(30)
    assert [m.document["content"]["text"] for m in stored_messages(c)] == ["你好"]


def test_a_peer_delivering_at_full_parallelism_has_room_for_one_more_request(default_limit):
    """The default limit was the reference sender's parallelism itself: while B delivered that many envelopes
    to C at once, anything else B sent C (a CLI send, a download its user asked for) was refused 503. With
    B's deliveries all in flight (their bodies still on their way), one more request of B's is served."""
    _, b, c = default_limit
    envelope = json.dumps(honest_message(b, c, "慢慢来"), ensure_ascii=False).encode()
    delivering = []
    for i in range(DELIVERY_PARALLELISM):  # each from an address of its own: one caller by its certificate
        connection = peer_connection(b, c, source=f"127.0.6.{i}")
        connection.sendall(FEDERATION_POST % (len(envelope) + 10) + envelope)
        delivering.append(connection)
    status, body = raw_post(b.node, c, "message", honest_message(b, c))
    assert (status, body.get("status")) == (200, "accepted"), body
    assert logged_refusals(c, b.id) == []
    for connection in delivering:
        connection.close()


def test_a_busy_batch_to_a_peer_allowing_fewer_connections_than_the_sender_sends_at_once_goes_without_backoff(
        limited):
    """A sent up to DELIVERY_PARALLELISM envelopes at once to any peer: to C, which serves one caller two at a time,
    most of a busy batch was refused (503 too_many_connections, or closed during the handshake while C counted A
    by its address) and each refused envelope waited out a growing backoff, seconds to minutes, although C was
    healthy. A now learns how many C takes at once and sends the refused envelopes again at once, not charged as
    attempts: all go in one or two deliveries, none with a failed attempt, and C refuses A a few times at most.
    The envelopes to B in the same batch go as before."""
    a, b, c = limited
    texts = [f"第{i}条" for i in range(40)]
    for i, text in enumerate(texts):
        a.node.send_text("zhangsan", c.user("sunqi"), text, deliver=False)
        if i % 4 == 0:
            a.node.send_text("zhangsan", b.user("lisi"), text, deliver=False)
    for _ in range(2):
        a.node.deliver()
    assert [(row.state, row.attempts, row.last_error) for row in a.node.outbox()] == [("delivered", 1, None)] * 50
    # What A learned of C's limit is not asserted: it is down to timing whether A's envelopes overlapped at C past
    # its limit at all, and whether C answered a refusal (learned) or closed it unanswered (§10, not learned).
    assert a.node._peer_slots.limit(b.id) == DELIVERY_PARALLELISM
    assert len(logged_refusals(c, "")) <= 3
    assert sorted(m.document["content"]["text"] for m in stored_messages(c)) == sorted(texts)
    assert len(stored_messages(b)) == 10


def test_a_peer_refusing_every_connection_gets_its_retry_after_after_a_few_immediate_retries(limited):
    """A refusal past the peer's limit is sent again at once, but only a few times: while A's own connections
    hold its whole limit on C, each of A's envelopes is refused, and the delivery ends with each rescheduled after
    C's Retry-After, one attempt charged, instead of sending again for as long as C refuses. (What A learns of C's
    limit depends on which of its connections C answers 503, one at a time, and which it closes unanswered.)"""
    a, _, c = limited
    held = holding_the_limit(a, c, "127.0.7")
    try:
        for i in range(3):
            a.node.send_text("zhangsan", c.user("sunqi"), f"第{i}条", deliver=False)
        assert a.node.deliver() == {"delivered": 0, "retry": 3, "failed": 0}
        rows = a.node.outbox()
        assert [(row.state, row.attempts) for row in rows] == [("pending", 1)] * 3
        assert any("too_many_connections" in row.last_error for row in rows), [row.last_error for row in rows]
    finally:
        for connection, outcome in held:
            connection.shutdown(socket.SHUT_RDWR)
            outcome["thread"].join(30)


def test_a_single_envelope_refused_while_others_hold_the_peers_limit_waits_for_its_retry_after(limited, monkeypatch):
    """One envelope sent at once (a CLI send, a reply), refused 503 too_many_connections while nothing else of its
    process was in flight to C: connections outside it hold A's limit there (another process of A's, here the test's
    own), so no answer of its own will free a slot. It was sent again three times within a millisecond, C's
    Retry-After ignored, and A learned a limit of 1 for C that its own envelopes never caused. Now it is sent once,
    counted as an attempt and rescheduled after C's Retry-After, and A's concurrency for C is unchanged."""
    a, _, c = limited
    posted = []
    post = a.node.peers.post

    def counted_post(endpoint, path, body, **kwargs):
        posted.append(path)
        return post(endpoint, path, body, **kwargs)

    monkeypatch.setattr(a.node.peers, "post", counted_post)
    held = holding_the_limit(a, c, "127.0.8")
    try:
        a.node.send_text("zhangsan", c.user("sunqi"), "你好")
        [row] = a.node.outbox()
        assert (row.state, row.attempts, len(posted)) == ("pending", 1, 1), row.last_error
        assert "too_many_connections" in row.last_error, row.last_error
        assert row.next_attempt_at - row.first_attempt_at >= timedelta(seconds=RETRY_AFTER_SECONDS)
        assert a.node._peer_slots.limit(c.id) == DELIVERY_PARALLELISM
    finally:
        for connection, outcome in held:
            connection.shutdown(socket.SHUT_RDWR)
            outcome["thread"].join(30)


def test_a_peers_learned_concurrency_drops_to_what_it_took_and_creeps_back_up_only_under_load():
    """A refusal lowers the peer's concurrency to the envelopes in flight to it, the refused one not counted; one
    refused with nothing else of ours in flight changes nothing (connections outside the process held the limit); it
    goes up by one after CREEP_AFTER envelopes delivered while every slot was taken, not for envelopes
    delivered with slots to spare."""
    slots, peer, other = PeerSlots(4), "urn:mpim:node:11000000002025000001", "urn:mpim:node:44000000002025000001"
    assert [slots.take(peer) for _ in range(5)] == [True, True, True, True, False]
    slots.refused(peer)
    slots.release(peer, delivered=False)
    assert (slots.limit(peer), slots.take(peer), slots.limit(other)) == (3, False, 4)
    for _ in range(CREEP_AFTER - 1):  # all three slots in use at each delivery
        slots.release(peer, delivered=True)
        assert slots.take(peer)
    slots.release(peer, delivered=True)
    assert slots.limit(peer) == 4
    for _ in range(2):
        slots.release(peer, delivered=False)
    assert slots.take(peer)
    assert not slots.refused(peer)  # nothing else of ours in flight: others' connections hold its limit
    assert slots.limit(peer) == 4
    assert slots.take(peer)
    assert slots.refused(peer)  # the one other of ours in flight is what it takes
    slots.release(peer, delivered=False)
    assert slots.limit(peer) == 1
    for _ in range(CREEP_AFTER):
        slots.release(peer, delivered=True)  # 1 in flight of 1: at the limit
        assert slots.take(peer)
    assert slots.limit(peer) == 2
    for _ in range(CREEP_AFTER):
        slots.release(peer, delivered=True)  # 1 in flight of 2: slots to spare
        assert slots.take(peer)
    assert slots.limit(peer) == 2
