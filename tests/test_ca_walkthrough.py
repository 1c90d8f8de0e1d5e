"""What an exploratory walk through the CA found: each case a test.

Revoking the management node's own certificates while in use, CSR files in the CLI and the console,
the root key's export to a path that cannot be written, and what the detail page offers."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.pki import csr_policy, inventory, own_keys, revocation
from app.pki import service as pki
from app.pki.authority import Authority
from app.pki.csr_policy import InvalidCSR
from app.pki.models import Certificate
from app.routing import service as routing
from tests.conftest import Console
from tests.factories import NodeKeys
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def refusal(action) -> str:
    try:
        action()
    except InvalidCSR as error:
        return str(error.message)
    raise AssertionError("not refused")


def test_revoking_the_route_signer_in_use_replaces_it(app, client, people):  # noqa: F811
    minister, _ = people
    admit_with_keys(people)
    old = db.session.scalars(db.select(Certificate).where(Certificate.kind == "route_signer")).one()
    version = routing.head_version()
    result = revocation.revoke(old, "key_compromise", by=minister)
    db.session.commit()
    served = x509.load_pem_x509_certificate(client.get("/ca/route-signer.pem").data)
    assert pki.fingerprint(served) != old.sha256
    new = db.session.scalars(db.select(Certificate).where(Certificate.kind == "route_signer",
                                                          Certificate.revoked_at.is_(None))).one()
    assert new.sha256 == pki.fingerprint(served) and result.replacement.serial == new.serial
    assert routing.head_version() == version + 1  # re-signed by the new signer as a new version
    crl = x509.load_pem_x509_crl(client.get("/ca/crl.pem").data)
    assert crl.get_revoked_certificate_by_serial_number(int(old.serial, 16)) is not None
    assert revocation.in_service_role(old) is None and revocation.in_service_role(new) == "route_signer"


def test_revoking_the_management_certificate_in_use_replaces_it(app, client, runner, people):  # noqa: F811
    old = db.session.scalars(db.select(Certificate).where(Certificate.kind == "management")).one()
    result = runner.invoke(args=["ca", "revoke", old.serial, "--reason", "key_compromise", "--user", "minister",
                                 "--json"])
    assert result.exit_code == 0, result.output
    db.session.expire_all()
    current = pki.authority().management_certificate
    assert json.loads(result.output)["replaced_by"] == format(current.serial_number, "x")
    assert pki.fingerprint(current) != old.sha256
    directory = pki.ca_directory()
    on_disk = x509.load_pem_x509_certificate((directory / "management.pem").read_bytes())
    assert on_disk == current
    own_keys.management_client_ssl_context()  # loads the pair on disk; a key beside another certificate would raise
    key = serialization.load_pem_private_key((directory / "management.key").read_bytes(),
                                             pki.passphrase() or None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == current.public_key().public_bytes(*spki)
    kinds = [row.kind for row in db.session.scalars(db.select(Certificate).where(Certificate.revoked_at.is_(None)))]
    assert kinds.count("management") == 1


def test_a_route_signer_rotation_whose_commit_fails_leaves_the_signer_in_use(app, client, people):  # noqa: F811
    """A rotation's new pair replaces the one in use only once its certificate, and the table it re-signed, are
    committed. A commit that fails (here a real constraint violation) leaves the signer in use on disk, in this
    process and for a process started now, the CA directory as it was, and no key the database does not know."""
    _, jx_admin = people
    admit_with_keys(people)
    directory = pki.ca_directory()

    def files() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in directory.iterdir() if path.name != ".rotation.lock"}

    def signer_of_head() -> str | None:
        head = routing.head()
        return routing.signer_of(head.body, base64.b64decode(head.signature)).signer

    before, signer, version = files(), pki.service_certificates("route_signer")[0], routing.head_version()
    own_keys.rotate_route_signer(actor="test")  # re-signs the table with the new key, in this transaction
    staged = files()
    assert staged.keys() - before.keys() and {name: staged[name] for name in before} == before  # beside, not over
    jx_admin.role = "emperor"  # refused by the role_known check constraint when the commit flushes it
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()
    assert files() == before  # the staged pair is gone; the pair in use untouched
    assert pki.fingerprint(pki.authority().route_signer_certificate) == signer.sha256
    assert pki.fingerprint(Authority.load(directory, pki.passphrase(), pki.ca_config()).route_signer_certificate) \
        == signer.sha256
    assert pki.fingerprint(x509.load_pem_x509_certificate(client.get("/ca/route-signer.pem").data)) == signer.sha256
    assert [row.serial for row in pki.service_certificates("route_signer")] == [signer.serial]
    assert routing.head_version() == version
    routing.publish("after a failed rotation", force=True)
    db.session.commit()
    assert signer_of_head() == signer.sha256  # the old key still signs, and its certificate verifies it

    new = own_keys.rotate_route_signer(actor="test")
    with db.session.begin_nested():  # a savepoint released is no commit: the pair in use stays until the real one
        pass
    assert files()["route-signer.pem"] == before["route-signer.pem"]
    db.session.commit()
    assert signer_of_head() == new.sha256 == pki.fingerprint(pki.authority().route_signer_certificate)
    assert pki.fingerprint(x509.load_pem_x509_certificate(client.get("/ca/route-signer.pem").data)) == new.sha256
    assert set(files()) - set(before) == {f"route-signer.{signer.serial}.pem", f"route-signer.{signer.serial}.key"}


def test_revoking_a_retired_service_certificate_rotates_nothing(app, people):  # noqa: F811
    minister, _ = people
    first = db.session.scalars(db.select(Certificate).where(Certificate.kind == "route_signer")).one()
    own_keys.rotate_route_signer(actor="test")
    db.session.commit()
    serving = pki.fingerprint(pki.authority().route_signer_certificate)
    revocation.revoke(first, "superseded", by=minister)
    db.session.commit()
    assert pki.fingerprint(pki.authority().route_signer_certificate) == serving


def test_certificate_hold_is_not_offered(app, people):  # noqa: F811
    minister, _ = people
    node, _ = admit_with_keys(people)
    row = pki.current_certificate(node.node_id)
    assert "certificate_hold" not in revocation.REASONS
    try:
        revocation.revoke(row, "certificate_hold", by=minister)
    except Exception as error:  # noqa: BLE001 (the domain error is what we look at)
        assert getattr(error, "code", "") == "invalid_reason"
    else:
        raise AssertionError("a hold was accepted")
    assert row.revoked_at is None


def test_csr_files_pem_der_and_what_is_neither(app):
    keys = NodeKeys()
    pem = keys.csr
    der = x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)
    assert csr_policy.pem_from_file(pem.encode()) == pem
    assert csr_policy.pem_from_file(der).strip() == pem.strip()
    assert csr_policy.pem_from_file(b"  \n") == ""
    assert "neither a PEM nor a DER" in refusal(lambda: csr_policy.pem_from_file(bytes(range(256)) * 4))
    certificate_der = pki.authority().intermediate_certificate.public_bytes(serialization.Encoding.DER)
    assert "a certificate, not a certificate signing request" in refusal(
        lambda: csr_policy.pem_from_file(certificate_der))
    assert "No CSR was given" in refusal(lambda: csr_policy.load_csr(""))


def test_cli_renewal_from_a_der_file_and_a_clean_refusal_of_junk(app, runner, people, tmp_path):  # noqa: F811
    node, _ = admit_with_keys(people)
    before = pki.current_certificate(node.node_id).serial
    der = x509.load_pem_x509_csr(NodeKeys().csr.encode()).public_bytes(serialization.Encoding.DER)
    (tmp_path / "new.der").write_bytes(der)
    result = runner.invoke(args=["ca", "renew", node.node_id, "--csr", str(tmp_path / "new.der"), "--user",
                                 "minister", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["serial"] != before
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)))
    result = runner.invoke(args=["ca", "renew", node.node_id, "--csr", str(tmp_path / "junk.bin"), "--user",
                                 "minister"])
    assert result.exit_code == 1
    assert "neither a PEM nor a DER" in result.output and "Traceback" not in result.output


def test_root_offline_to_a_path_that_cannot_be_written_keeps_the_key(app, runner, tmp_path):
    result = runner.invoke(args=["ca", "root-offline", str(tmp_path / "no" / "such" / "root.key")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Cannot write" in result.output and "stays on this server" in result.output
    assert (pki.ca_directory() / "root.key").exists()


def test_root_offline_before_ca_init_says_the_ca_is_not_initialised(app, runner, tmp_path):
    """It said "The root key is not on this server any more", as if someone had taken it offline."""
    from sqlalchemy import delete

    from app.pki.models import CRLState

    db.session.execute(delete(CRLState))
    db.session.commit()
    app.config["MPIM_CA_DIR"] = str(tmp_path / "fresh")
    app.extensions.pop("mpim_authority", None)
    result = runner.invoke(args=["ca", "root-offline", str(tmp_path / "root.key")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output == "error: The CA is not initialised: run `flask ca init`.\n"
    assert not (tmp_path / "root.key").exists()


def test_ca_show_speaks_to_people_and_to_scripts(app, runner, people):  # noqa: F811
    node, _ = admit_with_keys(people)
    row = pki.current_certificate(node.node_id)
    human = runner.invoke(args=["ca", "show", row.serial])
    assert human.exit_code == 0 and f"sha256:            {row.sha256}" in human.output
    assert "BEGIN CERTIFICATE" in human.output and not human.output.lstrip().startswith("{")
    shown = json.loads(runner.invoke(args=["ca", "show", row.serial, "--json"]).output)
    assert shown["sha256"] == row.sha256 and shown["pem"] == row.pem


def test_renewal_is_offered_on_the_newest_certificate_only(app, people):  # noqa: F811
    minister, _ = people
    node, _ = admit_with_keys(people)
    first = pki.current_certificate(node.node_id)
    console = Console(app.test_client())
    console.login("minister")
    assert 'id="renew"' in console.client.get(f"/certificates/{first.serial}").get_data(as_text=True)
    revocation.revoke(first, "key_compromise", by=minister)
    db.session.commit()
    page = console.client.get(f"/certificates/{first.serial}").get_data(as_text=True)
    assert 'id="renew"' in page  # the replacement is issued from the revoked one's page
    second = pki.renew(node, NodeKeys().csr, by=minister)
    db.session.commit()
    page = console.client.get(f"/certificates/{first.serial}").get_data(as_text=True)
    assert 'id="renew"' not in page and 'id="newer-certificate"' in page and second.serial[:16] in page
    assert 'id="renew"' in console.client.get(f"/certificates/{second.serial}").get_data(as_text=True)


def test_console_renewal_with_nothing_or_junk_says_so(app, people):  # noqa: F811
    import io

    from tests.conftest import csrf_token

    node, _ = admit_with_keys(people)
    row = pki.current_certificate(node.node_id)
    console = Console(app.test_client())
    console.login("minister")
    empty = console.post_form(f"/certificates/{row.serial}", {"csr": ""}, action=f"/certificates/{row.serial}/renew")
    # the refusal the application form gives (missing_csr): every door refuses a missing CSR alike
    assert empty.status_code == 422 and "需要 PKCS#10 证书请求（PEM）。" in empty.get_data(as_text=True)
    token_page = console.client.get(f"/certificates/{row.serial}").get_data(as_text=True)
    junk = console.client.post(f"/certificates/{row.serial}/renew", content_type="multipart/form-data", data={
        "csrf_token": csrf_token(token_page), "csr": "", "csr_file": (io.BytesIO(bytes(range(256))), "junk.bin")})
    assert junk.status_code == 422 and "既不是 PEM 也不是 DER" in junk.get_data(as_text=True)
    assert [r.serial for r in pki.node_certificates(node.node_id)] == [row.serial]


def test_admin_renewal_with_the_key_of_a_waiting_application_says_so_in_the_console_and_cli(
        app, runner, people, tmp_path):  # noqa: F811
    from app.admission import applications
    from tests.factories import node_document

    _, jx_admin = people
    node, _ = admit_with_keys(people)
    row = pki.current_certificate(node.node_id)
    keys = NodeKeys()
    waiting = applications.submit_by_user(node_document("360000", csr=keys.csr), by=jx_admin)
    db.session.commit()
    console = Console(app.test_client())
    console.login("minister")
    page = console.post_form(f"/certificates/{row.serial}", {"csr": keys.csr},
                             action=f"/certificates/{row.serial}/renew")
    assert page.status_code == 422
    assert f"使用该证书请求（CSR）密钥的接入申请 {waiting.id} 正在等待审核" in page.get_data(as_text=True)
    (tmp_path / "waiting.csr").write_text(keys.csr)
    command = ["ca", "renew", node.node_id, "--csr", str(tmp_path / "waiting.csr"), "--user", "minister"]
    scripted = runner.invoke(args=[*command, "--json"])
    assert scripted.exit_code == 1 and json.loads(scripted.output)["error"]["code"] == "key_pending"
    human = runner.invoke(args=command)
    assert human.exit_code == 1 and f"error: Application {waiting.id} with this CSR's key" in human.output
    assert [c.serial for c in pki.node_certificates(node.node_id)] == [row.serial]


def test_the_dashboard_counts_node_certificates_in_the_admins_scope(app, make_user, people):  # noqa: F811
    from datetime import timedelta

    from app.database import utcnow
    from app.pki.views import dashboard_panel

    minister, jx_admin = people
    node, _ = admit_with_keys(people)
    gd_admin = make_user("gd-admin", "provincial_admin", ("440000",))
    row = pki.current_certificate(node.node_id)
    row.not_after = utcnow() + timedelta(days=10)
    signer = db.session.scalars(db.select(Certificate).where(Certificate.kind == "route_signer")).one()
    signer.not_after = utcnow() + timedelta(days=10)  # the management node's own: warned elsewhere, not counted
    db.session.commit()
    assert {k: dashboard_panel(minister)[k] for k in ("valid", "expiring")} == {"valid": 1, "expiring": 1}
    assert {k: dashboard_panel(jx_admin)[k] for k in ("valid", "expiring")} == {"valid": 1, "expiring": 1}
    assert {k: dashboard_panel(gd_admin)[k] for k in ("valid", "expiring")} == {"valid": 0, "expiring": 0}


def test_a_page_past_the_end_shows_the_last_page(app, people):  # noqa: F811
    app.config["MPIM_PAGE_SIZE"] = 2
    for _ in range(3):
        admit_with_keys(people)
    console = Console(app.test_client())
    console.login("minister")
    valid = len(db.session.scalars(inventory.inventory_query(state="valid")).all())  # nodes' and the management node's
    pages = -(-valid // 2)
    last = console.client.get("/certificates/?page=99&state=valid").get_data(as_text=True)
    assert f"{pages} / {pages}" in last and "page=98" not in last and f"page={pages - 1}&amp;state=valid" in last


def test_the_embedded_default_address_follows_the_bind():
    """Certificates name CRL and OCSP addresses under MPIM_BASE_URL; unset, it follows MPIM_BIND."""
    from app.config import base_url_from_bind

    assert base_url_from_bind("127.0.0.1:5077") == "http://127.0.0.1:5077"
    assert base_url_from_bind("0.0.0.0:8000") == "http://127.0.0.1:8000"
    assert base_url_from_bind("") == base_url_from_bind("unix:/run/mpim.sock") == "http://127.0.0.1:5000"


def test_renewal_posted_from_an_older_certificates_page_is_refused(app, people):  # noqa: F811
    """A stale tab: the form is gone from the older page, and the server refuses it too."""
    from tests.conftest import csrf_token

    minister, _ = people
    node, _ = admit_with_keys(people)
    first = pki.current_certificate(node.node_id)
    second = pki.renew(node, NodeKeys().csr, by=minister)
    db.session.commit()
    console = Console(app.test_client())
    console.login("minister")
    token = csrf_token(console.client.get(f"/certificates/{second.serial}").get_data(as_text=True))
    response = console.client.post(f"/certificates/{first.serial}/renew", data={"csrf_token": token,
                                                                               "csr": NodeKeys().csr})
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/certificates/{second.serial}")
    assert len(pki.node_certificates(node.node_id)) == 2
    assert "有更新的证书" in console.client.get(response.headers["Location"]).get_data(as_text=True)


def _waiting_in_renewal_lock(thread) -> bool:
    """Whether `thread` is inside `pki.renew`, queued in `serialise` (the node's lock): its stack says so on both
    databases (PostgreSQL's advisory lock and SQLite's BEGIN IMMEDIATE both block inside that call)."""
    import sys

    from app import database

    frame, seen = sys._current_frames().get(thread.ident), set()
    while frame is not None:
        seen.add(frame.f_code)
        frame = frame.f_back
    return pki.renew.__code__ in seen and database.serialise.__code__ in seen


def test_two_renewals_posted_at_once_from_one_page_issue_one_certificate(app, people):  # noqa: F811
    """Two tabs (or two admins, or a retry) post "issue a replacement" for the node's newest certificate at the
    same moment: both read it as the newest before either holds the node, so the check is made again once held,
    and the second is sent to the first's certificate instead of issuing another."""
    import threading
    import time

    from app.admission import nodes
    from app.audit.models import AuditRecord
    from tests.conftest import csrf_token

    node, _ = admit_with_keys(people)
    current = pki.current_certificate(node.node_id)
    issued_before = db.session.scalar(db.select(db.func.count()).select_from(AuditRecord)
                                      .where(AuditRecord.action == "certificate.issue"))
    tabs = []
    for _ in range(2):
        console = Console(app.test_client())
        console.login("minister")
        page = console.client.get(f"/certificates/{current.serial}").get_data(as_text=True)
        tabs.append((console, {"csrf_token": csrf_token(page), "csr": NodeKeys().csr}))
    nodes.lock(node)  # held, not committed: both posts pass the view's look and queue behind it
    answers = []
    threads = [threading.Thread(target=lambda c=console, d=data: answers.append(
        c.client.post(f"/certificates/{current.serial}/renew", data=d))) for console, data in tabs]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while not all(_waiting_in_renewal_lock(t) for t in threads) and time.monotonic() < deadline:
        assert all(t.is_alive() for t in threads), answers
        time.sleep(0.02)
    waiting = all(_waiting_in_renewal_lock(t) for t in threads)
    db.session.commit()  # let them go before asserting: a failed wait must not leave them queued for good
    assert waiting, "both renewals were to be queued behind the node's lock"
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    db.session.expire_all()
    newest = pki.node_certificates(node.node_id)
    assert len(newest) == 2, [c.serial for c in newest]
    assert sorted(a.status_code for a in answers) == [302, 302]
    assert {a.headers["Location"].rsplit("/", 1)[-1] for a in answers} == {newest[0].serial}
    assert db.session.scalar(db.select(db.func.count()).select_from(AuditRecord)
                             .where(AuditRecord.action == "certificate.issue")) == issued_before + 1


def test_the_dashboard_shows_each_tile_only_to_those_who_may_open_it(app, make_user, people):  # noqa: F811
    make_user("auditor-1", "auditor")
    tiles = {}
    for username in ("minister", "jx-admin", "auditor-1"):
        console = Console(app.test_client())
        console.login(username)
        html = console.client.get("/").get_data(as_text=True)
        tiles[username] = ('id="users-tile"' in html, 'id="audit-tile"' in html)
    assert tiles == {"minister": (True, True), "jx-admin": (False, False), "auditor-1": (False, True)}


def test_revoking_a_node_certificate_says_the_nodes_sessions_end(app, people):  # noqa: F811
    node, _ = admit_with_keys(people)
    console = Console(app.test_client())
    console.login("minister")
    page = console.client.get(f"/certificates/{pki.current_certificate(node.node_id).serial}").get_data(as_text=True)
    assert "所有会话立即结束" in page  # zh-CN, the console's default
    signer = pki.service_certificates("route_signer")[0]
    assert "所有会话立即结束" not in console.client.get(f"/certificates/{signer.serial}").get_data(as_text=True)


def test_the_node_page_says_when_the_node_has_no_valid_certificate(app, people):  # noqa: F811
    """An active node whose certificates are all revoked is out of the routing table; its page said nothing of
    it (status active, health up), and revoking its last certificate did not warn."""
    minister, _ = people
    node, _ = admit_with_keys(people)
    only = pki.current_certificate(node.node_id)
    console = Console(app.test_client())
    console.login("minister")
    page = console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    assert 'id="node-certificate"' in page and only.serial[:16] in page and 'id="no-valid-certificate"' not in page
    assert "唯一有效的证书" in console.client.get(f"/certificates/{only.serial}").get_data(as_text=True)
    revocation.revoke(only, "key_compromise", by=minister)
    db.session.commit()
    page = console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    assert 'id="no-valid-certificate"' in page and "csr --new-key" in page
    dashboard = console.client.get("/").get_data(as_text=True)
    assert 'id="nodes-without-certificate"' in dashboard and "1 个启用的节点没有有效证书" in dashboard
    listed = console.client.get("/nodes/?status=no_certificate").get_data(as_text=True)
    assert node.node_id in listed
    renewed = pki.renew(node, NodeKeys().csr, by=minister)
    db.session.commit()
    assert "唯一有效的证书" in console.client.get(f"/certificates/{renewed.serial}").get_data(as_text=True)
    assert 'id="nodes-without-certificate"' not in console.client.get("/").get_data(as_text=True)
    assert node.node_id not in console.client.get("/nodes/?status=no_certificate").get_data(as_text=True)
    pki.renew(node, NodeKeys().csr, by=minister)  # two valid now: revoking one keeps the node in the table
    db.session.commit()
    assert "唯一有效的证书" not in console.client.get(f"/certificates/{renewed.serial}").get_data(as_text=True)


def test_a_provincial_admin_opens_no_management_node_certificate_the_list_does_not_show_them(app, make_user):
    """The list showed a provincial admin only their divisions' nodes' certificates, but the detail page opened
    the management node's own (route signer, TLS) by URL, with the route signer's rotation notices."""
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    for kind in ("management", "route_signer"):
        serial = pki.service_certificates(kind)[0].serial
        assert console.client.get(f"/certificates/{serial}").status_code == 404
        assert console.client.get(f"/certificates/{serial}.pem").status_code == 404
        assert serial not in console.client.get("/certificates/").get_data(as_text=True)


def test_a_provincial_admin_with_no_divisions_reaches_no_node(app, make_user, people):  # noqa: F811
    """A provincial admin's division filter was `or_()` of nothing when the scopes were empty, which SQLAlchemy
    renders as no condition at all: every province's nodes. The service never stores such a user, but the
    filter must not fail open on one edited into the database."""
    from sqlalchemy import select

    from app.admission.models import Node
    from app.admission.scope import division_filter
    from app.auth.models import User

    admit_with_keys(people)
    user = make_user("jx-admin-2", "provincial_admin", ("360000",))
    assert db.session.scalars(select(Node.node_id).where(division_filter(user, Node.division_code))).all()
    user = db.session.get(User, user.id)
    user.scope_codes = ""
    assert user.scopes == []
    assert db.session.scalars(select(Node.node_id).where(division_filter(user, Node.division_code))).all() == []


def test_a_renewal_refused_because_the_intermediate_expired_says_so_in_the_readers_language(app, people):  # noqa: F811
    """The refusal was a plain English string inside the zh-CN console's alert."""
    from datetime import timedelta

    from tests.conftest import csrf_token

    node, _ = admit_with_keys(people)
    current = pki.current_certificate(node.node_id)
    console = Console(app.test_client())
    console.login("minister")
    token = csrf_token(console.client.get(f"/certificates/{current.serial}").get_data(as_text=True))
    loaded = pki.authority()
    after = loaded.intermediate_certificate.not_valid_after_utc + timedelta(days=1)
    loaded.clock = lambda: after
    response = console.client.post(f"/certificates/{current.serial}/renew", data={"csrf_token": token,
                                                                                 "csr": NodeKeys().csr})
    page = response.get_data(as_text=True)
    assert response.status_code == 422  # as every refused form of the console
    assert "签发 CA 证书已于" in page and "The issuing CA certificate" not in page
    assert len(pki.node_certificates(node.node_id)) == 1
