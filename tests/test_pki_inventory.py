"""A provincial admin cannot tell another division's certificate from one that does not exist."""

from __future__ import annotations

from app.admission import applications
from app.extensions import db
from app.pki import service as pki
from app.pki.models import Certificate
from tests.conftest import Console
from tests.factories import NodeKeys, node_document
from tests.test_sessions import people  # noqa: F401 (fixture)


def test_another_divisions_certificate_answers_as_one_that_does_not_exist(app, make_user, people):  # noqa: F811
    minister, _ = people
    gd_admin = make_user("gd-admin", "provincial_admin", ("440000",))
    document = node_document("440000", csr=NodeKeys().csr)
    node = applications.approve(applications.submit_by_user(document, by=gd_admin), by=minister)
    db.session.commit()
    theirs = pki.current_certificate(node.node_id).serial
    missing = theirs[:-1] + ("1" if theirs[-1] == "0" else "0")
    assert db.session.get(Certificate, missing) is None
    signer = pki.service_certificates("route_signer")[0].serial
    console = Console(app.test_client())
    console.login("jx-admin")

    def answer(url: str, serial: str) -> tuple:
        response = console.client.get(url)
        return response.status_code, response.mimetype, response.get_data(as_text=True).replace(serial, "SERIAL")

    for serial in (theirs, signer):
        for suffix in ("", ".pem"):
            assert answer(f"/certificates/{serial}{suffix}", serial) == answer(f"/certificates/{missing}{suffix}",
                                                                               missing)
            assert answer(f"/certificates/{serial}{suffix}", serial)[0] == 404
