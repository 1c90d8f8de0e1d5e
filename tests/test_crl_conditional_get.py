"""The CRL as served (SPEC §4 `/ca/crl.crl`, `/ca/crl.pem`; docs/protocol.md §4): a strong ETag (no Last-Modified)
on every answer, a conditional GET for the CRL the caller holds answered 304 without it, and the reference node
asking with the ETag of the CRL it keeps. Over real HTTP on 127.0.0.1; the node's exchanges are counted on the
wire by the interposer it reaches the management node through."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.utils import format_datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from app.appnode.revocation_lists import REVOCATION_LIST_INTERVAL
from app.extensions import db
from app.pki import revocation
from app.pki import service as pki
from app.routing import service as routing
from app.routing.verification import RouteRejected
from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_appnode_signer_revocation import interposer  # noqa: F401 (fixture)
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
def test_a_crl_is_served_with_a_strong_etag_of_its_number_and_bytes_and_no_last_modified(live_server, path):
    """No Last-Modified: thisUpdate is in whole seconds, and two CRLs signed within one (a script revoking one
    node after another) had the same; a cache revalidating with If-Modified-Since kept the CRL without the
    second revocation (a review reproduced it)."""
    status, headers, body = fetch(live_server + path)
    state = served_state(path)
    assert status == 200
    assert headers["ETag"] == f'"{state.crl_number}-{hashlib.sha256(body).hexdigest()}"'  # strong: no W/
    assert "Last-Modified" not in headers
    assert directives(headers["Cache-Control"]) == {"public", "no-cache"}


@pytest.mark.parametrize("path", CRL_PATHS)
def test_a_conditional_get_for_the_crl_held_is_a_304_without_a_body(live_server, path):
    _, first, served = fetch(live_server + path)
    etag = first["ETag"]
    for asked in ({"If-None-Match": etag}, {"If-None-Match": f'"1-stale", {etag}'}, {"If-None-Match": f"W/{etag}"},
                  {"If-None-Match": "*"}):
        status, headers, body = fetch(live_server + path, asked)
        assert (status, body) == (304, b""), asked
        assert headers["ETag"] == etag and directives(headers["Cache-Control"]) == {"public", "no-cache"}
    now = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    for asked in ({"If-None-Match": '"1-stale"'}, {"If-None-Match": "not an entity tag"},
                  {"If-Modified-Since": now},  # a date says nothing of which CRL the asker holds
                  {"If-None-Match": '"1-stale"', "If-Modified-Since": now}):
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


def make_crl_due(served) -> None:
    """An hour on (REVOCATION_LIST_INTERVAL): the node asks for the CRL again at its next pull."""
    past = time.time() - REVOCATION_LIST_INTERVAL - 60
    os.utime(served.node.identity.crl_file, (past, past))


def crl_exchanges(interposer):  # noqa: F811
    return [exchange for exchange in interposer.exchanges if exchange.path == "/ca/crl.crl"]


def entity_tag_of(der: bytes) -> str:
    number = x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    return f'"{number}-{hashlib.sha256(der).hexdigest()}"'


def test_the_node_asks_with_the_etag_of_the_crl_it_keeps_and_a_304_costs_no_crl(network, interposer):  # noqa: F811
    a = network["a"]
    kept = a.node.identity.crl_file.read_bytes()
    revocation.regenerate_crl(actor="tests")  # one the node has not seen
    db.session.commit()
    der = revocation.current_crl().der
    a.node.registry.base_url = interposer.url
    make_crl_due(a)
    a.node.sync_routes()
    make_crl_due(a)
    a.node.sync_routes()
    first, second = crl_exchanges(interposer)
    assert (first.if_none_match, first.status, first.body_bytes) == (entity_tag_of(kept), 200, len(der))
    assert (second.if_none_match, second.status, second.body_bytes) == (entity_tag_of(der), 304, 0)
    assert a.node.identity.crl_file.read_bytes() == der
    a.node.sync_routes()  # the 304 counts as a fetch: not asked again within the hour
    assert len(crl_exchanges(interposer)) == 2


def lapse_the_crl_served() -> None:
    """What a management node whose scheduler stopped serves a week on: a CRL past its nextUpdate (signed by the
    real intermediate, numbered after the current one and listing what it lists, as its scheduler would have)."""
    state = revocation.current_crl()
    listed = x509.load_der_x509_crl(state.der)
    now = datetime.now(UTC).replace(microsecond=0)
    this_update, next_update = now - timedelta(days=8), now - timedelta(days=1)
    lapsed = pki.authority().build_crl([(entry.serial_number, entry.revocation_date_utc) for entry in listed],
                                       crl_number=state.crl_number + 1, this_update=this_update,
                                       next_update=next_update)
    state.crl_number, state.this_update, state.next_update = state.crl_number + 1, this_update, next_update
    state.pem, state.der = lapsed.public_bytes(Encoding.PEM).decode(), lapsed.public_bytes(Encoding.DER)
    db.session.commit()


def test_a_304_does_not_make_a_crl_past_its_next_update_current(network, interposer):  # noqa: F811
    """A 304 says the CRL held is the one served, nothing more: past its nextUpdate it stays unfit to check a new
    table's signer, the node keeps the table it holds, and it asks again at its next pull rather than in an hour."""
    a = network["a"]
    held = a.node.routes.version
    lapse_the_crl_served()
    routing.publish("drill", force=True)
    db.session.commit()
    a.node.registry.base_url = interposer.url
    make_crl_due(a)
    for _ in range(2):  # the lapsed CRL in full, then a 304 for it
        with pytest.raises(RouteRejected) as refused:
            a.node.sync_routes()
        assert refused.value.code == "revocation_unknown"
        assert a.node.routes.version == held
    assert [exchange.status for exchange in crl_exchanges(interposer)] == [200, 304]

    revocation.regenerate_crl(actor="scheduler")  # the scheduler runs again
    db.session.commit()
    assert a.node.sync_routes().version == routing.head().version
    assert [exchange.status for exchange in crl_exchanges(interposer)] == [200, 304, 200]


def node_status(node_dir, *json_flag: str) -> str:
    from click.testing import CliRunner

    from app.appnode.cli import cli

    result = CliRunner().invoke(cli, ["--data", str(node_dir), *json_flag, "status"])
    assert result.exit_code == 0, result.output
    return result.output


def test_status_shows_the_crl_the_node_holds_and_says_when_it_is_past_its_next_update(network, interposer):  # noqa: F811
    """`status` said nothing of the CRL, though a node refuses every new table while the one it holds is past its
    nextUpdate (`revocation_unknown`): the operator had to read tls/crl.crl with openssl to see why."""
    import json

    a = network["a"]
    held = x509.load_der_x509_crl(a.node.identity.crl_file.read_bytes())
    number = held.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    document = json.loads(node_status(a.dir, "--json"))
    assert document["crl"] == {"number": number, "this_update": held.last_update_utc.isoformat(),
                               "next_update": held.next_update_utc.isoformat(), "current": True}
    assert f"\nCRL #{number} of {held.last_update_utc:%Y-%m-%d %H:%M} UTC, next update " in node_status(a.dir)

    lapse_the_crl_served()
    routing.publish("drill", force=True)
    db.session.commit()
    a.node.registry.base_url = interposer.url
    make_crl_due(a)
    with pytest.raises(RouteRejected):
        a.node.sync_routes()
    assert json.loads(node_status(a.dir, "--json"))["crl"]["current"] is False
    assert "(past: new routing tables are refused until a newer one is fetched)" in node_status(a.dir)
