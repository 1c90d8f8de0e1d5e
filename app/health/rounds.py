"""One polling round: every active node, through the poller, into the damped state."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import select

from app.admission.models import Node
from app.extensions import db
from app.health import service


def targets() -> list:
    from app.health import poller
    from app.pki import service as pki
    fingerprints, revoked = pki.current_fingerprints(), pki.revoked_fingerprints()
    rows = db.session.execute(select(Node.node_id, Node.endpoint).where(Node.status == "active")
                              .order_by(Node.node_id)).all()
    return [poller.PollTarget(node_id, endpoint, fingerprints.get(node_id), revoked.get(node_id, frozenset()))
            for node_id, endpoint in rows]


def run_round(*, spread: bool) -> service.RoundReport:
    """Poll every active node (spread over the interval for the scheduler, at once for the CLI)."""
    from app.health import poller
    from app.pki import own_keys
    config = current_app.config
    polled = targets()
    context = own_keys.management_client_ssl_context()
    # Nothing is held while the round polls: a transaction left open ("idle in transaction") kept its locks on
    # nodes and certificates for the whole polling time, so DDL waited behind every round, and PostgreSQL's
    # idle_in_transaction_session_timeout, shorter than the polls, ended every round.
    db.session.rollback()
    if spread:
        results = poller.run(poller.poll_spread(polled, config["MPIM_HEALTH_INTERVAL"], ssl_context=context,
                                                 timeout=config["MPIM_HEALTH_TIMEOUT"],
                                                 concurrency=config["MPIM_HEALTH_CONCURRENCY"]))
    else:
        results = poller.poll_once(polled, ssl_context=context, timeout=config["MPIM_HEALTH_TIMEOUT"],
                                   concurrency=config["MPIM_HEALTH_CONCURRENCY"])
    db.session.rollback()  # the round may have taken a while: start the write from fresh state
    return service.apply_round(results)


def poll_job() -> str:
    """Scheduler job. Before `flask ca init` nothing can have been admitted, and there is no certificate to poll
    with: "no CA", as the other jobs needing the CA answer. A registry whose CA files are missing (the database
    holds its CRL) fails on: its nodes go unpolled."""
    from app.pki import service as pki
    if not pki.is_ready() and not pki.database_holds_ca():
        return "no CA"
    return run_round(spread=True).summary()
