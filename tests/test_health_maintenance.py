"""A maintenance window set while a health round is applied (PostgreSQL, where the two really run at once).

SQLite needs none of this: a round holds the database's write lock from before it reads the nodes' health to its
commit (`serialise`), so an admin's window is written wholly before the round's read or wholly after its write."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, text

from app.admission.models import Node
from app.auth.models import User
from app.database import utcnow
from app.extensions import db
from app.health import maintenance, service
from app.health.models import HealthHourly, NodeHealth
from tests.test_admission_concurrency import joined
from tests.test_admission_review import admit
from tests.test_health_state import Result


@pytest.fixture
def node(app, make_user):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("a round and an admin at once: PostgreSQL (a SQLite round holds the only write lock throughout)")
    return admit(make_user("jx-admin", "provincial_admin", ("360000",)), make_user("minister"))


class Worker(threading.Thread):
    """`work` in an app context of its own, then a commit; the PostgreSQL session it runs in is `pid`."""

    def __init__(self, app, work) -> None:
        super().__init__(daemon=True)
        self.app, self.work = app, work
        self.pid: int | None = None
        self.started_session = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        with self.app.app_context():
            try:
                self.pid = db.session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
                self.started_session.set()
                self.work()
                db.session.commit()
            except BaseException as error:  # reported by the test, with the thread's own traceback
                self.errors.append(error)
            finally:
                self.started_session.set()
                db.session.remove()


def waits_on_a_lock(worker: Worker, timeout: float = 120) -> bool:
    """Until `worker`'s own session waits on a lock (True) or the worker ends (False). Its session, not any: a
    lock wait elsewhere in the database says nothing of where the worker is. Each look in a transaction of its
    own (`wait_for_a_lock_wait`)."""
    assert worker.started_session.wait(timeout), "the worker never opened its session"
    deadline = time.monotonic() + timeout
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
        while worker.is_alive():
            if watcher.scalar(text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
                              {"pid": worker.pid}):
                return True
            state = watcher.execute(text("SELECT state, wait_event_type, wait_event, left(query, 120)"
                                         " FROM pg_stat_activity WHERE pid = :pid"), {"pid": worker.pid}).first()
            assert time.monotonic() < deadline, f"the worker neither waited on a lock nor ended: {state}"
            time.sleep(0.02)
    return False


class HeldAfterReadingHealth:
    """Holds `worker` just after its round read the nodes' health rows, inside its transaction, until `release`.
    The pause is at the database driver's boundary (after the SELECT of node_health ran): the round's own code
    runs unchanged."""

    def __init__(self, worker: Worker) -> None:
        self.worker, self.reached, self.go = worker, threading.Event(), threading.Event()

    def _after(self, _connection, _cursor, statement, *_args) -> None:
        if (threading.current_thread() is self.worker and not self.reached.is_set()
                and statement.lstrip().startswith("SELECT") and "FROM node_health" in statement):
            self.reached.set()
            self.go.wait(120)

    def __enter__(self):
        event.listen(db.engine, "after_cursor_execute", self._after)
        return self

    def release(self) -> None:
        self.go.set()

    def __exit__(self, *_exc) -> None:
        self.go.set()
        event.remove(db.engine, "after_cursor_execute", self._after)


def hourly_polls(node_id: str) -> int:
    """The node's polls counted toward its availability: none taken inside a maintenance window."""
    return db.session.scalar(select(func.coalesce(func.sum(HealthHourly.polls), 0))
                             .where(HealthHourly.node_id == node_id))


def prepare(node_id: str, history: str, minister) -> int:
    """The node's health before the race: none yet ("first round"), or up with a window an admin ended early
    ("window ended early"). The count of its polls so far."""
    if history == "window ended early":
        for _ in range(2):
            service.apply_round([Result(node_id, True)])
        maintenance.set_maintenance(node_id, utcnow() + timedelta(hours=1), "upgrade", by=minister)
        db.session.commit()
        maintenance.clear_maintenance(node_id, by=minister)
        db.session.commit()
        return 2
    return 0


def window_of_four_hours(app, node_id: str, minister_id: int) -> Worker:
    """The console's (and the CLI's) door: `schedule_maintenance`, then commit, as the view does."""
    def work() -> None:
        maintenance.schedule_maintenance(db.session.get(Node, node_id), "4", "second upgrade",
                                     by=db.session.get(User, minister_id))
    return Worker(app, work)


@pytest.mark.parametrize("history", ["first round", "window ended early"])
def test_a_window_set_while_a_round_is_applied_is_saved_after_it_and_stands(app, node, make_user, history):
    """The round had read the node's health (no window, or one that had ended) when an admin set a window. The
    admin's window took no lock of the round's, so it was committed first; the round then wrote the window's end
    over it ("window ended early": the new window was gone), or inserted a health row the admin had just inserted
    ("first round": IntegrityError on pk_node_health, the whole round lost). The admin now waits for the round
    (`serialise("health.round")`), and writes its window after the round's write."""
    node_id = node.node_id
    minister = db.session.scalar(select(User).where(User.username == "minister"))
    polls = prepare(node_id, history, minister)
    round_ = Worker(app, lambda: service.apply_round([Result(node_id, True)]))
    admin = window_of_four_hours(app, node_id, minister.id)
    with HeldAfterReadingHealth(round_) as held:
        round_.start()
        assert held.reached.wait(120), round_.errors
        admin.start()
        waits_on_a_lock(admin)  # the admin waits for the round (without the fix: commits at once, and ends)
        held.release()
        joined([round_, admin])
    assert not round_.errors and not admin.errors, (round_.errors, admin.errors)
    db.session.expire_all()
    health = db.session.get(NodeHealth, node_id)
    assert health.maintenance_until > utcnow() + timedelta(hours=3.9) and health.maintenance_note == "second upgrade"
    assert health.consecutive_successes == polls + 1  # and the round's poll is in, counted outside the window
    assert hourly_polls(node_id) == polls + 1


@pytest.mark.parametrize("history", ["first round", "window ended early"])
def test_a_round_applied_while_a_window_is_saved_waits_and_applies_its_poll_inside_it(app, node, make_user,
                                                                                     history):
    """The admin's window is written, not committed yet, when a round starts. The round read the health rows
    before that commit, then waited on the admin's row: it inserted a row the admin had inserted ("first round":
    IntegrityError, the round lost), or wrote the end of the window it had read as ended over the new one
    ("window ended early"). The round now waits for the admin before it reads (`serialise("health.round")`), and
    applies its poll inside the window, which stands."""
    node_id = node.node_id
    minister = db.session.scalar(select(User).where(User.username == "minister"))
    polls = prepare(node_id, history, minister)
    until = utcnow() + timedelta(hours=2)
    maintenance.set_maintenance(node_id, until, "upgrade", by=minister)
    db.session.flush()  # the admin's window, not committed yet
    round_ = Worker(app, lambda: service.apply_round([Result(node_id, True)]))
    round_.start()
    try:
        assert waits_on_a_lock(round_), round_.errors  # the round waits for the admin's transaction
    finally:
        db.session.commit()  # the admin's, in any case: a round left waiting on it would outlive the test
    joined([round_])
    assert not round_.errors, round_.errors
    db.session.expire_all()
    health = db.session.get(NodeHealth, node_id)
    assert (health.maintenance_until, health.maintenance_note) == (until, "upgrade")
    assert health.consecutive_successes == polls + 1  # the round's poll is in,
    assert hourly_polls(node_id) == polls  # inside the window: not counted toward availability
