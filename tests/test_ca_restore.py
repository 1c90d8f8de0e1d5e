"""After restoring a database from before a revocation, the next CRL's number goes above those nodes hold
(operations: Backup)."""

from __future__ import annotations

import json

import pytest
from cryptography import x509
from sqlalchemy import update

from app.extensions import db
from app.pki import revocation
from app.pki.models import Certificate, CRLState
from app.routing.client import RouteClient


def test_after_a_restore_the_crl_goes_on_above_the_number_nodes_hold(app, client, runner, make_user):
    """A restored database numbers its next CRL from where the backup stood: a node holding the later CRL (its
    revocation included) took the new one, though it lacks the revocation, as not older. `--above N` skips the
    numbers nodes may hold."""
    make_user("minister")
    root, chain = client.get("/ca/ca.pem").data, client.get("/ca/chain.pem").data
    node = RouteClient(root, intermediates=chain)
    backup_number = revocation.current_crl().crl_number  # the backup is taken here
    signer = db.session.scalars(db.select(Certificate).where(Certificate.kind == "route_signer")).one()
    assert runner.invoke(args=["ca", "revoke", signer.serial, "--reason", "key_compromise",
                               "--user", "minister"]).exit_code == 0
    db.session.expire_all()
    held = revocation.current_crl().crl_number
    assert node.use_revocation_list(client.get("/ca/crl.crl").data) and held > backup_number

    # The restore: the revocation and the CRLs since are gone.
    db.session.execute(update(Certificate).where(Certificate.serial == signer.serial)
                       .values(revoked_at=None, revocation_reason=None))
    db.session.execute(update(CRLState).where(CRLState.id == revocation.INTERMEDIATE_CRL)
                       .values(crl_number=backup_number))
    db.session.commit()

    result = runner.invoke(args=["ca", "crl", "--regenerate", "--above", str(held), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["crl_number"] == held + 1
    db.session.expire_all()
    assert revocation.current_crl().crl_number == held + 1
    # The node takes it (no revocation was re-done here: the operator re-revokes, then issues it).
    assert node.use_revocation_list(client.get("/ca/crl.crl").data)


def test_above_below_the_current_number_keeps_counting_on(app, runner):
    current = revocation.current_crl().crl_number
    assert runner.invoke(args=["ca", "crl", "--regenerate"]).exit_code == 0
    db.session.expire_all()
    assert revocation.current_crl().crl_number == current + 1  # without --above: the next number
    assert runner.invoke(args=["ca", "crl", "--regenerate", "--above", "1"]).exit_code == 0
    db.session.expire_all()
    assert revocation.current_crl().crl_number == current + 2


@pytest.mark.parametrize("value", ["x", "-1", "0", "１２", "2146483648", str(2**31)])  # HIGHEST_ABOVE + 1
def test_above_refuses_what_is_no_number_or_out_of_range(app, runner, value):
    before = revocation.current_crl().crl_number
    result = runner.invoke(args=["ca", "crl", "--regenerate", "--above", value, "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "usage_error" and "'--above'" in error["message"]
    assert "is not a whole number" in error["message"] or "is not in the range 1 to" in error["message"]
    db.session.expire_all()
    assert revocation.current_crl().crl_number == before


def test_above_needs_regenerate(app, runner):
    result = runner.invoke(args=["ca", "crl", "--above", "5"])
    assert result.exit_code == 2 and "--regenerate" in result.output


def test_the_service_refuses_above_out_of_range(app):
    from app.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as refused:
        revocation.regenerate_crl(actor="tests", above=2**31 - 1_000_000)
    assert refused.value.code == "invalid_above"


def test_a_root_crl_goes_on_above_the_number_nodes_hold(app, client, runner):
    """Nodes keep the root's CRL too and take none numbered below the one they hold: re-signing it once after a
    restore was not enough when several were signed since the backup."""
    root, chain = client.get("/ca/ca.pem").data, client.get("/ca/chain.pem").data
    node = RouteClient(root, intermediates=chain)
    backup_number = revocation.current_crl(revocation.ROOT_CRL).crl_number
    for _ in range(3):
        assert runner.invoke(args=["ca", "root-crl"]).exit_code == 0
    assert node.use_revocation_list(client.get("/ca/root-crl.crl").data, of_root=True)
    db.session.expire_all()
    held = revocation.current_crl(revocation.ROOT_CRL).crl_number
    db.session.execute(update(CRLState).where(CRLState.id == revocation.ROOT_CRL).values(crl_number=backup_number))
    db.session.commit()

    result = runner.invoke(args=["ca", "root-crl", "--above", str(held), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["crl_number"] == held + 1
    assert node.use_revocation_list(client.get("/ca/root-crl.crl").data, of_root=True)
    refused = runner.invoke(args=["ca", "root-crl", "--above", "0", "--json"])
    assert refused.exit_code == 2 and json.loads(refused.stderr)["error"]["code"] == "usage_error"


def test_after_a_restore_from_before_the_intermediates_revocation_it_is_revoked_again_above(app, client, runner):
    """The restored database forgot the intermediate's revocation: a root CRL signed `--above` what nodes hold
    listed nothing, and nodes took it, trusting the leaked intermediate again. Revoking it again signed a CRL
    numbered below theirs, which they refused."""
    from app.pki.models import RevokedIntermediate

    root, chain = client.get("/ca/ca.pem").data, client.get("/ca/chain.pem").data
    node = RouteClient(root, intermediates=chain)
    backup_number = revocation.current_crl(revocation.ROOT_CRL).crl_number
    revoke = ["ca", "revoke-intermediate", "--reason", "key_compromise", "--yes", "--json"]
    assert runner.invoke(args=revoke).exit_code == 0
    assert node.use_revocation_list(client.get("/ca/root-crl.crl").data, of_root=True)
    db.session.expire_all()
    held = revocation.current_crl(revocation.ROOT_CRL).crl_number
    db.session.execute(db.delete(RevokedIntermediate))  # the restore
    db.session.execute(update(CRLState).where(CRLState.id == revocation.ROOT_CRL).values(crl_number=backup_number))
    db.session.commit()

    result = runner.invoke(args=[*revoke, "--above", str(held)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["root_crl"]["crl_number"] == held + 1
    assert node.use_revocation_list(client.get("/ca/root-crl.crl").data, of_root=True)
    listed = x509.load_der_x509_crl(client.get("/ca/root-crl.crl").data)
    assert len(list(listed)) == 1
