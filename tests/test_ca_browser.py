"""The CA's console in a real Chromium (issue 4 §4-§5): the dashboard's expiring count, the inventory,
a certificate's page with PEM and fingerprint, the download with the chain, revocation with a confirmation
and a reason, and a provincial admin kept to their own division."""

from __future__ import annotations

import urllib.request
from datetime import timedelta

from cryptography import x509
from sqlalchemy import select

from app.audit.models import AuditRecord
from app.database import utcnow
from app.extensions import db
from app.pki import service as pki
from app.pki.models import Certificate
from tests.conftest import screenshot
from tests.test_admission_browser import sign_out
from tests.test_console_browser import sign_in
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def test_expiring_certificate_from_the_dashboard_to_its_revocation(page, live_server, people, make_user):  # noqa: F811
    node, _ = admit_with_keys(people)
    row = pki.current_certificate(node.node_id)
    row.not_after = utcnow() + timedelta(days=10)  # as if issued 80 days ago
    serial, sha256, pem = row.serial, row.sha256, row.pem
    db.session.commit()

    sign_in(page, live_server, "minister")
    page.click("text=1 个将在 30 天内到期")
    page.wait_for_selector("h1:has-text('证书')")
    assert "state=expiring" in page.url
    listed = page.inner_text("table.list")
    assert node.node_id in listed and "即将到期" in listed
    screenshot(page, "certificates-expiring")

    page.click(f"a:has-text('{serial[:16]}')")
    page.wait_for_selector("#fingerprint")
    assert page.inner_text("#fingerprint") == sha256
    assert page.inner_text("pre.pem").strip() == pem.strip()
    with page.expect_download() as download:
        page.click("text=下载（含 CA 证书链）")
    with open(download.value.path(), "rb") as handle:
        chain = x509.load_pem_x509_certificates(handle.read())
    assert [certificate.serial_number for certificate in chain] == [
        int(serial, 16), pki.authority().intermediate_certificate.serial_number,
        pki.authority().root_certificate.serial_number]

    page.select_option("select[name=reason]", "key_compromise")
    page.once("dialog", lambda dialog: dialog.dismiss())  # the admin thinks again: nothing happens
    page.click("button:has-text('吊销')")
    page.wait_for_timeout(500)
    db.session.expire_all()
    assert db.session.get(Certificate, serial).revoked_at is None

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('吊销')")
    page.wait_for_selector(".flash.success")
    assert f"证书 {serial} 已吊销" in page.inner_text(".flash.success")
    assert page.inner_text("#certificate-state") == "已吊销"
    assert "密钥泄露" in page.inner_text("dl.facts")
    screenshot(page, "certificate-revoked")
    db.session.expire_all()
    revoked = db.session.get(Certificate, serial)
    assert revoked.revocation_reason == "key_compromise"
    entry = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "certificate.revoke")).one()
    assert (entry.actor, entry.target, entry.detail["reason"]) == ("minister", serial, "key_compromise")
    with urllib.request.urlopen(f"{live_server}/ca/crl.pem", timeout=30) as response:
        crl = x509.load_pem_x509_crl(response.read())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    assert page.locator("button:has-text('吊销')").count() == 0  # no second revocation offered


def test_a_provincial_admin_sees_only_their_divisions_certificates(page, live_server, people, make_user):  # noqa: F811
    node, _ = admit_with_keys(people)
    serial = pki.current_certificate(node.node_id).serial
    make_user("gd-admin", "provincial_admin", ("440000",))

    sign_in(page, live_server, "jx-admin")
    page.click("nav.mainnav >> text=证书")
    page.wait_for_selector("table.list")
    assert node.node_id in page.inner_text("table.list")
    page.click(f"a:has-text('{serial[:16]}')")
    page.wait_for_selector("#fingerprint")
    assert page.locator("button:has-text('吊销')").count() == 0  # revoking is the ministry's
    sign_out(page)

    sign_in(page, live_server, "gd-admin")
    page.click("nav.mainnav >> text=证书")
    page.wait_for_selector("h1:has-text('证书')")
    assert node.node_id not in page.inner_text("main")
    assert page.goto(f"{live_server}/certificates/{serial}").status == 404
    assert page.locator("#fingerprint").count() == 0
    response = page.request.get(f"{live_server}/certificates/{serial}.pem")
    assert response.status == 404


def test_a_ministry_admin_renews_a_node_certificate_from_its_new_csr(page, live_server, people):  # noqa: F811
    from app.routing import service as routing
    from tests.factories import NodeKeys

    node, _ = admit_with_keys(people)
    old = pki.current_certificate(node.node_id)
    old_serial, old_sha256 = old.serial, old.sha256
    db.session.commit()
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, live_server, "minister")
    page.goto(f"{live_server}/certificates/{old_serial}")

    garbage = "-----BEGIN CERTIFICATE REQUEST-----\nnot base64 at all\n-----END CERTIFICATE REQUEST-----"
    page.fill("#renew-form textarea[name=csr]", garbage)
    page.click("#renew-form button[type=submit]")
    page.wait_for_selector("#renew-form .error")
    assert "无法解析该 CSR" in page.inner_text("#renew-form .error")
    assert page.input_value("#renew-form textarea[name=csr]") == garbage  # what was pasted is kept

    page.fill("#renew-form textarea[name=csr]", NodeKeys("rsa1024").csr)
    page.click("#renew-form button[type=submit]")
    page.wait_for_selector("#renew-form .error")
    assert "不接受短于 2048 位的 RSA 密钥" in page.inner_text("#renew-form .error")
    screenshot(page, "certificate-renew-refused")
    db.session.expire_all()
    assert [row.serial for row in pki.node_certificates(node.node_id)] == [old_serial]  # nothing issued

    keys = NodeKeys()
    page.fill("#renew-form textarea[name=csr]", keys.csr)
    page.click("#renew-form button[type=submit]")
    page.wait_for_selector(".flash.success")
    db.session.expire_all()
    new = pki.current_certificate(node.node_id)
    assert new.serial != old_serial and new.issued_by == "minister"
    assert page.inner_text("#fingerprint") == new.sha256
    assert x509.load_pem_x509_certificate(new.pem.encode()).public_key().public_numbers() == \
        keys.key.public_key().public_numbers()
    assert db.session.get(Certificate, old_serial).revoked_at is None  # valid until it expires
    table = routing.entries_of(routing.head())
    assert table[node.node_id]["cert_sha256"] == new.sha256 != old_sha256
