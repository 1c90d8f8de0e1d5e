"""Requests that arrive together: approvals never share a node id, and every check-then-write rule
(one pending change, one key, one endpoint, one verdict, one user name) holds, on both databases."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from app.admission import applications
from app.admission.models import Node
from app.audit import service as audit
from app.auth.models import User
from app.extensions import db
from app.pki import csr_policy
from tests.factories import change_document, make_csr, node_document

APPROVALS = 24


def joined(threads: list[threading.Thread], timeout: float = 120) -> None:
    """Wait for every thread, for `timeout` in all: one stuck (on a lock held by a session nobody will end)
    fails the test, naming how many, instead of holding the run for good."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"{len(stuck)} of {len(threads)} threads still running after {timeout} s: {stuck}"


def test_parallel_approvals_get_distinct_consecutive_ids(app, make_user):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("concurrency is proven on PostgreSQL (CI's second run); SQLite serialises every writer")
    minister = make_user("minister")
    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    ids = []
    for _ in range(APPROVALS):
        document = node_document("360000")
        ids.append(applications.submit_by_user(document, by=jx_admin).id)
    db.session.commit()
    minister_id = minister.id  # read here: the main thread's objects must not be touched by the others

    barrier = threading.Barrier(APPROVALS)
    errors: list[BaseException] = []

    def approve(application_id: str) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=60)  # a thread that never gets here breaks it: no wait for good
                user = db.session.get(User, minister_id)
                applications.approve(applications.get(application_id), by=user)
                db.session.commit()
            except BaseException as error:  # reported below, with the thread's own traceback
                errors.append(error)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=approve, args=(application_id,)) for application_id in ids]
    for thread in threads:
        thread.start()
    joined(threads)
    assert not errors, errors
    node_ids = sorted(db.session.scalars(select(Node.node_id)))
    assert node_ids == [f"36000000002025{serial:06d}" for serial in range(1, APPROVALS + 1)]
    assert audit.verify().ok  # 24 transactions chained their entries at commit, none on the same predecessor


# --- check-then-write rules under concurrency (both databases) ------------------------------------------------
#
# Each rule below reads ("is a change already pending?", "does another node hold this key?") and then writes.
# Without serialisation, requests that arrive together all pass the read before any of them writes.

RACERS = 6


def _committed_alone(app, work, errors: list[BaseException]) -> None:
    """`work()` in its own app context and session, as a request has, committed; what it raises is rolled back
    and kept in `errors`."""
    with app.app_context():
        try:
            work()
            db.session.commit()
        except BaseException as error:
            db.session.rollback()
            errors.append(error)
        finally:
            db.session.remove()


def _race(app, work) -> tuple[list, list[BaseException]]:
    """Run `work(i)` in RACERS threads released together, each in its own app context and session
    (as concurrent requests are); commit what succeeds. Returns (results, errors), once the audit chain
    has verified."""
    barrier = threading.Barrier(RACERS)
    results, errors = [], []

    def run(i: int) -> None:
        def released() -> None:
            barrier.wait(timeout=60)  # a thread that never gets here breaks it: no wait for good
            results.append(work(i))

        _committed_alone(app, released, errors)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(RACERS)]
    for thread in threads:
        thread.start()
    joined(threads)
    assert audit.verify().ok  # what the racers committed is chained, and what they rolled back is not in it
    return results, errors


def _codes(errors: list[BaseException]) -> set[str]:
    return {getattr(error, "code", repr(error)) for error in errors}


def _admitted_node(make_user) -> tuple[str, int]:
    """One admitted node and the minister who approved it, committed and out of the session, as ids:
    the racing threads load their own copies."""
    minister = make_user("minister")
    document = node_document("360000")
    node_id = applications.approve(applications.submit_by_user(document, by=minister),
                                   by=minister).node_id
    minister_id = minister.id
    db.session.commit()
    db.session.remove()
    return node_id, minister_id


def test_parallel_change_requests_leave_one_pending(app, make_user):
    from app.admission import nodes
    from app.admission.models import Application

    node_id, minister_id = _admitted_node(make_user)

    def change(i: int) -> str:
        node = nodes.get(node_id)
        document = change_document("360000", endpoint=node.endpoint,
                                   contact={"name": f"值班员{i}", "phone": "0791-12345678", "email": "ops@jx.example"})
        return applications.submit_change(node, document, by=db.session.get(User, minister_id)).id

    results, errors = _race(app, change)
    assert len(results) == 1 and len(errors) == RACERS - 1, (results, errors)
    assert _codes(errors) == {"change_pending"}
    pending = db.session.scalars(select(Application.id).where(Application.kind == "change",
                                                              Application.status == "pending")).all()
    assert pending == results


def test_parallel_submissions_with_one_key_leave_one_pending(app, make_user):
    from app.admission.models import Application

    minister_id = make_user("minister").id
    csr = make_csr()

    def submit(i: int) -> str:
        document = node_document("360000", csr=csr)
        return applications.submit_by_user(document, by=db.session.get(User, minister_id)).id

    results, errors = _race(app, submit)
    assert len(results) == 1 and _codes(errors) == {"key_pending"}, (results, errors)
    assert db.session.scalars(select(Application.id).where(Application.status == "pending")).all() == results


def test_parallel_submissions_for_one_endpoint_leave_one_pending(app, make_user):
    from app.admission.models import Application

    minister_id = make_user("minister").id

    def submit(i: int) -> str:
        document = node_document("360000", endpoint="https://im.jx.example:8443")
        return applications.submit_by_user(document, by=db.session.get(User, minister_id)).id

    results, errors = _race(app, submit)
    assert len(results) == 1 and _codes(errors) == {"endpoint_pending"}, (results, errors)
    assert db.session.scalars(select(Application.id).where(Application.status == "pending")).all() == results


def test_one_key_is_certified_for_one_node_when_issuances_race(app, make_user):
    """Several nodes' certificates issued at once for one key (an approval racing a renewal, say):
    exactly one node gets it."""
    from app.pki import service as pki
    from app.pki.models import Certificate

    minister = make_user("minister")
    node_ids = []
    for _ in range(RACERS):
        document = node_document("360000")
        application = applications.submit_by_user(document, by=minister)
        node_ids.append(applications.approve(application, by=minister).node_id)
    db.session.commit()
    db.session.remove()
    csr = make_csr()

    def issue(i: int) -> str:
        from app.admission import nodes

        return pki.issue_for_node(nodes.get(node_ids[i]), csr, actor="tests").node_id

    results, errors = _race(app, issue)
    assert len(results) == 1 and _codes(errors) == {"key_in_use"}, (results, errors)
    key_sha256 = pki.key_fingerprint(csr_policy.load_csr(csr).public_key())
    holders = db.session.scalars(select(Certificate.node_id).where(Certificate.key_sha256 == key_sha256)).all()
    assert holders == results


def test_one_key_goes_to_one_node_when_applications_and_renewals_race(app, make_user):
    """Applications and other nodes' renewals with one key, all at once: one of them gets the key, and the rest
    are told who holds it (key_pending, key_in_use). A renewal queues on the key's name as an application does."""
    from app.admission import nodes
    from app.pki import service as pki

    minister = make_user("minister")
    node_ids = []
    for _ in range(RACERS // 2):
        document = node_document("360000")
        application = applications.submit_by_user(document, by=minister)
        node_ids.append(applications.approve(application, by=minister).node_id)
    minister_id = minister.id
    db.session.commit()
    db.session.remove()
    csr = make_csr()

    def apply_or_renew(i: int) -> str:
        user = db.session.get(User, minister_id)
        if i % 2:
            return applications.submit_by_user(node_document("360000", csr=csr), by=user).id
        return pki.renew(nodes.get(node_ids[i // 2]), csr, by=user).node_id

    results, errors = _race(app, apply_or_renew)
    assert len(results) == 1 and _codes(errors) <= {"key_pending", "key_in_use"}, (results, errors)


def test_one_application_approved_twice_at_once_admits_one_node(app, make_user):
    """Two admins pressing approve (or one approving while another rejects) on the same application."""
    from app.admission.models import Application

    minister_id = make_user("minister").id
    document = node_document("360000")
    application_id = applications.submit_by_user(document,
                                                 by=db.session.get(User, minister_id)).id
    db.session.commit()
    db.session.remove()

    def review(i: int) -> str:
        minister = db.session.get(User, minister_id)
        application = applications.get(application_id)
        if i % 2:
            return applications.reject(application, "重复申请", by=minister).status
        return applications.approve(application, by=minister).node_id

    results, errors = _race(app, review)
    assert len(results) == 1 and _codes(errors) == {"application_not_pending"}, (results, errors)
    status = db.session.get(Application, application_id).status
    admitted = db.session.scalars(select(Node.node_id).where(Node.application_id == application_id)).all()
    assert (status, admitted) in [("approved", results), ("rejected", [])], (status, admitted, results)


def test_a_suspension_racing_a_revocation_never_undoes_it(app, make_user):
    """Revocation is final: a suspension (or a change request) decided at the same moment must not
    leave the node suspended, and so resumable, with its certificates revoked."""
    from app.admission import nodes

    node_id, minister_id = _admitted_node(make_user)

    def decide(i: int) -> str:
        by, node = db.session.get(User, minister_id), nodes.get(node_id)
        if i == 0:
            return nodes.revoke(node, "密钥泄露", by=by).status
        return nodes.suspend(node, "维护", by=by).status

    results, errors = _race(app, decide)
    assert "revoked" in results and _codes(errors) <= {"invalid_transition"}, (results, errors)
    assert nodes.get(node_id).status == "revoked"


def test_one_page_suspending_a_node_several_times_at_once_suspends_it_once(app, make_user):
    """A form sent again before its first answer came (a double click, a resend), every copy from the same page:
    one suspension, one audit record; the rest are told it is already suspended, not that it changed meanwhile."""
    from app.admission import node_changes, nodes
    from app.audit.models import AuditRecord

    node_id, minister_id = _admitted_node(make_user)
    seen = node_changes.mark(node_changes.latest(node_id))
    db.session.remove()

    def suspend(i: int) -> str:
        return nodes.suspend(nodes.get(node_id), "维护", by=db.session.get(User, minister_id), seen_change=seen).status

    results, errors = _race(app, suspend)
    assert results == ["suspended"] and len(errors) == RACERS - 1, (results, errors)
    assert _codes(errors) == {"invalid_transition"}, errors
    assert {str(error.message) for error in errors} == {"The node is already suspended."}, errors
    assert db.session.scalar(select(func.count()).where(AuditRecord.action == "node.suspend",
                                                        AuditRecord.target == node_id)) == 1


def test_a_certificate_revoked_twice_at_once_is_revoked_once(app, make_user):
    """Two admins revoking the route signer together: one revocation, one new signer."""
    from app.audit.models import AuditRecord
    from app.pki import revocation
    from app.pki import service as pki
    from app.pki.models import Certificate

    minister_id = make_user("minister").id
    signer = pki.service_certificates("route_signer")[0]
    serial = signer.serial
    db.session.commit()
    db.session.remove()

    def revoke(i: int) -> str:
        certificate = db.session.scalar(select(Certificate).where(Certificate.serial == serial))
        return revocation.revoke(certificate, "key_compromise", by=db.session.get(User, minister_id)).certificate.serial

    results, errors = _race(app, revoke)
    assert results == [serial] and _codes(errors) == {"already_revoked"}, (results, errors)
    assert len(pki.service_certificates("route_signer")) == 2  # the revoked one and one replacement
    assert db.session.scalar(select(func.count()).where(AuditRecord.action == "certificate.revoke",
                                                        AuditRecord.target == serial)) == 1


def test_a_renewal_racing_a_revocation_leaves_no_valid_certificate(app, make_user):
    """A node revoked while its renewal is being issued: the new certificate must not outlive the
    revocation (the renewal is refused, or its certificate is revoked with the rest)."""
    from app.admission import nodes
    from app.pki import service as pki
    from app.pki.models import Certificate

    node_id, minister_id = _admitted_node(make_user)
    csrs = [make_csr() for _ in range(RACERS)]

    def decide(i: int) -> str:
        by, node = db.session.get(User, minister_id), nodes.get(node_id)
        if i == 0:
            return nodes.revoke(node, "密钥泄露", by=by).status
        return pki.renew(node, csrs[i], by=by).serial

    results, errors = _race(app, decide)
    assert "revoked" in results and _codes(errors) <= {"node_revoked"}, (results, errors)
    valid = db.session.scalars(select(Certificate.serial).where(Certificate.node_id == node_id,
                                                                Certificate.revoked_at.is_(None))).all()
    assert valid == []


def test_a_renewal_keeping_a_key_revoked_as_compromised_at_that_moment_leaves_it_certified_nowhere(app, make_user):
    """An admin revokes a node's certificate as key_compromise while renewals keeping that key are being issued:
    afterwards no certificate of the key is valid (each renewal is refused, or revoked with the rest)."""
    from app.admission import nodes
    from app.pki import revocation
    from app.pki import service as pki
    from app.pki.models import Certificate
    from tests.factories import make_key

    key = make_key()
    minister = make_user("minister")
    document = node_document("360000", csr=make_csr(key))
    node_id = applications.approve(applications.submit_by_user(document, by=minister),
                                   by=minister).node_id
    minister_id, serial = minister.id, pki.current_certificate(node_id).serial
    key_sha256 = pki.current_certificate(node_id).key_sha256
    db.session.commit()
    db.session.remove()
    csrs = [make_csr(key) for _ in range(RACERS)]

    def decide(i: int) -> str:
        by = db.session.get(User, minister_id)
        if i == 0:
            return revocation.revoke(pki.get(serial), "key_compromise", by=by).certificate.serial
        return pki.renew(nodes.get(node_id), csrs[i], by=by).serial

    results, errors = _race(app, decide)
    assert serial in results and _codes(errors) <= {"key_compromised"}, (results, errors)
    valid = db.session.scalars(select(Certificate.serial).where(Certificate.key_sha256 == key_sha256,
                                                                Certificate.revoked_at.is_(None))).all()
    assert valid == []


def _committed_token(make_user) -> tuple[int, str, int]:
    """A Jiangxi admin's enrollment token, committed, the session left empty for the racing threads:
    (token id, raw token, admin id)."""
    from app.admission import tokens

    admin = make_user("jx-admin", "provincial_admin", ("360000",))
    token, raw = tokens.create_token("360000", by=admin)
    token_id, admin_id = token.id, admin.id
    db.session.commit()
    db.session.remove()
    return token_id, raw, admin_id


def test_a_token_revoked_while_an_application_uses_it_stays_used(app, make_user):
    """An admin revokes an enrollment token while a node's application with it is being stored: the application
    took the token first, so the revocation must be refused. Its blind UPDATE waited for the application's commit
    and then wrote over it: a token shown revoked, with its application waiting for approval."""
    from sqlalchemy import text

    from app.admission import tokens
    from app.admission.models import EnrollmentToken

    if db.engine.dialect.name != "postgresql":
        pytest.skip("an admin and a node at once: PostgreSQL (SQLite has one writer at a time)")
    token_id, raw, admin_id = _committed_token(make_user)
    errors: list[BaseException] = []

    def revoke() -> None:
        with app.app_context():
            try:
                tokens.revoke_token(token_id, by=db.session.get(User, admin_id))
                db.session.commit()
            except BaseException as error:
                errors.append(error)
            finally:
                db.session.remove()

    with app.app_context():  # the node's request, in its own session
        application = applications.submit_with_token(raw, node_document("360000"))
        thread = threading.Thread(target=revoke)
        thread.start()
        deadline = time.monotonic() + 30
        # Until the admin has committed, or waits on the application; each look in a transaction of its own
        # (inside one, pg_stat_activity answers from its first look's snapshot).
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
            while thread.is_alive() and time.monotonic() < deadline and not watcher.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")):
                time.sleep(0.02)
        application_id = application.id
        db.session.commit()
    joined([thread])
    assert _codes(errors) == {"token_not_active"}, errors
    assert db.session.get(EnrollmentToken, token_id).state() == "used"
    assert applications.get(application_id).token_id == token_id


@pytest.mark.parametrize("change", ["revoked", "expired"])
def test_a_token_that_changed_after_the_application_checked_it_is_refused_for_what_happened(app, make_user, change):
    """Between an application's check of its token (`require_usable`) and its use (`consume`) an admin revokes it,
    or it expires: the conditional UPDATE matches nothing, and the refusal said token_used, sending the node's
    operator after an application that never was. It says token_revoked (token_expired)."""
    from datetime import timedelta

    from app.admission import tokens
    from app.admission.models import EnrollmentToken
    from app.database import utcnow

    token_id, raw, admin_id = _committed_token(make_user)
    with app.app_context():  # the node's request, in its own session
        token = tokens.find_by_raw(raw)
        tokens.require_usable(token)
        with app.app_context():  # meanwhile, another session commits
            if change == "revoked":
                tokens.revoke_token(token_id, by=db.session.get(User, admin_id))
            else:
                db.session.get(EnrollmentToken, token_id).expires_at = utcnow() - timedelta(seconds=1)
            db.session.commit()
        with pytest.raises(tokens.StaleToken) as caught:
            tokens.consume(token)
        assert caught.value.code == f"token_{change}"
        db.session.rollback()
    assert db.session.get(EnrollmentToken, token_id).used_at is None


def test_a_token_revoked_while_an_application_waits_to_use_it_is_refused_as_revoked(app, make_user):
    """The race itself: the admin's revocation holds the token's row when the application, which found the token
    usable, comes to use it; the application waits, the revocation commits, the application is refused as revoked
    (it said token_used), and nothing of it is stored."""
    from sqlalchemy import text

    from app.admission import tokens
    from app.admission.models import Application, EnrollmentToken

    if db.engine.dialect.name != "postgresql":
        pytest.skip("an admin and a node at once: PostgreSQL (SQLite has one writer at a time)")
    token_id, raw, admin_id = _committed_token(make_user)
    errors: list[BaseException] = []

    def apply() -> None:
        with app.app_context():
            try:
                applications.submit_with_token(raw, node_document("360000"))
                db.session.commit()
            except BaseException as error:
                errors.append(error)
            finally:
                db.session.remove()

    with app.app_context():  # the admin's request, in its own session
        tokens.revoke_token(token_id, by=db.session.get(User, admin_id))
        thread = threading.Thread(target=apply)
        thread.start()
        deadline = time.monotonic() + 30
        # Until the application waits on the revocation, or has finished; each look in a transaction of its own.
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
            while thread.is_alive() and time.monotonic() < deadline and not watcher.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")):
                time.sleep(0.02)
        db.session.commit()
    joined([thread])
    assert _codes(errors) == {"token_revoked"}, errors
    assert db.session.get(EnrollmentToken, token_id).state() == "revoked"
    assert db.session.scalar(select(func.count()).select_from(Application)) == 0


def _sent_while_the_first_is_in_flight(app, monkeypatch, raw: str, first: dict, retry: dict) -> dict:
    """POST `first`, then `retry`, with the enrollment token `raw`, each in a thread of its own: the first holds
    the key and endpoint (`uniqueness.hold`) until the retry, which has read the token unused by then, queues
    behind it. Returns the answers by name ("first", "retry")."""
    from app.admission import uniqueness

    first_holds, retry_queues = threading.Event(), threading.Event()
    hold = uniqueness.hold

    def held(**names) -> None:
        name = threading.current_thread().name
        if name == "retry":
            retry_queues.set()
        hold(**names)
        if name == "first":
            first_holds.set()
            retry_queues.wait(30)

    answers = {}

    def send(body: dict) -> None:
        answers[threading.current_thread().name] = app.test_client().post(
            "/api/v1/applications", json=body, headers={"Authorization": f"Bearer {raw}"})

    monkeypatch.setattr(uniqueness, "hold", held)
    threads = [threading.Thread(target=send, args=(first,), name="first")]
    threads[0].start()
    assert first_holds.wait(30)
    threads.append(threading.Thread(target=send, args=(retry,), name="retry"))
    threads[1].start()
    joined(threads)
    assert answers["first"].status_code == 201, answers["first"].get_json()
    return answers


def test_a_retry_sent_while_the_request_it_repeats_is_in_flight_gets_its_application(app, make_user, monkeypatch):
    """A node gives up waiting for its 201 and sends the same request again while the first is still being stored:
    the retry found the token unused, queued on the key's lock behind the first and, once that committed, was
    refused as key_pending ("generate a new key"), advice that strands a node whose token is used. It gets the
    application the first stored, and nothing more is stored or recorded."""
    from app.admission.models import Application
    from app.audit.models import AuditRecord

    _, raw, _ = _committed_token(make_user)
    document = node_document("360000", csr=make_csr())
    answers = _sent_while_the_first_is_in_flight(app, monkeypatch, raw, document, document)
    assert answers["retry"].status_code == 201, answers["retry"].get_json()
    application_id = answers["first"].get_json()["application_id"]
    assert answers["retry"].get_json() == {"application_id": application_id, "status": "pending"}
    assert db.session.scalars(select(Application.id)).all() == [application_id]
    assert db.session.scalars(select(AuditRecord.action).where(AuditRecord.action.startswith("application."))
                              ).all() == ["application.submit"]
    assert audit.verify().ok


def test_a_retry_over_another_key_sent_while_the_first_is_in_flight_is_token_used(app, make_user, monkeypatch):
    """The same request with another key is no retry of the first: sent while the first is being stored, to the
    same endpoint, it is refused as it is once the first has committed (token_used), not as endpoint_pending."""
    from app.admission.models import Application

    _, raw, _ = _committed_token(make_user)
    document = node_document("360000", csr=make_csr())
    answers = _sent_while_the_first_is_in_flight(app, monkeypatch, raw, document, {**document, "csr": make_csr()})
    assert answers["retry"].status_code == 401, answers["retry"].get_json()
    assert answers["retry"].get_json()["error"]["code"] == "token_used"
    assert db.session.scalars(select(Application.id)).all() == [answers["first"].get_json()["application_id"]]


def test_one_user_name_created_twice_at_once_is_one_user(app):
    from app.auth import service as users

    results, errors = _race(app, lambda i: users.create_user(
        users.UserDraft("zhang.san", f"Strong-Password-{i}", "provincial_admin", ("360000",))).id)
    assert len(results) == 1 and _codes(errors) == {"username_taken"}, (results, errors)
    assert db.session.scalars(select(User.id).where(User.username == "zhang.san")).all() == results


def test_a_certificate_revoked_by_an_admin_and_by_its_nodes_revocation_at_once_is_revoked_once(app, make_user):
    from app.admission import nodes
    from app.audit.models import AuditRecord
    from app.pki import revocation
    from app.pki import service as pki

    node_id, minister_id = _admitted_node(make_user)
    serial = pki.current_certificate(node_id).serial

    def revoke(i: int) -> str:
        by = db.session.get(User, minister_id)
        if i % 2:
            return revocation.revoke(pki.get(serial), "key_compromise", by=by).certificate.serial
        return nodes.revoke(nodes.get(node_id), "撤销", by=by).status if i == 0 else "skipped"

    results, errors = _race(app, revoke)
    assert _codes(errors) <= {"already_revoked", "invalid_transition"}, errors
    assert "revoked" in results
    assert db.session.scalar(select(func.count()).where(AuditRecord.action == "certificate.revoke",
                                                        AuditRecord.target == serial)) == 1


def _crl_serials() -> set[str]:
    from cryptography import x509

    from app.pki.models import INTERMEDIATE_CRL, CRLState

    state = db.session.get(CRLState, INTERMEDIATE_CRL, populate_existing=True)
    return {format(entry.serial_number, "x") for entry in x509.load_der_x509_crl(state.der)}


def test_certificates_of_different_nodes_revoked_at_once_are_all_on_the_crl(app, make_user):
    """Each revocation signs a new CRL from the revocations it can see: two reading before either commits would
    each leave out the other's, and the one committed last is the one served."""
    from app.pki import revocation
    from app.pki import service as pki

    minister = make_user("minister")
    serials = []
    for index in range(RACERS):
        document = node_document("360000", endpoint=f"https://revoked-{index}.example")
        node = applications.approve(applications.submit_by_user(document, by=minister),
                                    by=minister)
        serials.append(pki.current_certificate(node.node_id).serial)
    minister_id = minister.id
    db.session.commit()
    db.session.remove()

    def revoke(i: int) -> str:
        return revocation.revoke(pki.get(serials[i]), "key_compromise",
                                 by=db.session.get(User, minister_id)).certificate.serial

    results, errors = _race(app, revoke)
    assert sorted(results) == sorted(serials) and not errors, errors
    assert _crl_serials() == {serial.lower() for serial in serials}


def test_a_crl_refresh_racing_a_revocation_keeps_the_revocation_on_the_crl(app, make_user):
    """The scheduler's refresh reads the revocations, signs, then stores: a revocation committed while it signs
    must not be overwritten by the CRL it signed without it, under the same CRL number."""
    from cryptography import x509

    from app.database import utcnow
    from app.pki import authority, revocation
    from app.pki import service as pki
    from app.pki.models import INTERMEDIATE_CRL, CRLState

    node_id, minister_id = _admitted_node(make_user)
    serial = pki.current_certificate(node_id).serial
    state = db.session.get(CRLState, INTERMEDIATE_CRL)
    state.next_update, number_before = utcnow(), state.crl_number  # due for its refresh
    db.session.commit()
    db.session.remove()
    signing, revoked = threading.Event(), threading.Event()
    build_crl = authority.Authority.build_crl

    def slow_build(self, entries, **kwargs):
        """The refresh signs slowly: a revocation that can commit meanwhile (nothing orders the two) does."""
        if threading.current_thread().name == "refresh":
            signing.set()
            revoked.wait(3)
        return build_crl(self, entries, **kwargs)

    def refresh():
        with app.app_context():
            try:
                revocation.crl_refresh_job()
            finally:
                db.session.remove()

    def revoke():
        with app.app_context():
            try:
                signing.wait(30)
                revocation.revoke(pki.get(serial), "key_compromise", by=db.session.get(User, minister_id))
                db.session.commit()
            finally:
                revoked.set()
                db.session.remove()

    authority.Authority.build_crl = slow_build
    try:
        threads = [threading.Thread(target=refresh, name="refresh"), threading.Thread(target=revoke)]
        for thread in threads:
            thread.start()
        joined(threads)
    finally:
        authority.Authority.build_crl = build_crl
    assert pki.get(serial).revoked_at is not None
    assert serial.lower() in _crl_serials()
    served = x509.load_der_x509_crl(db.session.get(CRLState, INTERMEDIATE_CRL).der)
    # Two CRLs were signed, one after the other: never two different CRLs under one number (RFC 5280 §5.2.3).
    assert served.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number_before + 2


def test_revoking_the_route_signer_and_a_node_certificate_at_once_both_succeed(app, make_user):
    """Revoking the route signer re-signs the routing table (its lock) and then the CRL (its lock); revoking a
    node's certificate signs the CRL, then publishes the table. Taken in those orders, each waited for the other
    and PostgreSQL ended one revocation as a deadlock."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: the second revocation waits for the first to commit")
    from app.pki import revocation
    from app.pki import service as pki
    from app.pki.models import Certificate
    from app.routing import service as routing

    node_id, minister_id = _admitted_node(make_user)
    node_serial = pki.current_certificate(node_id).serial
    signer_serial = db.session.scalars(select(Certificate.serial).where(
        Certificate.kind == "route_signer", Certificate.revoked_at.is_(None))).first()
    db.session.remove()
    published, signing = threading.Event(), threading.Event()
    publish, next_crl = routing.publish, revocation._next_crl

    def held_publish(*args, **kwargs):
        """The signer's revocation, holding the routing lock, waits a moment for the other to sign its CRL."""
        result = publish(*args, **kwargs)
        if threading.current_thread().name == "signer" and not published.is_set():
            published.set()
            signing.wait(5)
        return result

    def held_next_crl(*args, **kwargs):
        """The node's, holding the CRL lock, waits a moment for the other to publish."""
        if threading.current_thread().name == "node" and not signing.is_set():
            signing.set()
            published.wait(5)
        return next_crl(*args, **kwargs)

    errors: list[BaseException] = []

    def revoke(serial: str) -> None:
        _committed_alone(app, lambda: revocation.revoke(pki.get(serial), "superseded",
                                                        by=db.session.get(User, minister_id)), errors)

    routing.publish, revocation._next_crl = held_publish, held_next_crl
    try:
        threads = [threading.Thread(target=revoke, args=(signer_serial,), name="signer"),
                   threading.Thread(target=revoke, args=(node_serial,), name="node")]
        for thread in threads:
            thread.start()
        joined(threads)
    finally:
        routing.publish, revocation._next_crl = publish, next_crl
    assert not errors, [repr(error)[:300] for error in errors]
    assert {format(serial, "x") for serial in (int(signer_serial, 16), int(node_serial, 16))} <= _crl_serials()
