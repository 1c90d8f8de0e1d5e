"""The CRL as served (SPEC §4 `/ca/crl.crl`, `/ca/crl.pem`; docs/protocol.md §4): a strong ETag and Last-Modified
on every answer, and a conditional GET for the CRL the caller holds answered 304 without it. Over real HTTP on
127.0.0.1."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from datetime import timedelta
from email.message import Message
from email.utils import format_datetime, parsedate_to_datetime

import pytest
from cryptography import x509

from app.extensions import db
from app.pki import revocation
from app.pki import service as pki
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)

CRL_PATHS = ["/ca/crl.crl", "/ca/crl.pem", "/ca/root-crl.crl", "/ca/root-crl.pem"]


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:  # a 304 too
        return error.code, error.headers, error.read()


def served_state(path: str):
    return revocation.current_crl(revocation.ROOT_CRL if "root-" in path else revocation.INTERMEDIATE_CRL)


def directives(cache_control: str) -> set[str]:
    return {part.strip() for part in cache_control.split(",")}


@pytest.mark.parametrize("path", CRL_PATHS)
def test_a_crl_is_served_with_a_strong_etag_of_its_number_and_bytes_and_its_this_update(live_server, path):
    status, headers, body = fetch(live_server + path)
    state = served_state(path)
    assert status == 200
    assert headers["ETag"] == f'"{state.crl_number}-{hashlib.sha256(body).hexdigest()}"'  # strong: no W/
    loaded = x509.load_pem_x509_crl(body) if path.endswith(".pem") else x509.load_der_x509_crl(body)
    assert parsedate_to_datetime(headers["Last-Modified"]) == state.this_update == loaded.last_update_utc
    assert directives(headers["Cache-Control"]) == {"public", "no-cache"}


@pytest.mark.parametrize("path", CRL_PATHS)
def test_a_conditional_get_for_the_crl_held_is_a_304_without_a_body(live_server, path):
    _, first, served = fetch(live_server + path)
    etag, this_update = first["ETag"], parsedate_to_datetime(first["Last-Modified"])
    for asked in ({"If-None-Match": etag}, {"If-None-Match": f'"1-stale", {etag}'}, {"If-None-Match": f"W/{etag}"},
                  {"If-None-Match": "*"}, {"If-Modified-Since": first["Last-Modified"]}):
        status, headers, body = fetch(live_server + path, asked)
        assert (status, body) == (304, b""), asked
        assert headers["ETag"] == etag and directives(headers["Cache-Control"]) == {"public", "no-cache"}
    earlier = format_datetime(this_update - timedelta(seconds=1), usegmt=True)
    for asked in ({"If-None-Match": '"1-stale"'}, {"If-None-Match": "not an entity tag"},
                  {"If-Modified-Since": earlier},
                  {"If-None-Match": '"1-stale"', "If-Modified-Since": first["Last-Modified"]}):  # RFC 9110 §13.2.2
        status, headers, body = fetch(live_server + path, asked)
        assert (status, body, headers["ETag"]) == (200, served, etag), asked


def test_a_revocation_regenerates_the_crl_under_a_new_etag(live_server, people):  # noqa: F811
    node, _ = admit_with_keys(people)
    _, before, _ = fetch(f"{live_server}/ca/crl.crl")
    certificate = pki.current_certificate(node.node_id)
    revocation.revoke(certificate, "key_compromise", by=people[0])
    db.session.commit()
    status, after, body = fetch(f"{live_server}/ca/crl.crl", {"If-None-Match": before["ETag"]})
    assert status == 200 and after["ETag"] != before["ETag"]
    assert x509.load_der_x509_crl(body).get_revoked_certificate_by_serial_number(int(certificate.serial, 16))
    assert fetch(f"{live_server}/ca/crl.crl", {"If-None-Match": after["ETag"]})[0] == 304
    _, pem_headers, _ = fetch(f"{live_server}/ca/crl.pem")
    assert pem_headers["ETag"] not in (before["ETag"], after["ETag"])  # another representation, another tag
