"""A.2 node sessions: proof of key possession, and every way to be refused (SPEC §4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.admission import applications, nodes
from app.database import utcnow
from app.extensions import db
from app.sessions.models import NodeSession
from tests.factories import NodeKeys, node_document, not_strict_bodies


@pytest.fixture
def people(make_user):
    return make_user("minister"), make_user("jx-admin", "provincial_admin", ("360000",))


def admit_with_keys(people, kind="ec256"):
    minister, jx_admin = people
    keys = NodeKeys(kind)
    document = node_document("360000", csr=keys.csr)
    node = applications.approve(applications.submit_by_user(document, by=jx_admin), by=minister)
    db.session.commit()
    return node, keys


def open_session(client, body):
    return client.post("/api/v1/session", json=body)


@pytest.mark.parametrize("kind", ["ec256", "rsa2048"])
def test_a_node_opens_a_session_with_its_key(client, people, kind):
    node, keys = admit_with_keys(people, kind)
    response = open_session(client, keys.session_request(node.node_id))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert len(body["token"]) >= 40 and body["expires_at"].endswith("Z")
    assert response.headers["Cache-Control"] == "no-store"  # it carries a bearer token (RFC 6749 §5.1)
    stored = db.session.scalars(db.select(NodeSession)).one()
    assert stored.token_hash != body["token"] and stored.node_id == node.node_id


def await_refusal(client, headers, timeout: float = 10.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/api/v1/routes", headers=headers)
        if response.status_code != 200 or time.monotonic() > deadline:
            return error_code(response)
        time.sleep(0.02)


def wait_for_a_lock_wait(thread, timeout: float = 30) -> bool:
    """Until `thread` ends or some session of this database waits on a lock (PostgreSQL); whether one did.
    Each look in a transaction of its own: inside one, pg_stat_activity answers from its first look's snapshot."""
    import time

    from sqlalchemy import text

    deadline = time.monotonic() + timeout
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
        while thread.is_alive() and time.monotonic() < deadline:
            if watcher.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND wait_event_type = 'Lock'")):
                return True
            time.sleep(0.02)
    return False


def error_code(response):
    return response.status_code, response.get_json()["error"]["code"]


def test_signature_by_another_key_is_refused(client, people):
    node, _ = admit_with_keys(people)
    assert error_code(open_session(client, NodeKeys().session_request(node.node_id))) == (401, "bad_signature")


def test_stale_and_future_timestamps_are_refused(client, people):
    node, keys = admit_with_keys(people)
    old = (datetime.now(UTC) - timedelta(minutes=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ahead = (datetime.now(UTC) + timedelta(minutes=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert error_code(open_session(client, keys.session_request(node.node_id, timestamp=old))) == \
        (401, "stale_timestamp")
    assert error_code(open_session(client, keys.session_request(node.node_id, timestamp=ahead))) == \
        (401, "future_timestamp")


def test_a_replayed_nonce_is_refused(client, people):
    node, keys = admit_with_keys(people)
    request = keys.session_request(node.node_id)
    assert open_session(client, request).status_code == 201
    assert error_code(open_session(client, request)) == (401, "replayed_nonce")
    fresh = keys.session_request(node.node_id, nonce="another-nonce-123")
    assert open_session(client, fresh).status_code == 201


def test_suspended_and_revoked_nodes_are_told_so_when_they_sign_with_their_key(client, people):
    """A revoked node's certificates are all revoked with it: a signature one of them verifies still proves the
    key, and the node hears node_revoked (the reference node tells its operator the revocation is final)."""
    minister, _ = people
    node, keys = admit_with_keys(people)
    nodes.suspend(node, "drill", by=minister)
    db.session.commit()
    assert error_code(open_session(client, keys.session_request(node.node_id))) == (401, "node_suspended")
    nodes.revoke(node, "retired", by=minister)
    db.session.commit()
    assert error_code(open_session(client, keys.session_request(node.node_id))) == (401, "node_revoked")


def whole_answer(response):
    return response.status_code, response.get_json(), response.headers.get("WWW-Authenticate")


def test_a_request_no_certificate_of_the_node_verifies_learns_nothing_of_the_node(client, people):
    """Node ids are public (every routing table lists them), but whether an id names a node, and whether a node
    out of the table is suspended, revoked or has no valid certificate, is not: a signature that does not verify
    with a certificate of the node gets one answer, the same for all of them and for an active node."""
    from app.pki import revocation
    from app.pki import service as pki

    minister, _ = people
    active, _ = admit_with_keys(people)
    suspended, _ = admit_with_keys(people)
    nodes.suspend(suspended, "drill", by=minister)
    revoked, _ = admit_with_keys(people)
    nodes.revoke(revoked, "retired", by=minister)
    compromised, _ = admit_with_keys(people)
    revocation.revoke(pki.current_certificate(compromised.node_id), "key_compromise", by=minister)
    expired, _ = admit_with_keys(people)
    pki.current_certificate(expired.node_id).not_after = utcnow() - timedelta(seconds=1)
    db.session.commit()
    forger = NodeKeys("ec256")
    node_ids = {"unknown": "36000000002025999999", "active": active.node_id, "suspended": suspended.node_id,
                "revoked": revoked.node_id, "certificate revoked": compromised.node_id,
                "certificate expired": expired.node_id}
    answers = {name: whole_answer(open_session(client, forger.session_request(node_id)))
               for name, node_id in node_ids.items()}
    assert answers["unknown"][:2] == (401, {"error": {
        "code": "bad_signature", "message": "The signature does not verify with the node's certificate."}})
    assert {name: answer for name, answer in answers.items() if answer != answers["unknown"]} == {}


def test_a_bad_signature_costs_the_same_verifications_for_an_unknown_id_and_a_known_node(client, people,
                                                                                         monkeypatch):
    """The time bad_signature takes must not tell an unknown id from a known node, nor how many certificates a
    node has: an id with no certificate verified nothing and answered sooner than a known node; a suspended
    node renewed three times, verifying against its four certificates, later still. Every one is now verified
    as often, a stand-in EC P-256 key (the same every time, its result discarded) making up the rest, and a
    known node's stored certificates are parsed once per process, not on every request."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from app.pki import service as pki
    from app.sessions import service

    verified = []
    real = service.verify_signature

    def counted(certificate, message, signature):
        verified.append(certificate.public_key())
        return real(certificate, message, signature)

    def verifications(node_id: str) -> tuple[int, tuple]:
        verified.clear()
        answer = whole_answer(open_session(client, forger.session_request(node_id)))
        return len(verified), answer

    monkeypatch.setattr(service, "verify_signature", counted)
    minister, _ = people
    active, _ = admit_with_keys(people)
    renewed, _ = admit_with_keys(people)
    for _ in range(3):
        pki.renew(renewed, NodeKeys().csr, by=minister)
    nodes.suspend(renewed, "drill", by=minister)
    db.session.commit()
    forger = NodeKeys("ec256")
    counts = {name: verifications(node_id) for name, node_id in (
        ("active", active.node_id), ("renewed", renewed.node_id), ("unknown", "36000000002025999998"))}
    assert counts["unknown"][1][:2] == (401, {"error": {
        "code": "bad_signature", "message": "The signature does not verify with the node's certificate."}})
    assert [answer for _, answer in counts.values()] == [counts["unknown"][1]] * 3
    assert len(pki.node_certificates(renewed.node_id)) == 4
    assert {name: count for name, (count, _) in counts.items()} == {"active": 4, "renewed": 4, "unknown": 4}
    verifications("36000000002025999999")
    assert all(key == verified[0] for key in verified)  # the stand-in, each time
    assert isinstance(verified[0], ec.EllipticCurvePublicKey) and verified[0].curve.name == "secp256r1"
    parsed = pki.parsed_certificate.cache_info().misses
    assert verifications(renewed.node_id)[0] == 4 and pki.parsed_certificate.cache_info().misses == parsed


def test_only_the_node_s_key_hears_why_it_has_no_valid_certificate(client, people):
    """certificate_expired, certificate_revoked and no_certificate (its only certificate not valid yet) are told to
    a signature that verifies with one of the node's certificates; any other key hears bad_signature."""
    from app.pki import revocation
    from app.pki import service as pki

    minister, _ = people
    node, keys = admit_with_keys(people)
    certificate = pki.current_certificate(node.node_id)
    forged = NodeKeys("ec256")
    certificate.not_before = utcnow() + timedelta(hours=1)
    db.session.commit()
    assert error_code(open_session(client, keys.session_request(node.node_id))) == (401, "no_certificate")
    assert error_code(open_session(client, forged.session_request(node.node_id))) == (401, "bad_signature")
    certificate.not_before, certificate.not_after = utcnow() - timedelta(days=2), utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert error_code(open_session(client, keys.session_request(node.node_id))) == (401, "certificate_expired")
    assert error_code(open_session(client, forged.session_request(node.node_id))) == (401, "bad_signature")
    certificate.not_after = utcnow() + timedelta(days=30)
    revocation.revoke(certificate, "key_compromise", by=minister)
    db.session.commit()
    assert error_code(open_session(client, keys.session_request(node.node_id))) == (401, "certificate_revoked")
    assert error_code(open_session(client, forged.session_request(node.node_id))) == (401, "bad_signature")


def test_a_stale_timestamp_is_told_alike_for_every_node_id(client, people):
    """The clock is checked before anything about the node is read: an old request, even one the node signed,
    hears stale_timestamp whatever the node's state, and a replay of it learns nothing later."""
    minister, _ = people
    node, keys = admit_with_keys(people)
    nodes.suspend(node, "drill", by=minister)
    db.session.commit()
    old = (datetime.now(UTC) - timedelta(minutes=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for request in (keys.session_request(node.node_id, timestamp=old),
                    NodeKeys().session_request("36000000002025999999", timestamp=old)):
        assert error_code(open_session(client, request)) == (401, "stale_timestamp")


def test_revoked_or_expired_certificate_is_refused(client, people):
    from app.pki import revocation
    from app.pki.models import Certificate

    minister, _ = people
    node, keys = admit_with_keys(people)
    certificate = db.session.scalars(db.select(Certificate).where(Certificate.node_id == node.node_id)).one()
    certificate.not_after = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert error_code(open_session(client, keys.session_request(node.node_id))) == (401, "certificate_expired")
    certificate.not_after = utcnow() + timedelta(days=30)
    revocation.revoke(certificate, "key_compromise", by=minister)
    db.session.commit()
    assert error_code(open_session(client, keys.session_request(node.node_id))) == (401, "certificate_revoked")


def test_sessions_end_when_a_certificate_of_the_node_is_revoked(client, people):
    """A stolen key's session must not outlive the revocation (up to MPIM_NODE_SESSION_SECONDS).
    Which certificate opened a session is not recorded, so every session of the node ends; the node
    opens a new one with a certificate that is still valid, as its client does on any 401."""
    from app.pki import revocation
    from app.pki import service as pki
    from app.pki.models import Certificate

    minister, _ = people
    node, keys = admit_with_keys(people)
    old = db.session.scalars(db.select(Certificate).where(Certificate.node_id == node.node_id)).one()
    renewed_keys = NodeKeys("ec256")
    pki.renew(node, renewed_keys.csr, by=minister)
    db.session.commit()
    token = open_session(client, keys.session_request(node.node_id)).get_json()["token"]  # with the old key
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/routes", headers=headers).status_code == 200
    revocation.revoke(old, "key_compromise", by=minister)
    db.session.commit()
    assert await_refusal(client, headers) == (401, "session_revoked")
    assert error_code(open_session(client, keys.session_request(node.node_id))) == (401, "bad_signature")
    renewed = open_session(client, renewed_keys.session_request(node.node_id))
    assert renewed.status_code == 201
    assert client.get("/api/v1/routes", headers={"Authorization": f"Bearer {renewed.get_json()['token']}"}) \
        .status_code == 200


@pytest.mark.parametrize("body", [
    {}, {"node_id": "123", "timestamp": "2026-01-01T00:00:00Z", "nonce": "abcdefgh", "signature": "AAAA" * 8},
    {"node_id": "36000000002025000001", "timestamp": "yesterday", "nonce": "abcdefgh", "signature": "AAAA" * 8},
    {"node_id": "36000000002025000001", "timestamp": "2026-01-01T00:00:00Z", "nonce": "short", "signature": "A" * 32},
    {"node_id": "36000000002025000001", "timestamp": "2026-01-01T00:00:00Z", "nonce": "abcdefgh",
     "signature": "not base64!!" * 3},
])
def test_malformed_session_requests_get_400(client, body):
    response = open_session(client, body)
    assert error_code(response) == (400, "invalid_request")


NODE_ID_RULE = "node_id must be a node id: 20 digits."
TIMESTAMP_RULE = ("timestamp must be an RFC 3339 time in UTC, ending in Z or +00:00 (0 to 6 fractional digits), "
                  "as in 2025-06-12T02:15:30Z.")
NONCE_RULE = "nonce must be 8 to 128 characters of A-Z, a-z, 0-9, _ and - (base64url without padding)."
SIGNATURE_RULE = "signature must be base64 (A-Z, a-z, 0-9, +, / and =) of 16 to 1400 characters."


@pytest.mark.parametrize(("field", "value", "message"), [
    ("node_id", "3600000000202500000", NODE_ID_RULE), ("node_id", None, NODE_ID_RULE),
    ("timestamp", "2026-01-01T08:00:00+08:00", TIMESTAMP_RULE), ("timestamp", "yesterday", TIMESTAMP_RULE),
    ("nonce", "abc+/def=", NONCE_RULE), ("nonce", "short", NONCE_RULE), ("nonce", "a" * 129, NONCE_RULE),
    ("signature", "not base64!!" * 3, SIGNATURE_RULE),
])
def test_a_malformed_session_field_is_refused_with_its_rule(client, field, value, message):
    """The message said only "timestamp is missing or malformed.": a node sending +08:00, a standard base64
    nonce or a 19-digit id could not tell what the rule was."""
    body = {"node_id": "36000000002025000001", "timestamp": "2026-01-01T00:00:00Z", "nonce": "abcdefgh",
            "signature": "A" * 32, field: value}
    error = open_session(client, body).get_json()["error"]
    assert (error["code"], error["field"], error["message"]) == ("invalid_request", field, message)


@pytest.mark.parametrize("case", ["duplicate_top_level_key", "duplicate_nested_key", "utf8_bom", "utf16_bom",
                                  "utf16_le", "utf32", "infinite_number"])
def test_a_session_request_that_is_not_strict_json_is_refused_and_its_nonce_kept(client, people, case):
    """Each of these opened a session: Python's json keeps the last of two equal keys and reads a BOM, UTF-16
    or UTF-32. Refused before the service, the nonce is not spent and the same request, sent right, opens one."""
    node, keys = admit_with_keys(people)
    request = keys.session_request(node.node_id)
    body, reason = not_strict_bodies({**request, "client": {"name": "ref-node"}}, duplicate="nonce",
                                     nested="client")[case]
    response = client.post("/api/v1/session", data=body, content_type="application/json")
    assert error_code(response) == (400, "invalid_json") and reason in response.get_json()["error"]["message"]
    assert db.session.scalars(db.select(NodeSession)).all() == []
    assert open_session(client, request).status_code == 201


@pytest.mark.parametrize("timestamp", [
    "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-12-02T24:00:00Z", "0000-01-01T00:00:00Z",
    "\uff12\uff10\uff12\uff16-12-02T00:00:00Z", "{now}\n",
])
def test_a_timestamp_that_names_no_moment_is_a_400_not_a_500(client, people, timestamp):
    """The shape of RFC 3339 is not enough: month 13 or hour 24 must not reach the clock comparison."""
    node, keys = admit_with_keys(people)
    timestamp = timestamp.format(now=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    response = open_session(client, keys.session_request(node.node_id, timestamp=timestamp))
    assert (*error_code(response), response.get_json()["error"]["field"]) == (400, "invalid_request", "timestamp")


def test_a_field_with_a_trailing_newline_is_malformed(client, people):
    node, keys = admit_with_keys(people)
    response = open_session(client, keys.session_request(node.node_id, nonce="abcdefgh12345678\n"))
    assert (*error_code(response), response.get_json()["error"]["field"]) == (400, "invalid_request", "nonce")


def test_sessions_die_with_suspension_and_expire(client, people):
    minister, _ = people
    node, keys = admit_with_keys(people)
    token = open_session(client, keys.session_request(node.node_id)).get_json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/routes", headers=headers).status_code == 200
    nodes.suspend(node, "drill", by=minister)
    db.session.commit()
    # On PostgreSQL each worker learns of the new version by NOTIFY (milliseconds): await it.
    assert await_refusal(client, headers) == (401, "session_revoked")
    nodes.resume(node, "back", by=minister)
    db.session.commit()
    token = open_session(client, keys.session_request(node.node_id)).get_json()["token"]
    session = db.session.scalars(db.select(NodeSession).where(NodeSession.revoked_at.is_(None))).one()
    session.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    response = client.get("/api/v1/routes", headers={"Authorization": f"Bearer {token}"})
    assert error_code(response) == (401, "session_expired")



def test_a_node_keeps_at_most_its_limit_of_live_sessions_the_oldest_ending_first(app, client, people):
    """One key opened 579 sessions in 5 s, each kept about 25 h: a node filled the table at will. Past
    MPIM_NODE_SESSIONS_MAX live sessions, opening one ends the oldest (as any 401, the node opens a new one), and
    of the sessions ended so only as many are kept, so that their holders still hear why they ended."""
    app.config["MPIM_NODE_SESSIONS_MAX"] = 3
    node, keys = admit_with_keys(people)
    tokens = [open_session(client, keys.session_request(node.node_id)).get_json()["token"] for _ in range(10)]
    rows = db.session.scalars(db.select(NodeSession).where(NodeSession.node_id == node.node_id)).all()
    live = [row for row in rows if row.revoked_at is None]
    assert len(live) == 3 and len(rows) <= 6
    for token in tokens[-3:]:
        assert client.get("/api/v1/routes", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert error_code(client.get("/api/v1/routes", headers={"Authorization": f"Bearer {tokens[-4]}"})) == (
        401, "session_revoked")
    # Another node's sessions are not this node's to end.
    other, other_keys = admit_with_keys(people)
    kept = open_session(client, other_keys.session_request(other.node_id)).get_json()["token"]
    open_session(client, keys.session_request(node.node_id))
    assert client.get("/api/v1/routes", headers={"Authorization": f"Bearer {kept}"}).status_code == 200


def test_a_session_opened_at_the_limit_is_never_the_one_it_ends(app, client, people, monkeypatch):
    """Its `created_at`, read before the node's lock, made it the oldest after a step back of the clock (or a
    wait behind another opening): it was ended at birth, a 201 whose token was a 401 at first use."""
    from app.sessions import service as sessions_service

    app.config["MPIM_NODE_SESSIONS_MAX"] = 3
    node, keys = admit_with_keys(people)
    for _ in range(3):
        assert open_session(client, keys.session_request(node.node_id)).status_code == 201
    stepped = utcnow() - timedelta(minutes=2)  # NTP steps the clock back 2 minutes
    monkeypatch.setattr(sessions_service, "utcnow", lambda: stepped)
    token = open_session(client, keys.session_request(node.node_id)).get_json()["token"]
    assert client.get("/api/v1/routes", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    live = db.session.scalars(db.select(NodeSession).where(NodeSession.revoked_at.is_(None))).all()
    assert len(live) == 3

def test_a_key_revoked_as_compromised_opens_no_session_through_another_certificate_of_it(client, people):
    """A renewal may keep the key, so two certificates can certify it. Once an admin revokes one as
    key_compromise the key is never good again (protocol.md): the other certificate of the same key must
    not let whoever stole it open a session, nor the routing table keep listing it."""
    from app.pki import revocation
    from app.pki import service as pki

    minister, _ = people
    node, keys = admit_with_keys(people)
    first = pki.current_certificate(node.node_id)
    renewed = pki.renew(node, keys.csr, by=minister)  # same key: allowed, a new key is only recommended
    db.session.commit()
    assert renewed.key_sha256 == first.key_sha256 and pki.current_certificate(node.node_id) == renewed
    revocation.revoke(renewed, "key_compromise", by=minister)
    db.session.commit()
    assert error_code(open_session(client, keys.session_request(node.node_id))) == (401, "certificate_revoked")
    assert pki.current_certificate(node.node_id) is None


def _decided_while_a_session_opens(app, people, decide):
    """A node opens a session (checked, signed, not yet committed) while an admin's `decide(node_id, minister_id)`
    runs in another thread; the session commits once the decision has committed or waits on it. Returns the node
    and the session's raw token."""
    import threading

    from app.sessions import service

    node, keys = admit_with_keys(people)
    node_id, minister_id = node.node_id, people[0].id
    db.session.remove()
    errors: list[BaseException] = []

    def admin():
        with app.app_context():
            try:
                decide(node_id, minister_id)
                db.session.commit()
            except BaseException as error:
                errors.append(error)
            finally:
                db.session.remove()

    with app.app_context():  # the node's request: its own session
        raw, _, _ = service.open_session(keys.session_request(node_id))
        thread = threading.Thread(target=admin)
        thread.start()
        wait_for_a_lock_wait(thread)  # until the admin has committed, or waits on the node's request
        db.session.commit()
    thread.join(60)
    assert not thread.is_alive() and not errors, errors
    return nodes.get(node_id), raw


def test_a_session_opened_while_the_node_is_suspended_dies_with_the_suspension(app, client, people):
    """The token dies with the suspension (SPEC §4): one whose request read the node active just before
    the suspension committed must not come back to life when the node is resumed."""
    from app.auth.models import User

    if db.engine.dialect.name != "postgresql":
        pytest.skip("a request and an admin at once: PostgreSQL (SQLite has one writer at a time)")
    node, raw = _decided_while_a_session_opens(app, people, lambda node_id, minister_id: nodes.suspend(
        nodes.get(node_id), "drill", by=db.session.get(User, minister_id)))
    assert node.status == "suspended"
    nodes.resume(node, "drill over", by=people[0])
    db.session.commit()
    assert error_code(client.get("/api/v1/routes", headers={"Authorization": f"Bearer {raw}"})) == \
        (401, "session_revoked")


def test_a_session_opened_while_its_certificate_is_revoked_dies_with_the_revocation(app, client, people):
    """A stolen key's session must not outlive the revocation, even one opened as the admin revoked."""
    from app.auth.models import User
    from app.pki import revocation
    from app.pki import service as pki

    if db.engine.dialect.name != "postgresql":
        pytest.skip("a request and an admin at once: PostgreSQL (SQLite has one writer at a time)")
    _, raw = _decided_while_a_session_opens(app, people, lambda node_id, minister_id: revocation.revoke(
        pki.current_certificate(node_id), "key_compromise", by=db.session.get(User, minister_id)))
    assert error_code(client.get("/api/v1/routes", headers={"Authorization": f"Bearer {raw}"})) == \
        (401, "session_revoked")


def test_a_renewal_queued_behind_its_certificates_revocation_issues_nothing_to_the_ended_session(app, client, people):
    """Whoever stole a node's key holds its session and asks for a renewal, for a key of their own, just as an
    admin revokes the certificate as key_compromise. The request read its session alive, then waited for the
    node the revocation holds; once in, it found the node active and no current certificate (so no renewal
    window to respect), and was issued a certificate the revocation had meant to leave nobody."""
    import threading

    from app.pki import revocation
    from app.pki import service as pki
    from tests.factories import make_csr

    if db.engine.dialect.name != "postgresql":
        pytest.skip("a request and an admin at once: PostgreSQL (SQLite has one writer at a time)")
    minister, _ = people
    node, keys = admit_with_keys(people)
    token = open_session(client, keys.session_request(node.node_id)).get_json()["token"]
    csr = make_csr()
    revocation.revoke(pki.current_certificate(node.node_id), "key_compromise", by=minister)  # not committed yet
    answers = []
    thread = threading.Thread(target=lambda: answers.append(client.post(
        "/api/v1/certificates/renew", json={"csr": csr}, headers={"Authorization": f"Bearer {token}"})))
    thread.start()
    wait_for_a_lock_wait(thread)  # until the renewal waits on the node the revocation holds
    db.session.commit()
    thread.join(60)
    assert not thread.is_alive()
    response = answers[0]
    assert response.status_code == 401, response.get_data(as_text=True)[:64]  # was 201 and a certificate
    assert error_code(response) == (401, "session_revoked")
    assert pki.current_certificate(node.node_id) is None


def _answer_while_the_node_is_held(app, client, node, body, hold):
    """`hold(node)` runs in the test's session and is not committed while a node's session request runs in another
    thread. Returns (whether that request waited on a lock, its answer), after the hold commits."""
    import threading


    hold(node)  # not committed yet
    answers = []
    thread = threading.Thread(target=lambda: answers.append(open_session(client, body)))
    thread.start()
    waited = wait_for_a_lock_wait(thread)  # until the request answers, or waits on what the test holds
    db.session.commit()
    thread.join(60)
    assert not thread.is_alive()
    return waited, answers[0]


def test_a_session_request_whose_signature_fails_does_not_queue_behind_a_decision_on_the_node(app, client, people):
    """Anyone can send a node id: a request that proves nothing is refused at once, and does not hold up (or wait
    for) an admin's decision on that node, which a stream of such requests would otherwise stall."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("a request and an admin at once: PostgreSQL (SQLite has one writer at a time)")
    node, _ = admit_with_keys(people)
    forged = NodeKeys("ec256").session_request(node.node_id)
    waited, response = _answer_while_the_node_is_held(app, client, node, forged, lambda held: nodes.lock(held))
    assert not waited  # it queued behind the admin before
    assert error_code(response) == (401, "bad_signature")


def test_a_signed_session_request_that_waited_for_a_revocation_of_its_certificate_is_refused(app, client, people):
    """The signature verified before the request queued; the revocation it waited for took that certificate,
    so what the wait changed is read again and no session opens for the stolen key."""
    from app.pki import revocation
    from app.pki import service as pki

    if db.engine.dialect.name != "postgresql":
        pytest.skip("a request and an admin at once: PostgreSQL (SQLite has one writer at a time)")
    minister, _ = people
    node, keys = admit_with_keys(people)
    waited, response = _answer_while_the_node_is_held(
        app, client, node, keys.session_request(node.node_id),
        lambda held: revocation.revoke(pki.current_certificate(held.node_id), "key_compromise", by=minister))
    assert waited
    assert error_code(response) == (401, "certificate_revoked")
    assert db.session.scalar(select(func.count()).select_from(NodeSession)) == 0


def test_a_change_of_host_ends_the_sessions_its_superseded_certificates_opened(client, people):
    """Approving a move to another host revokes the node's old certificates (superseded), but the sessions they
    had opened went on pulling routes and certificates for up to a session's lifetime: the old host may be
    exactly the one nobody trusts any more. They end now, as with any revocation of the node's certificates."""
    from app.pki import service as pki

    minister, jx_admin = people
    node, keys = admit_with_keys(people)
    old = {"Authorization": f"Bearer {open_session(client, keys.session_request(node.node_id)).get_json()['token']}"}
    assert client.get("/api/v1/routes", headers=old).status_code == 200
    moved_keys = NodeKeys()
    change = applications.submit_change(nodes.get(node.node_id), node_document(
        "360000", csr=moved_keys.csr, endpoint="https://moved.jx.example:8443"), by=jx_admin)
    db.session.commit()
    applications.approve(change, by=minister)
    db.session.commit()
    assert [row.revocation_reason for row in pki.node_certificates(node.node_id)].count("superseded") == 1
    assert await_refusal(client, old) == (401, "session_revoked")
    moved = open_session(client, moved_keys.session_request(node.node_id))
    assert moved.status_code == 201, moved.get_json()
    assert client.get("/api/v1/routes", headers={"Authorization": f"Bearer {moved.get_json()['token']}"}) \
        .status_code == 200


def test_a_session_ends_when_the_certificate_that_opened_it_expires(app, client, people):
    """A session lived its full lifetime past the expiry of the certificate that opened it, pulling routes and,
    with no current certificate to measure a window by, renewing at any time. It now ends with that
    certificate; and a node's own renewal without a valid certificate is refused (an admin re-issues)."""
    from app.pki import service as pki
    from app.pki.models import Certificate

    node, keys = admit_with_keys(people)
    certificate = db.session.scalars(db.select(Certificate).where(Certificate.node_id == node.node_id)).one()
    expires = pki.parsed_certificate(certificate.pem).not_valid_after_utc
    app.config["MPIM_NODE_SESSION_SECONDS"] = 200 * 24 * 3600  # longer than the certificate's 90 days
    opened = open_session(client, keys.session_request(node.node_id)).get_json()
    stored = db.session.scalars(db.select(NodeSession)).one()
    assert stored.expires_at == expires
    assert opened["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    headers = {"Authorization": f"Bearer {opened['token']}"}
    certificate.not_after = utcnow() - timedelta(seconds=1)  # as if it had expired during the session
    db.session.commit()
    renewal = client.post("/api/v1/certificates/renew", json={"csr": NodeKeys().csr}, headers=headers)
    assert error_code(renewal) == (409, "no_certificate")
    assert db.session.scalar(select(func.count()).select_from(Certificate)
                             .where(Certificate.node_id == node.node_id)) == 1


@pytest.mark.parametrize(("suffix", "status"), [("Z", 201), ("+00:00", 201), ("-00:00", 400), ("+08:00", 400)])
def test_a_timestamp_in_utc_is_taken_with_z_or_a_zero_offset(client, people, suffix, status):
    """SPEC §4 asks for RFC 3339 UTC, which `+00:00` is as much as `Z`: a node following SPEC alone was refused
    (400 invalid_request). RFC 3339's `-00:00` says the local offset is unknown, and another offset is not UTC."""
    node, keys = admit_with_keys(people)
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S") + suffix
    response = open_session(client, keys.session_request(node.node_id, timestamp=timestamp))
    assert response.status_code == status, response.get_json()
