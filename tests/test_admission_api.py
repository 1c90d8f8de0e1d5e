"""Admission through the JSON API (SPEC §4): enrollment tokens, applications, bad input."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.admission import applications, tokens
from app.admission.models import Application, EnrollmentToken
from app.database import utcnow
from app.extensions import db
from tests.factories import (
    csr_of_version,
    csr_with_unreadable_extensions,
    csr_with_unreadable_subject,
    make_csr,
    make_key,
    node_document,
    not_strict_bodies,
)


@pytest.fixture
def jx_admin(make_user):
    return make_user("jx-admin", "provincial_admin", ("360000",))


@pytest.fixture
def token(jx_admin):
    _, raw = tokens.create_token("360000", by=jx_admin)
    db.session.commit()
    return raw


def submit(client, raw, document, **kwargs):
    return client.post("/api/v1/applications", json=document, headers={"Authorization": f"Bearer {raw}"}, **kwargs)


def test_token_is_stored_hashed_and_shown_by_prefix_only(token):
    row = db.session.scalar(select(EnrollmentToken))
    assert row.token_hash == tokens.hash_token(token) and token not in (row.token_hash, row.prefix)
    assert token.startswith(row.prefix) and len(row.prefix) < 16
    assert row.state() == "active"


def test_application_is_accepted_and_its_status_readable_with_the_token(client, token):
    response = submit(client, token, node_document("360100"))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "pending" and len(body["application_id"]) == 32
    status = client.get(f"/api/v1/applications/{body['application_id']}", headers={"Authorization": f"Bearer {token}"})
    assert status.get_json() == {"application_id": body["application_id"], "status": "pending"}
    assert db.session.scalar(select(EnrollmentToken)).state() == "used"


def test_status_is_hidden_from_another_token(client, token, jx_admin):
    application_id = submit(client, token, node_document()).get_json()["application_id"]
    _, other = tokens.create_token("360000", by=jx_admin)
    db.session.commit()
    response = client.get(f"/api/v1/applications/{application_id}", headers={"Authorization": f"Bearer {other}"})
    assert response.status_code == 404


@pytest.mark.parametrize("application_id", ["%00", "a%00b", "A" * 32, "x" * 33])
def test_an_application_id_no_application_can_have_is_not_found_not_a_server_error(client, token, application_id):
    """PostgreSQL refuses a NUL in any text it compares: the look-up answered 500 there."""
    response = client.get(f"/api/v1/applications/{application_id}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "application_not_found"


@pytest.mark.parametrize("node_id", ["1234567890123456789%00", "%00" * 20, "１２３４５６７８９０１２３４５６７８９０"])
def test_a_node_id_no_node_can_have_is_not_found_not_a_server_error(client, token, node_id):
    """Twenty characters holding a NUL were looked up, and PostgreSQL refuses a NUL: the certificate download
    an enrollment token may make answered 500 there (the console's address check does not cover the API)."""
    response = client.get(f"/api/v1/nodes/{node_id}/certificate", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "certificate_not_found"
    # Named back only as a node id: the path as sent could be 3,000 characters, or a right-to-left override.
    assert response.get_json()["error"]["message"] == \
        "No certificate for this node id (node ids are 20 digits) with this token."


def test_a_token_is_single_use(client, token):
    assert submit(client, token, node_document()).status_code == 201
    again = submit(client, token, node_document())
    assert again.status_code == 401 and again.get_json()["error"]["code"] == "token_used"


def test_a_node_that_lost_its_201_retrying_with_the_same_key_gets_its_application(client, token, make_user):
    """The 201 is lost (a timeout, a reset) and the node sends the same request again: it was token_used, with
    no id, and a new token with the same key key_pending, the node stranded. Its own application is the answer,
    as it is now, whatever else the retry says; nothing new is stored or recorded."""
    from app.audit.models import AuditRecord

    key = make_key()
    document = node_document("360100", csr=make_csr(key))
    first = submit(client, token, document)
    assert first.status_code == 201
    application_id = first.get_json()["application_id"]
    retry = submit(client, token, {**document, "csr": make_csr(key), "endpoint": "https://elsewhere.example"})
    assert retry.status_code == 201, retry.get_json()
    assert retry.get_json() == {"application_id": application_id, "status": "pending"}
    assert db.session.scalars(select(Application.id)).all() == [application_id]
    assert applications.get(application_id).endpoint == document["endpoint"]
    assert db.session.scalars(select(AuditRecord.action).where(AuditRecord.action.startswith("application."))
                              ).all() == ["application.submit"]

    node = applications.approve(applications.get(application_id), by=make_user("minister"))
    db.session.commit()
    approved = submit(client, token, document)
    assert approved.status_code == 201
    assert approved.get_json() == {"application_id": application_id, "status": "approved", "node_id": node.node_id}


@pytest.mark.parametrize("csr", ["another key", "no csr", "not a csr", "version 2"])
def test_a_used_token_with_another_key_or_no_csr_is_still_token_used(client, token, csr):
    assert submit(client, token, node_document()).status_code == 201
    document = node_document()
    if csr == "no csr":
        del document["csr"]
    elif csr == "not a csr":
        document["csr"] = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    elif csr == "version 2":  # was a 500 (InvalidVersion is no ValueError)
        document["csr"] = csr_of_version(1)
    again = submit(client, token, document)
    assert again.status_code == 401 and again.get_json()["error"]["code"] == "token_used"


@pytest.mark.parametrize("state", ["expired", "revoked"])
def test_an_expired_or_revoked_token_is_refused_even_with_the_key_of_an_application(client, token, jx_admin, state):
    """Only the token that used itself answers with its application: another token of the same province, unused
    but expired or revoked, is refused for that, though its CSR's key is an application's."""
    document = node_document()
    application_id = submit(client, token, document).get_json()["application_id"]
    row, other = tokens.create_token("360000", by=jx_admin)
    db.session.commit()
    if state == "revoked":
        tokens.revoke_token(row.id, by=jx_admin)
    else:
        row.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    response = submit(client, other, document)
    assert response.status_code == 401 and response.get_json()["error"]["code"] == f"token_{state}"
    assert db.session.scalars(select(Application.id)).all() == [application_id]


def test_an_expired_token_is_refused(client, token):
    row = db.session.scalar(select(EnrollmentToken))
    row.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    response = submit(client, token, node_document())
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "token_expired"


def test_a_revoked_token_is_refused(client, token, jx_admin):
    tokens.revoke_token(db.session.scalar(select(EnrollmentToken.id)), by=jx_admin)
    db.session.commit()
    response = submit(client, token, node_document())
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "token_revoked"


def reassign(user, **change) -> None:
    """What an admin changes on the users page: the account's role, scope, whether it is enabled."""
    from app.auth import service as users

    users.update_user(user, **{"role": user.role, "scopes": user.scopes, "active": user.active, "display_name": "",
                               **change})
    db.session.commit()


@pytest.mark.parametrize(("change", "lapse"), [
    ({"active": False}, "disabled"),
    ({"scopes": ["440000"]}, "out_of_scope"),
    ({"role": "auditor", "scopes": []}, "not_admin"),
], ids=["disabled", "moved_to_another_province", "made_an_auditor"])
def test_a_token_stops_admitting_once_its_issuer_could_not_issue_it(client, token, jx_admin, change, lapse):
    """A provincial admin's token outlived their account and their scope: disabled, moved to another province or
    made an auditor, the admin could issue no such token, and the one they left behind still admitted a node."""
    from sqlalchemy import func

    reassign(jx_admin, **change)
    response = submit(client, token, node_document())
    error = response.get_json()["error"]
    assert (response.status_code, error["code"]) == (401, "token_issuer_inactive"), error
    row = db.session.scalar(select(EnrollmentToken))
    assert (row.used_at, row.state(), row.issuer_lapse()) == (None, "issuer_inactive", lapse)
    assert db.session.scalar(select(func.count()).select_from(Application)) == 0


def test_a_token_admits_while_its_issuer_could_issue_it(client, jx_admin, make_user):
    """A scope narrowed but still covering the token's division, a ministry admin's token for any province, and an
    account enabled again (the token was refused, not revoked: nothing was stored)."""
    _, narrowed = tokens.create_token("360100", by=jx_admin)
    _, national = tokens.create_token("440000", by=make_user("minister"))
    _, paused = tokens.create_token("360000", by=make_user("gan-admin", "provincial_admin", ("360000",)))
    db.session.commit()
    reassign(jx_admin, scopes=["360100", "440000"])
    assert submit(client, narrowed, node_document("360100")).status_code == 201
    assert submit(client, national, node_document("440000")).status_code == 201
    gan_admin = db.session.scalar(select(EnrollmentToken).where(EnrollmentToken.division_code == "360000")).issued_by
    reassign(gan_admin, active=False)
    assert submit(client, paused, node_document()).get_json()["error"]["code"] == "token_issuer_inactive"
    reassign(gan_admin, active=True)
    assert submit(client, paused, node_document()).status_code == 201


@pytest.mark.parametrize(("header", "code"), [
    (None, "missing_token"), ("Basic abc", "missing_token"), ("Bearer mpet_not-a-real-token", "unknown_token"),
    ("Bearer not-shaped-like-a-token", "unknown_token"), ("Bearer mpet_" + "x" * 200, "unknown_token"),
])
def test_missing_or_unknown_token(client, header, code):
    headers = {"Authorization": header} if header else {}
    response = client.post("/api/v1/applications", json=node_document(), headers=headers)
    assert (response.status_code, response.get_json()["error"]["code"]) == (401, code)
    if header == "Bearer mpet_" + "x" * 200:  # it begins as a token does: "they begin with mpet_" said nothing
        assert "at most 100 characters" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(("header", "code"), [(None, "missing_token"),
                                              ("Bearer mpet_not-a-real-token", "unknown_token")])
@pytest.mark.parametrize(("body", "content_type"), [(b"not json", "text/plain"), (b"{", "application/json"),
                                                    (b"[]", "application/json")])
def test_the_token_is_checked_before_the_body(client, header, code, body, content_type):
    """protocol.md §4: the token first, then the document. A body that was no JSON object was judged first (415,
    400), so a vendor fixed it only to learn its token was no good."""
    headers = {"Authorization": header} if header else {}
    response = client.post("/api/v1/applications", data=body, content_type=content_type, headers=headers)
    assert (response.status_code, response.get_json()["error"]["code"]) == (401, code)


@pytest.mark.parametrize(("overrides", "status", "code", "field"), [
    ({"division_code": "369999"}, 400, "unknown_division_code", "division_code"),
    ({"division_code": "36010"}, 400, "invalid_division_code", "division_code"),
    ({"division_code": 360000}, 400, "invalid_input", "division_code"),  # was "division_code is required."
    ({"division_code": "440300"}, 403, "out_of_scope", "division_code"),
    ({"endpoint": "http://im.jx.example"}, 400, "endpoint_not_https", "endpoint"),
    ({"endpoint": "https://user:pw@im.jx.example"}, 400, "invalid_endpoint", "endpoint"),
    ({"endpoint": "https://im.jx.example/#frag"}, 400, "invalid_endpoint", "endpoint"),
    ({"endpoint": "https:///nohost"}, 400, "invalid_endpoint", "endpoint"),
    ({"endpoint": "https://10.2.2.2:0"}, 400, "invalid_endpoint", "endpoint"),
    ({"endpoint": "https://10.2.2.2:65536"}, 400, "invalid_endpoint", "endpoint"),
    ({"org_name": "省" * 101}, 400, "too_long", "org_name"),
    ({"org_name": "  "}, 400, "missing_field", "org_name"),
    # texts that show as nothing: zero-width and format characters, fillers, variation selectors, with spaces
    ({"org_name": "\u200b"}, 400, "missing_field", "org_name"),
    ({"system_name": " \u00ad\u2060 "}, 400, "missing_field", "system_name"),
    ({"vendor": "\u3164\ufe0f"}, 400, "missing_field", "vendor"),
    ({"org_name": "\U000e0041\u180e"}, 400, "missing_field", "org_name"),  # a tag character (Cf), Mongolian VS
    ({"contact": {"name": "\ufeff", "phone": "0791-1234567", "email": "ops@jx.example"}}, 400, "missing_field",
     "contact.name"),
    ({"org_name": "江西省\u202e厅安公"}, 400, "invalid_input", "org_name"),  # right-to-left override
    ({"system_name": "赣警通\x7f"}, 400, "invalid_input", "system_name"),  # DEL
    ({"vendor": "Vendor\x85A"}, 400, "invalid_input", "vendor"),  # C1 next line
    ({"capabilities": ["text", "teleport"]}, 400, "unknown_capability", "capabilities"),
    ({"capabilities": []}, 400, "invalid_input", "capabilities"),
    ({"contact": {"name": "张三", "phone": "call me", "email": "ops@jx.example"}}, 400, "invalid_input",
     "contact.phone"),
    ({"csr": "not a csr"}, 400, "invalid_csr", "csr"),
    ({"csr": csr_with_unreadable_subject("integer")}, 400, "invalid_csr", "csr"),  # was a 500
    ({"csr": csr_with_unreadable_extensions("duplicate")}, 400, "invalid_csr", "csr"),  # was a 500
    ({"csr": csr_with_unreadable_extensions("x400")}, 400, "invalid_csr", "csr"),  # was a 500
    ({"csr": csr_of_version(1)}, 400, "invalid_csr", "csr"),  # was a 500
    ({"csr": ""}, 400, "missing_csr", "csr"),
])
def test_bad_input_is_refused_and_leaves_the_token_unused(client, token, overrides, status, code, field):
    response = submit(client, token, node_document(**overrides))
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error.get("field")) == (status, code, field), error
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"
    assert db.session.scalar(select(Application)) is None


def test_out_of_scope_says_the_token_admits_the_divisions_below_its_own(client, token, jx_admin):
    """It said "in 360000 only", yet a county of Jiangxi is taken: the message must not say less than the rule."""
    assert submit(client, token, node_document("360102")).status_code == 201
    _, other = tokens.create_token("360000", by=jx_admin)
    db.session.commit()
    error = submit(client, other, node_document("440300")).get_json()["error"]
    assert (error["code"], error["message"]) == (
        "out_of_scope", "This token admits nodes in 360000 and the divisions below it only.")



def test_out_of_scope_for_a_county_token_names_no_divisions_below_it(client, jx_admin):
    """A county has no divisions below it: its token's refusal said "and the divisions below it" all the same."""
    _, county = tokens.create_token("360102", by=jx_admin)
    db.session.commit()
    error = submit(client, county, node_document("360103")).get_json()["error"]
    assert (error["code"], error["message"]) == ("out_of_scope", "This token admits nodes in 360102 only.")

ONLY_THE_BLOCK = "nothing but white space may come before -----BEGIN CERTIFICATE REQUEST----- or after"


@pytest.mark.parametrize("wrap", [lambda pem: pem + "\x00", lambda pem: "\x00" + pem,
                                  lambda pem: pem + "\u202eanything the reviewer sees\x07",
                                  lambda pem: "Certificate Request:\n" + pem, lambda pem: pem + "\u3000"])
def test_a_csr_with_text_around_its_pem_block_is_refused_and_nothing_stored(client, token, wrap):
    """The checks read the PEM block alone and the text was stored as sent: a NUL after the block was stored
    verbatim on SQLite and failed PostgreSQL's INSERT with a 500; a bidi override or BEL went to the database."""
    response = submit(client, token, node_document(csr=wrap(make_csr())))
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error["field"]) == (400, "invalid_csr", "csr"), error
    assert ONLY_THE_BLOCK in error["message"]
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"
    assert db.session.scalar(select(Application)) is None


def test_the_csr_is_stored_as_its_pem_block_alone(client, token):
    """White space around the block and CRLF line ends are taken, and the application keeps the PEM as the CA
    writes it, not the text as sent."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = make_csr()
    response = submit(client, token, node_document(csr="\r\n \t" + pem.replace("\n", "\r\n") + "\n\n  "))
    assert response.status_code == 201, response.get_json()
    stored = db.session.scalar(select(Application)).csr_pem
    assert stored == x509.load_pem_x509_csr(pem.encode()).public_bytes(Encoding.PEM).decode() == pem


@pytest.mark.parametrize("endpoint", ["https://im.jx.example/a b", "https://im.jx.example/a\u00a0b",
                                      "https://im.jx.example/a\u2028b", "https://im.jx.example/im\u3000x"])
def test_an_endpoint_with_a_space_is_refused_since_no_route_client_would_take_the_table(client, token, endpoint):
    """No-break, ideographic and line separator spaces are no control characters and urlsplit takes them
    in a path: the endpoint was stored, approved and published, and every route client refused the whole
    table for it (app.routing.document), so no node took a new table."""
    from app.routing.document import MalformedDocument, check_entry

    with pytest.raises(MalformedDocument):  # what the nodes would make of it
        check_entry({"node_id": "3" * 20, "division_code": "360000", "org_name": "o", "system_name": "s",
                     "endpoint": endpoint, "status": "up", "cert_sha256": "0" * 64, "capabilities": ["text"]})
    response = submit(client, token, node_document(endpoint=endpoint))
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error["field"]) == (400, "invalid_endpoint", "endpoint")
    assert error["message"] == "The endpoint must not contain spaces."
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"


BRACKETS_ALONE = ("An IPv6 address in brackets is the whole host of an endpoint: only a port may follow it, as in "
                  "https://[2001:db8::1]:8443/.")


@pytest.mark.parametrize(("endpoint", "message"), [
    ("https://1.2.3", "The endpoint's host is not a valid DNS name."),
    ("https://im.jx.2025", "The endpoint's host is not a valid DNS name."),
    ("https://[fe80::1%25eth0]:8443", "The endpoint's IPv6 address must not name a network interface (a zone)."),
    *((endpoint, "An IPv4 address is written as itself in an endpoint, not inside IPv6: 10.9.133.4.")
      for endpoint in ("https://[::ffff:10.9.133.4]", "https://[::FFFF:a09:8504]:443/")),
    *((endpoint, "The endpoint's host is the IPv4 address 10.11.10.7 in another form: write it as 10.11.10.7.")
      for endpoint in ("https://10.11.10.0x7", "https://0x0a0b0a07:8443/", "https://10.11.0x0a07.")),
    ("https://[v1.x]", "Only an IPv6 address goes in brackets in an endpoint's host."),
    ("https://[v1.x]:8443/im", "Only an IPv6 address goes in brackets in an endpoint's host."),
    *((endpoint, BRACKETS_ALONE) for endpoint in (
        "https://[2001:db8::1]im.example.com/", "https://im[2001:db8::1]/", "https://[2001:db8::1]evil:443/",
        "https://[2001:db8::1]]/")),
])
def test_an_endpoint_host_no_certificate_could_name_is_refused(client, token, endpoint, message):
    """"1.2.3" is neither an IPv4 address nor a DNS name (an all-numeric top label, RFC 3696), and a zone names
    one machine's interface: neither can be the SAN of the node's certificate nor be reached by another node.
    "[v1.x]" is an RFC 3986 IPvFuture literal: urlsplit took it, its hostname dropped the brackets, and the node
    was stored and certified as https://v1.x, a DNS name nobody asked for. Text before or after the brackets
    ("https://[2001:db8::1]im.example.com/") was dropped: the node was stored as https://[2001:db8::1]. An
    IPv4-mapped IPv6 address ("[::ffff:10.9.133.4]") reaches the IPv4 host under another spelling: it passed the
    check that one endpoint is one node's; so did the hexadecimal forms a resolver reads as IPv4 ("0x0a0b0a07",
    "10.11.10.0x7") without asking DNS (node API review)."""
    response = submit(client, token, node_document(endpoint=endpoint))
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error["field"], error["message"]) == \
        (400, "invalid_endpoint", "endpoint", message)
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"


@pytest.mark.parametrize("endpoint", ["https://2025.jx.example", "https://[2001:db8::1]:8443", "https://10.2.2.2",
                                      "https://0x7f.example", "https://deadbeef"])
def test_an_endpoint_host_with_numeric_labels_or_a_plain_address_is_taken(client, token, endpoint):
    assert submit(client, token, node_document(endpoint=endpoint)).status_code == 201


@pytest.mark.parametrize("endpoint", ["https://10.2.2.2:0", "https://10.2.2.2:65536", "https://im.jx.example:99999"])
def test_an_endpoint_port_outside_1_to_65535_is_refused_by_name(client, token, endpoint):
    response = submit(client, token, node_document(endpoint=endpoint))
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == "The endpoint's port must be between 1 and 65535."


def test_retired_division_is_refused(client, token):
    from app.divisions.models import Division

    db.session.get(Division, "360102").retired = True
    db.session.get(Division, "360102").retired_in = "2099"
    db.session.commit()
    response = submit(client, token, node_document("360102"))
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "retired_division_code"


def test_a_megabyte_organisation_name_gets_413(client, token):
    response = submit(client, token, node_document(org_name="省" * (1024 * 1024)))
    assert response.status_code == 413 and response.get_json()["error"] == {
        "code": "request_entity_too_large", "message": "The body is larger than 1 MiB (1,048,576 bytes)."}
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"


def test_body_that_is_not_json_or_has_the_wrong_type(client, token):
    headers = {"Authorization": f"Bearer {token}"}
    wrong_type = client.post("/api/v1/applications", data="division_code=360000", headers=headers,
                             content_type="application/x-www-form-urlencoded")
    assert wrong_type.status_code == 415 and wrong_type.get_json()["error"]["code"] == "unsupported_media_type"
    not_json = client.post("/api/v1/applications", data="{not json", headers=headers,
                           content_type="application/json")
    assert not_json.status_code == 400 and not_json.get_json()["error"]["code"] == "invalid_json"
    a_list = client.post("/api/v1/applications", json=[1, 2], headers=headers)
    assert a_list.status_code == 400 and a_list.get_json()["error"]["code"] == "invalid_body"


@pytest.mark.parametrize("path", ["/api/v1/applications", "/api/v1/session"])
def test_deeply_nested_json_is_invalid_json_not_a_server_error(client, token, path):
    """10 KB of '[' nests deeper than the parser's stack: a RecursionError must not become a 500."""
    response = client.post(path, data="[" * 10_000, headers={"Authorization": f"Bearer {token}"},
                           content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"


@pytest.mark.parametrize("path", ["/api/v1/applications", "/api/v1/session"])
def test_an_integer_longer_than_python_converts_is_invalid_json_not_a_server_error(client, token, path):
    """Python 3.11 refuses to convert an integer of more than 4,300 digits with a plain ValueError, which is no
    JSONDecodeError: it must be a 400 like any other body that is not JSON, not a 500."""
    response = client.post(path, data=b'{"a": ' + b"1" * 5000 + b"}", headers={"Authorization": f"Bearer {token}"},
                           content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_json"
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" * 400 + ".5"])
def test_nan_and_infinity_are_invalid_json(client, token, constant):
    """Python's json reads NaN and Infinity, which RFC 8259 §6 leaves out of JSON: a strict reader refuses them.
    It also reads a number past a double's range (1e999, 400 digits) as inf, which json.dumps writes back as
    Infinity: refused too, the number quoted (its first 32 characters)."""
    body = json.dumps(node_document()).replace("{", '{"n": ' + constant + ", ", 1)
    response = client.post("/api/v1/applications", data=body, headers={"Authorization": f"Bearer {token}"},
                           content_type="application/json")
    error = response.get_json()["error"]
    assert (response.status_code, error["code"]) == (400, "invalid_json") and constant[:32] in error["message"], \
        error
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"


def test_a_lone_surrogate_escape_is_invalid_json_not_a_server_error(client, token):
    """`"\\ud800"` is valid JSON syntax but no Unicode text: it must not reach the database (a 500)."""
    body = json.dumps(node_document()).replace('"org_name": "', '"org_name": "\\ud800', 1)
    response = client.post("/api/v1/applications", data=body, headers={"Authorization": f"Bearer {token}"},
                           content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_json"
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"


NOT_STRICT = not_strict_bodies(node_document(), duplicate="csr", nested="contact")


@pytest.mark.parametrize("case", NOT_STRICT)
def test_a_body_that_is_not_strict_json_is_refused_and_nothing_is_stored(client, token, case):
    """Python's json keeps the last of two equal keys and reads a BOM, UTF-16 or UTF-32: each of these made an
    application, though an auditor of the body could read another CSR or contact than the one acted on, and
    RFC 8259 §8.1 wants UTF-8 without a BOM between systems."""
    body, reason = NOT_STRICT[case]
    response = client.post("/api/v1/applications", data=body, headers={"Authorization": f"Bearer {token}"},
                           content_type="application/json")
    error = response.get_json()["error"]
    assert (response.status_code, error["code"]) == (400, "invalid_json") and reason in error["message"], error
    assert db.session.scalar(select(Application)) is None
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"


def test_second_application_for_the_same_endpoint_is_refused(client, jx_admin, make_user):
    raws = []
    for _ in range(3):
        raws.append(tokens.create_token("360000", by=jx_admin)[1])
    db.session.commit()
    first = submit(client, raws[0], node_document(endpoint="https://IM.jx.example:443/"))
    assert first.status_code == 201
    pending = submit(client, raws[1], node_document(endpoint="https://im.jx.example"))
    assert pending.status_code == 409 and pending.get_json()["error"]["code"] == "endpoint_pending"
    minister = make_user("minister")
    applications.approve(applications.get(first.get_json()["application_id"]), by=minister)
    db.session.commit()
    taken = submit(client, raws[2], node_document(endpoint="https://im.jx.example/"))
    assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "endpoint_in_use"


@pytest.mark.parametrize(("endpoint", "message"), [
    ("https://im.jx.example/.", "The endpoint's path must not hold . or .. segments."),
    ("https://im.jx.example/x/..", "The endpoint's path must not hold . or .. segments."),
    ("https://im.jx.example/%2e", "The endpoint's path must not hold . or .. segments."),
    ("https://im.jx.example/im/%2E%2e/x", "The endpoint's path must not hold . or .. segments."),
    ("https://im.jx.example/./im", "The endpoint's path must not hold . or .. segments."),
    ("https://im.jx.example/%zz", "The endpoint is not a valid URL."),
    ("https://im.jx.example/im%2", "The endpoint is not a valid URL."),
    ("https://im.jx.example/路由", "The endpoint's path must be in ASCII: percent-encode other characters."),
    # the same path as "/a%22b" to every server, sent raw by http.client: two spellings of one endpoint
    ('https://im.jx.example/a"b', 'The endpoint\'s path holds ", which a URL must percent-encode (%22).'),
    ("https://im.jx.example/a\\b", "The endpoint's path holds \\, which a URL must percent-encode (%5C)."),
    ("https://im.jx.example/a|b", "The endpoint's path holds |, which a URL must percent-encode (%7C)."),
    ("https://im.jx.example/a[1]", "The endpoint's path holds [, which a URL must percent-encode (%5B)."),
])
def test_an_endpoint_path_that_spells_another_endpoint_or_no_url_is_refused(client, token, endpoint, message):
    """"https://a:8443/." is the server at "https://a:8443" (RFC 3986 §5.2.4): one node was admitted beside
    another at its very server, the one-endpoint-one-node rule compared the spellings. A non-ASCII path is no URI,
    and a node's HTTP client cannot send it."""
    response = submit(client, token, node_document(endpoint=endpoint))
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error["field"], error["message"]) == \
        (400, "invalid_endpoint", "endpoint", message)
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"


def test_percent_encodings_of_the_same_path_are_one_endpoint(client, jx_admin):
    """RFC 3986 §6.2.2: "%7e", "%7E" and "~" are one character; "%2f" and "%2F" one octet (not a "/")."""
    raws = [tokens.create_token("360000", by=jx_admin)[1] for _ in range(4)]
    db.session.commit()
    first = submit(client, raws[0], node_document(endpoint="https://im.jx.example/%7eim/a%2fb"))
    assert first.status_code == 201
    assert applications.get(first.get_json()["application_id"]).endpoint == "https://im.jx.example/~im/a%2Fb"
    for raw, spelling in zip(raws[1:], ("https://im.jx.example/~im/a%2Fb", "https://im.jx.example/%7Eim/a%2fb",
                                        "https://im.jx.example/%7E%69m/a%2F%62"), strict=True):
        again = submit(client, raw, node_document(endpoint=spelling))
        assert again.status_code == 409 and again.get_json()["error"]["code"] == "endpoint_pending", spelling


def test_an_endpoint_refusal_names_no_node_and_no_application_to_the_token_holder(client, jx_admin, make_user):
    """§4: whether an id names a node, and the state of a node the table no longer lists (here a suspended one),
    are told only to that node; an endpoint is easy to guess, so its refusal names neither node nor application."""
    from app.admission import nodes

    raws = [tokens.create_token("360000", by=jx_admin)[1] for _ in range(3)]
    db.session.commit()
    application_id = submit(client, raws[0], node_document(endpoint="https://im.jx.example")).get_json()[
        "application_id"]
    pending = submit(client, raws[1], node_document(endpoint="https://im.jx.example")).get_json()["error"]
    assert (pending["code"], pending["field"]) == ("endpoint_pending", "endpoint")
    assert "https://im.jx.example" in pending["message"] and application_id not in pending["message"]
    minister = make_user("minister")
    node = applications.approve(applications.get(application_id), by=minister)
    nodes.suspend(node, "maintenance", by=minister)
    db.session.commit()
    taken = submit(client, raws[2], node_document(endpoint="https://im.jx.example")).get_json()["error"]
    assert (taken["code"], taken["field"]) == ("endpoint_in_use", "endpoint")
    assert "https://im.jx.example" in taken["message"] and node.node_id not in taken["message"]
    assert application_id not in taken["message"]


def test_cli_tokens_create_prints_the_token_once(runner, jx_admin):
    import json

    result = runner.invoke(args=["tokens", "create", "--division", "360000", "--user", "jx-admin", "--ttl", "2d",
                                 "--json"])
    assert result.exit_code == 0, result.output
    item = json.loads(result.output)
    assert item["token"].startswith(item["prefix"]) and item["state"] == "active"
    listing = runner.invoke(args=["tokens", "list", "--user", "jx-admin", "--json"]).output
    assert item["token"] not in listing and item["prefix"] in listing
    outside = runner.invoke(args=["tokens", "create", "--division", "440000", "--user", "jx-admin"])
    assert outside.exit_code == 1 and "outside your scope" in outside.output


# "٣h", "３h": \d matches any Unicode digit and int() reads it, so `--ttl ٣h` issued a token for 3 hours.
@pytest.mark.parametrize("ttl", ["0d", "1y", "91d", "2m", "٣h", "３h", "1\u0663h"])
def test_bad_token_lifetimes(ttl):
    from app.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        tokens.parse_ttl(ttl)


def test_one_key_is_never_in_two_applications_or_certified_for_two_nodes(client, jx_admin, make_user):
    from app.pki import service as pki

    raws = [tokens.create_token("360000", by=jx_admin)[1] for _ in range(3)]
    db.session.commit()
    shared = make_csr()
    first = submit(client, raws[0], node_document(csr=shared))
    assert first.status_code == 201
    again = submit(client, raws[1], node_document(csr=shared))
    error = again.get_json()["error"]
    assert (again.status_code, error["code"], error["field"]) == (409, "key_pending", "csr")
    # docs/protocol.md §4: a token holder is told neither the other application nor the node (as for endpoints)
    assert error["message"] == ("Another application with this CSR's key is already waiting for review: every "
                                "node needs its own key. Generate a new key and CSR.")
    node = applications.approve(applications.get(first.get_json()["application_id"]), by=make_user("minister"))
    db.session.commit()
    certified = submit(client, raws[1], node_document(csr=shared))
    error = certified.get_json()["error"]
    assert (certified.status_code, error["code"], error["field"]) == (409, "key_in_use", "csr")
    assert error["message"] == ("This CSR's key is already certified for another node: every node needs its own "
                                "key. Generate a new key and CSR.")
    assert node.node_id not in error["message"] and pki.current_certificate(node.node_id).serial not in \
        error["message"]
    assert submit(client, raws[1], node_document()).status_code == 201  # the token was not used up


def test_an_auditor_issues_and_revokes_no_token_through_any_door(runner, jx_admin, make_user):
    """Auditors read; the console refuses them the token page, and `flask tokens create|revoke --user AUDITOR`,
    its twin, must refuse them too (the rule in the service, not only in the console's decorator)."""
    import json

    from app.admission.models import EnrollmentToken

    make_user("auditor1", "auditor")
    created = runner.invoke(args=["tokens", "create", "--division", "360000", "--user", "auditor1", "--json"])
    assert created.exit_code == 1 and json.loads(created.output)["error"]["code"] == "role_forbidden", created.output
    token, _ = tokens.create_token("360000", by=jx_admin)
    db.session.commit()
    revoked = runner.invoke(args=["tokens", "revoke", str(token.id), "--user", "auditor1", "--json"])
    assert revoked.exit_code == 1 and json.loads(revoked.output)["error"]["code"] == "role_forbidden", revoked.output
    db.session.expire_all()
    assert db.session.get(EnrollmentToken, token.id).state() == "active"
    assert db.session.scalar(db.select(db.func.count()).select_from(EnrollmentToken)) == 1


def test_the_api_answers_one_error_object_the_first_refusal_as_before(client, token):
    """The console shows every field's refusal at once; the API keeps SPEC's one error object, and the one it
    names is the first in the parser's order (the phone before the e-mail before the organisation)."""
    document = node_document(org_name="", endpoint="http://im.jx.example", capabilities=[],
                             contact={"name": "张三", "phone": "abc", "email": "not-an-email"})
    response = submit(client, token, document)
    assert response.status_code == 400
    assert response.get_json() == {"error": {"code": "invalid_input", "field": "contact.phone",
                                             "message": response.get_json()["error"]["message"]}}


def test_an_application_reads_its_csr_once(client, token, monkeypatch):
    """The service checked the CSR's policy, then parsed it again for its key's fingerprint."""
    from tests.factories import count_csr_reads

    reads = count_csr_reads(monkeypatch)
    assert submit(client, token, node_document("360100")).status_code == 201
    assert reads == {"load_csr": 1, "check_csr": 1}


@pytest.mark.parametrize(("overrides", "status", "code"), [
    ({"division_code": "440300", "csr": "not a csr"}, 403, "out_of_scope"),  # the token's scope before the CSR
    ({"division_code": "449999"}, 400, "unknown_division_code"),  # a field's refusal before the token's scope
])
def test_the_api_names_the_token_scope_after_the_fields_and_before_the_csr(client, token, overrides, status, code):
    response = submit(client, token, node_document(**overrides))
    assert (response.status_code, response.get_json()["error"]["code"]) == (status, code), response.get_json()


@pytest.mark.parametrize(("base", "endpoint"), [
    ("https://registry.mps.example", "https://registry.mps.example:8443/im"),
    ("https://registry.mps.example/", "https://REGISTRY.mps.example./"),
    ("https://10.9.0.1:8443", "https://10.9.0.1"),
    ("https://[2001:db8::a]", "https://[2001:db8:0::a]:9443"),
    ("https://registry.公安.example", "https://registry.xn--55q79v.example:8443"),  # the certificate's A-labels
])
def test_an_endpoint_on_the_management_nodes_own_host_is_refused(app, client, token, base, endpoint):
    """A node admitted at the management node's own host got a certificate naming that host, as the management
    node's TLS certificate does: a client that trusts the root and checks the host name (the reference node's
    registry client) would take that node for the management node, and hand it enrollment and session tokens. On
    a loopback host (one machine: development, tests) it is allowed; taking it needs the machine anyway."""
    app.config["MPIM_BASE_URL"] = base
    response = submit(client, token, node_document(endpoint=endpoint))
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error["field"]) == (409, "endpoint_is_management_node", "endpoint")
    assert "management node" in error["message"]
    assert db.session.scalar(select(EnrollmentToken)).state() == "active"


def test_an_endpoint_on_a_loopback_management_host_is_taken(app, client, token):
    app.config["MPIM_BASE_URL"] = "http://127.0.0.1:5000"
    assert submit(client, token, node_document(endpoint="https://127.0.0.1:8443")).status_code == 201
