"""The root's CRL on the reference node (docs/protocol.md §4): fetched beside the intermediate's with the ETag of
the one kept, taken only when the root signed it, and a table whose signer chains through an intermediate it lists
is refused. Over real HTTP against a real management node; whoever holds the intermediate's key answers the node's
pulls in its place through the interposer.

The ministry's revocation of the intermediate is made with `flask ca revoke-intermediate`; the other root CRLs
here (empty, lapsed, signed by the wrong key) are signed by hand with the root key, served by the management node
as its root CRL."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from app.appnode.revocation_lists import REVOCATION_LIST_INTERVAL
from app.extensions import db
from app.pki import crl, revocation
from app.pki import service as pki
from app.pki.keys import signature_hash
from app.routing import document
from app.routing import service as routing
from app.routing.verification import RouteRejected
from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_appnode_signer_revocation import answer_with_forged_table, interposer  # noqa: F401 (fixture)
from tests.test_crl_conditional_get import entity_tag_of, node_status
from tests.test_sessions import people  # noqa: F401 (fixture)


def serve_root_crl(*, next_update: datetime | None = None, signing_key=None) -> bytes:
    """The next root CRL, empty, signed with the root key (or `signing_key`), and served by the management node as
    its own; its DER."""
    state = revocation.current_crl(revocation.ROOT_CRL)
    loaded = pki.authority()
    now = datetime.now(UTC).replace(microsecond=0)
    next_update = next_update or now + timedelta(days=365)
    this_update = min(now, next_update - timedelta(days=1))
    signed = crl.build_crl([], issuer=loaded.root_certificate, signing_key=signing_key or loaded.load_root_key(),
                           this_update=this_update, next_update=next_update, crl_number=state.crl_number + 1)
    state.crl_number, state.this_update, state.next_update = state.crl_number + 1, this_update, next_update
    state.pem, state.der = signed.public_bytes(Encoding.PEM).decode(), signed.public_bytes(Encoding.DER)
    db.session.commit()
    return state.der


def make_root_crl_due(served) -> None:
    """An hour on: the node asks for the root CRL again at its next pull."""
    kept = served.node.identity.dir / "root-crl.crl"
    if kept.exists():
        past = time.time() - REVOCATION_LIST_INTERVAL - 60
        os.utime(kept, (past, past))


def root_crl_exchanges(interposer):  # noqa: F811
    return [exchange for exchange in interposer.exchanges if exchange.path == "/ca/root-crl.crl"]


def minted_signer():
    """A route signer as whoever holds the intermediate's key makes one: the profile the node asks for."""
    from cryptography.hazmat.primitives.asymmetric import ec

    loaded = pki.authority()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "route signer")]))
                   .issuer_name(loaded.intermediate_certificate.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([document.ROUTE_SIGNER_USAGE]), critical=False)
                   .sign(loaded.intermediate_key.signer(), signature_hash(loaded.intermediate_key)))
    return key, certificate


def test_a_table_signed_through_an_intermediate_the_root_revoked_is_refused(network, interposer, runner):  # noqa: F811
    """The intermediate's key leaks and the ministry revokes it on the root's CRL (`flask ca revoke-intermediate`):
    a route signer its holder mints, and the table that signer signs, are refused, though the intermediate's own
    CRL does not list it."""
    a, b = network["a"], network["b"]
    intermediate = pki.authority().intermediate_certificate
    key, certificate = minted_signer()
    revoked = runner.invoke(args=["ca", "revoke-intermediate", "--reason", "key_compromise", "--yes"])
    assert revoked.exit_code == 0, revoked.output
    genuine = routing.head().version

    a.node.registry.base_url = interposer.url  # the minted signer's holder answers A's pulls
    answer_with_forged_table(interposer, key, certificate, version=genuine + 100, moved=b.id)
    with pytest.raises(RouteRejected) as refused:
        a.node.sync_routes()
    assert refused.value.code == "intermediate_revoked"
    assert format(intermediate.serial_number, "x") in refused.value.message
    assert a.node.routes.peek(b.id) is None or a.node.routes.peek(b.id)["endpoint"] == b.node.config.endpoint

    a.node.registry.base_url = interposer.upstream  # and the management node's own next table, signed the same way
    routing.publish("drill", force=True)
    db.session.commit()
    with pytest.raises(RouteRejected) as refused:
        a.node.sync_routes()
    assert refused.value.code == "intermediate_revoked"
    shown = json.loads(node_status(a.dir, "--json"))["root_crl"]
    assert shown["intermediate_revoked"] is True
    assert "lists the intermediate this node trusts as revoked" in node_status(a.dir)


def test_a_root_crl_the_root_did_not_sign_is_not_kept(network, interposer, caplog):  # noqa: F811
    """The intermediate's key can sign a CRL in the root's name; the node keeps the root's own, and goes on."""
    a = network["a"]
    kept_file = a.node.identity.dir / "root-crl.crl"
    kept = kept_file.read_bytes()
    number = x509.load_der_x509_crl(kept).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    loaded = pki.authority()
    now = datetime.now(UTC).replace(microsecond=0)
    forged = crl.build_crl([], issuer=loaded.root_certificate, signing_key=loaded.intermediate_key,
                           this_update=now, next_update=now + timedelta(days=3650), crl_number=number + 50)
    a.node.registry.base_url = interposer.url
    interposer.answers["/ca/root-crl.crl"] = (200, {"Content-Type": "application/pkix-crl"},
                                              forged.public_bytes(Encoding.DER))
    make_root_crl_due(a)
    routing.publish("drill", force=True)
    db.session.commit()
    with caplog.at_level(logging.WARNING):
        assert a.node.sync_routes().version == routing.head().version
    assert kept_file.read_bytes() == kept
    assert "is not signed by the trust anchor" in caplog.text
    assert json.loads(node_status(a.dir, "--json"))["root_crl"]["number"] == number


def test_the_node_asks_for_the_root_crl_with_the_etag_it_keeps_and_a_304_costs_none(network, interposer):  # noqa: F811
    a = network["a"]
    kept = (a.node.identity.dir / "root-crl.crl").read_bytes()
    der = serve_root_crl()  # one the node has not seen
    a.node.registry.base_url = interposer.url
    make_root_crl_due(a)
    a.node.sync_routes()
    make_root_crl_due(a)
    a.node.sync_routes()
    first, second = root_crl_exchanges(interposer)
    assert (first.if_none_match, first.status, first.body_bytes) == (entity_tag_of(kept), 200, len(der))
    assert (second.if_none_match, second.status, second.body_bytes) == (entity_tag_of(der), 304, 0)
    assert (a.node.identity.dir / "root-crl.crl").read_bytes() == der
    a.node.sync_routes()  # the 304 counts as a fetch: not asked again within the hour
    assert len(root_crl_exchanges(interposer)) == 2


def test_a_lapsed_or_missing_root_crl_refuses_no_table_and_status_warns(network, interposer):  # noqa: F811
    """An offline root signs its CRL when someone brings the key back (`flask ca root-crl --root-key`), and the
    management node's scheduler cannot: a lapsed root CRL is what such a network serves, and must not stop it."""
    a = network["a"]
    kept = x509.load_der_x509_crl((a.node.identity.dir / "root-crl.crl").read_bytes())
    number = kept.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert json.loads(node_status(a.dir, "--json"))["root_crl"] == {
        "number": number, "this_update": kept.last_update_utc.isoformat(),
        "next_update": kept.next_update_utc.isoformat(), "current": True, "intermediate_revoked": False}
    assert f"\nroot CRL #{number} of {kept.last_update_utc:%Y-%m-%d %H:%M} UTC, next update " in node_status(a.dir)

    serve_root_crl(next_update=datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))
    routing.publish("drill", force=True)
    db.session.commit()
    make_root_crl_due(a)
    assert a.node.sync_routes().version == routing.head().version
    assert json.loads(node_status(a.dir, "--json"))["root_crl"]["current"] is False
    assert "(past: an intermediate revoked since may go unnoticed" in node_status(a.dir)

    (a.node.identity.dir / "root-crl.crl").unlink()
    a.node.reload_routes()
    a.node.registry.base_url = interposer.url
    interposer.answers["/ca/root-crl.crl"] = (503, {"Content-Type": "application/json", "Retry-After": "30"},
                                              b'{"error": {"code": "ca_unavailable", "message": "later"}}')
    routing.publish("drill", force=True)
    db.session.commit()
    assert a.node.sync_routes().version == routing.head().version
    assert json.loads(node_status(a.dir, "--json"))["root_crl"] is None
    assert "no root CRL held: an intermediate revoked by the root would go unnoticed" in node_status(a.dir)
