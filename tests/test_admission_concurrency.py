"""Concurrent approvals in one division never share a node id (real PostgreSQL row locks)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from app.admission import applications
from app.admission.information import parse
from app.admission.models import Node
from app.auth.models import User
from app.extensions import db
from tests.factories import node_document

APPROVALS = 24


def test_parallel_approvals_get_distinct_consecutive_ids(app, make_user):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("concurrency is proven on PostgreSQL (CI's second run); SQLite serialises every writer")
    minister = make_user("minister")
    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    ids = []
    for _ in range(APPROVALS):
        document = node_document("360000")
        ids.append(applications.submit_by_user(parse(document), document["csr"], by=jx_admin).id)
    db.session.commit()
    minister_id = minister.id  # read here: the main thread's objects must not be touched by the others

    barrier = threading.Barrier(APPROVALS)
    errors: list[BaseException] = []

    def approve(application_id: str) -> None:
        with app.app_context():
            try:
                barrier.wait()
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
    for thread in threads:
        thread.join()
    assert not errors, errors
    node_ids = sorted(db.session.scalars(select(Node.node_id)))
    assert node_ids == [f"36000000002025{serial:06d}" for serial in range(1, APPROVALS + 1)]
