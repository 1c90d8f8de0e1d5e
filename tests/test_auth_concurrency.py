"""Sign-in guesses that arrive together: the throttle checks no more passwords than its limits allow, on both
databases. The lock was checked before the slow password hash and the failure counted after it, so every
guess of a burst passed the check (120 at once got 31 password checks with a limit of 5), and the counters,
read and written back, lost increments. And two ministry admins disabling each other together: one stays."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, text

from app.audit import service as audit
from app.audit.models import AuditRecord
from app.auth import service, throttle
from app.auth.models import LoginCheck, LoginThrottle, User
from app.database import utcnow
from app.errors import DomainError
from app.extensions import db
from tests.conftest import PASSWORD
from tests.test_admission_concurrency import joined

GUESSES = 16


def _guess_together(app, attempts: list[tuple[str, str, str]]) -> list[str]:
    """Each (username, password, address) signed in with from its own thread and session, all released at once;
    the outcome of each: "ok", or the refusal's code."""
    barrier = threading.Barrier(len(attempts))
    outcomes: list[str] = []

    def attempt(username: str, password: str, address: str) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=60)  # a thread that never gets here breaks it: no wait for good
                service.authenticate(username, password, address)
                outcomes.append("ok")
            except service.LoginRefused as refusal:
                outcomes.append(refusal.code)
            except BaseException as error:  # reported below, with the thread's own traceback
                outcomes.append(repr(error))
            finally:
                db.session.remove()

    threads = [threading.Thread(target=attempt, args=args) for args in attempts]
    for thread in threads:
        thread.start()
    joined(threads)
    return outcomes


def _count(action: str) -> int:
    return db.session.scalar(select(func.count()).where(AuditRecord.action == action))


def test_a_burst_of_guesses_at_one_account_checks_no_more_passwords_than_its_limit(app, make_user):
    """From as many addresses as guesses, so that only the account's limit applies."""
    make_user("victim")
    db.session.remove()
    outcomes = _guess_together(app, [("victim", f"Wrong-Guess-{i:03d}", f"10.0.0.{i + 1}") for i in range(GUESSES)])

    limit = app.config["MPIM_LOGIN_MAX_FAILURES"]
    assert sorted(outcomes) == sorted(["bad_credentials"] * (limit - 1) + ["locked"] * (GUESSES - limit + 1))
    assert _count("auth.login_failed") == limit  # one record per password checked
    # The guesses refused while locked: one record for the lock, the rest counted on it.
    assert _count("auth.login_blocked") == 1
    assert db.session.get(LoginThrottle, "user:victim").refused == GUESSES - limit
    assert service.is_locked("victim")
    assert audit.verify().ok


def test_a_burst_of_guesses_from_one_address_checks_no_more_passwords_than_its_limit(app, make_user):
    """At as many usernames as guesses (none of them an account), so that only the address's limit applies."""
    app.config["MPIM_LOGIN_MAX_ADDRESS_FAILURES"] = limit = 6
    make_user("carol")
    db.session.remove()
    outcomes = _guess_together(app, [(f"ghost{i}", "Wrong-Guess-1", "10.9.9.9") for i in range(GUESSES)])

    assert sorted(outcomes) == sorted(["bad_credentials"] * (limit - 1) + ["locked"] * (GUESSES - limit + 1))
    assert _count("auth.login_failed") == limit
    assert [address for address, _until in service.locked_addresses()] == ["10.9.9.9"]
    assert service.authenticate("carol", PASSWORD, "10.9.9.10").username == "carol"  # another address is let in


def test_the_right_password_in_a_burst_of_wrong_ones_signs_in_and_clears_the_count(app, make_user):
    """A correct sign-in still resets the account's count, whatever the guesses beside it did: it is counted
    like a guess until its password is checked, and the count it joined is cleared once it is right."""
    make_user("alice")
    db.session.remove()
    limit = app.config["MPIM_LOGIN_MAX_FAILURES"]
    outcomes = _guess_together(app, [("alice", PASSWORD, "10.0.1.1")] +
                               [("alice", f"Wrong-Guess-{i}", f"10.0.1.{i + 2}") for i in range(limit - 2)])

    assert sorted(outcomes) == sorted(["ok"] + ["bad_credentials"] * (limit - 2))
    assert not service.is_locked("alice")
    assert service.authenticate("alice", PASSWORD, "10.0.1.1").username == "alice"


def test_right_passwords_together_from_one_address_all_sign_in(app, make_user):
    """People behind one NAT or proxy signing in at once: their checks in flight are not failures, so more of
    them than the address's limit are let in, none refused as locked (each check counted as a failure until
    its hash was checked locked the address at the limit, and four of eight were refused)."""
    app.config["MPIM_LOGIN_MAX_ADDRESS_FAILURES"] = limit = 4
    people = 2 * limit
    for i in range(people):
        make_user(f"staff{i}")
    db.session.remove()
    outcomes = _guess_together(app, [(f"staff{i}", PASSWORD, "10.1.1.1") for i in range(people)])

    assert outcomes == ["ok"] * people
    assert _count("auth.login_blocked") == 0
    assert service.locked_addresses() == []


def test_right_passwords_together_at_one_account_all_sign_in(app, make_user):
    """One account signed in from several browsers at once, more of them than its limit: all are let in."""
    make_user("alice")
    db.session.remove()
    attempts = app.config["MPIM_LOGIN_MAX_FAILURES"] + 3
    outcomes = _guess_together(app, [("alice", PASSWORD, f"10.2.0.{i + 1}") for i in range(attempts)])

    assert outcomes == ["ok"] * attempts
    assert _count("auth.login_blocked") == 0
    assert not service.is_locked("alice")


def _checks_under_way(key: str, count: int, age: timedelta) -> None:
    """Checks another worker began `age` ago and has not ended (still hashing, or died mid-check)."""
    started = utcnow() - age
    db.session.add_all([LoginCheck(key=key, started_at=started) for _ in range(count)])
    db.session.commit()


def test_a_sign_in_finding_every_place_held_by_checks_under_way_is_refused_as_busy_not_locked(app, make_user, console,
                                                                                            monkeypatch):
    make_user("alice")
    _checks_under_way("user:alice", app.config["MPIM_LOGIN_MAX_FAILURES"], timedelta(seconds=1))
    monkeypatch.setattr(throttle, "BUSY_WAIT_SECONDS", 0.2)

    with pytest.raises(service.SignInsBusy) as refusal:
        service.authenticate("alice", PASSWORD, "10.3.0.1")
    assert refusal.value.code == "busy"
    response = console.login("alice")  # the console says so, in the reader's language
    assert response.status_code == 429 and "请稍后重试" in response.get_data(as_text=True)
    assert not service.is_locked("alice")
    assert db.session.get(LoginThrottle, "user:alice") is None  # not counted as a failure either
    assert _count("auth.login_blocked") == 0


def test_checks_left_by_a_worker_that_died_mid_check_give_their_places_back(app, make_user):
    make_user("alice")
    _checks_under_way("user:alice", app.config["MPIM_LOGIN_MAX_FAILURES"],
                      throttle.CHECK_LIFETIME + timedelta(seconds=1))

    assert service.authenticate("alice", PASSWORD, "10.3.0.1").username == "alice"
    assert db.session.scalar(select(func.count()).select_from(LoginCheck)) == 0


@pytest.mark.parametrize("door", ["sign_in", "password_change"])
def test_a_check_that_fails_part_way_gives_its_places_back_at_once(app, make_user, monkeypatch, door):
    """An error between taking a place and resolving it (here the password hash itself raising, as a database
    error in the user lookup would) gave the place back only when its 60 s lifetime ended: a few such errors
    held every place, and right passwords were refused as busy for a minute."""
    user = make_user("alice")

    def broken_hash(*_args):
        raise RuntimeError("the check broke part way")

    monkeypatch.setattr(service, "check_password_hash", broken_hash)
    for _ in range(app.config["MPIM_LOGIN_MAX_FAILURES"] + 1):
        with pytest.raises(RuntimeError):
            if door == "sign_in":
                service.authenticate("alice", PASSWORD, "10.3.0.1")
            else:
                service.change_own_password(user, PASSWORD, "An0ther-long-passphrase")
    assert db.session.scalar(select(func.count()).select_from(LoginCheck)) == 0
    monkeypatch.undo()
    monkeypatch.setattr(throttle, "BUSY_WAIT_SECONDS", 0.2)  # held places would make this wait, then refuse
    assert service.authenticate("alice", PASSWORD, "10.3.0.1").username == "alice"


# --- the last active ministry admin -------------------------------------------------------------------------


class PastTheirReads:
    """Holds each racer just after it read the active ministry admins, until every other racer has read them too
    (both then decide on what they read, before either writes) or waits on a lock this one holds (a serialised
    check: the other cannot read before this one commits, and holding this one would wait for good). The pause
    is at the database driver's boundary, so the service runs unchanged.

    Waiting on a lock: on PostgreSQL, what pg_stat_activity says of the racer's session; on SQLite, which has no
    such view, the racer being inside a statement that needs the database's write lock (BEGIN IMMEDIATE, a
    write): in WAL mode nothing else waits."""

    WRITE_LOCKING = ("BEGIN IMMEDIATE", "INSERT", "UPDATE", "DELETE")

    def __init__(self, racers: list[threading.Thread]) -> None:
        self.racers = racers
        self.read: set[threading.Thread] = set()
        self.inside: dict[threading.Thread, str] = {}  # the statement a racer is in, until it returns
        self.pids: dict[threading.Thread, int] = {}
        self.changed = threading.Condition()

    @staticmethod
    def is_the_read(statement: str) -> bool:
        return "FROM users" in statement and "WHERE users.role =" in statement

    def _before(self, connection, _cursor, statement, *_args) -> None:
        me = threading.current_thread()
        if me in self.racers:
            with self.changed:
                self.inside[me] = statement
                if connection.dialect.name == "postgresql":
                    self.pids[me] = connection.connection.driver_connection.info.backend_pid
                self.changed.notify_all()

    def _after(self, _connection, _cursor, statement, *_args) -> None:
        me = threading.current_thread()
        if me not in self.racers:
            return
        with self.changed:
            self.inside.pop(me, None)
            first_read = self.is_the_read(statement) and me not in self.read
            if first_read:
                self.read.add(me)
            self.changed.notify_all()
        if first_read:
            self._hold(me)

    def _hold(self, me: threading.Thread) -> None:
        others = [racer for racer in self.racers if racer is not me]
        deadline = time.monotonic() + 60  # a guard against waiting for good, not a measurement
        while not all(other in self.read or not other.is_alive() or self._waits_on_a_lock(other)
                      for other in others):
            assert time.monotonic() < deadline, f"the other racers neither read nor waited: {self.inside}"
            with self.changed:
                self.changed.wait(0.02)

    def _waits_on_a_lock(self, racer: threading.Thread) -> bool:
        with self.changed:
            statement, pid = self.inside.get(racer), self.pids.get(racer)
        if statement is None:
            return False
        if db.engine.dialect.name != "postgresql":
            return statement.lstrip().upper().startswith(self.WRITE_LOCKING)
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
            return bool(watcher.scalar(text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
                                       {"pid": pid}))

    def __enter__(self):
        event.listen(db.engine, "before_cursor_execute", self._before)
        event.listen(db.engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *_exc) -> None:
        event.remove(db.engine, "before_cursor_execute", self._before)
        event.remove(db.engine, "after_cursor_execute", self._after)


@pytest.mark.parametrize("change", ["disable", "demote"])
def test_two_ministry_admins_disabling_each_other_at_once_leave_one_active(app, make_user, change):
    """Each of two ministry admins disables (or demotes) the other, both having read that the other is not the
    last: both went ahead, and nobody was left to approve a node or make another admin."""
    ids = {name: make_user(name).id for name in ("minister-a", "minister-b")}
    db.session.remove()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def disable_the_other(me: str, other: str) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=60)  # a thread that never gets here breaks it: no wait for good
                target = db.session.get(User, ids[other])
                service.update_user(target, role="auditor" if change == "demote" else "ministry_admin", scopes=[],
                                    active=change == "demote", display_name=target.display_name,
                                    by=db.session.get(User, ids[me]))
                db.session.commit()
                outcomes.append("ok")
            except DomainError as refusal:
                db.session.rollback()
                outcomes.append(refusal.code)
            except BaseException as error:  # reported below, with the thread's own traceback
                outcomes.append(repr(error))
            finally:
                db.session.remove()

    threads = [threading.Thread(target=disable_the_other, args=("minister-a", "minister-b")),
               threading.Thread(target=disable_the_other, args=("minister-b", "minister-a"))]
    with PastTheirReads(threads):
        for thread in threads:
            thread.start()
        joined(threads)

    assert sorted(outcomes) == ["last_ministry_admin", "ok"]
    assert db.session.scalar(select(func.count()).select_from(User).where(
        User.role == "ministry_admin", User.active.is_(True))) == 1
    assert audit.verify().ok


class PastTheirUserReads(PastTheirReads):
    """As PastTheirReads, holding each racer after its first read of one user's row instead: both racers have
    read the account as it was before either edits it."""

    @staticmethod
    def is_the_read(statement: str) -> bool:
        return "FROM users" in statement and "WHERE users.id =" in statement


def test_two_edits_of_one_user_at_once_audit_what_each_found(app, make_user):
    """Each edit's audit record says what the account was before it: the second's "before" is the first's
    "after". Both read the account, then both wrote: the second record's "before" was the account as both had
    read it, and the first edit's change never appeared in any record as replaced."""
    target_id = make_user("jx-admin", role="provincial_admin", scopes=("360000",)).id
    db.session.remove()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def rename(display_name: str) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=60)  # a thread that never gets here breaks it: no wait for good
                target = db.session.get(User, target_id)
                service.update_user(target, role="provincial_admin", scopes=["360000"], active=True,
                                    display_name=display_name)
                db.session.commit()
                outcomes.append("ok")
            except BaseException as error:  # reported below, with the thread's own traceback
                outcomes.append(repr(error))
            finally:
                db.session.remove()

    threads = [threading.Thread(target=rename, args=(name,)) for name in ("Jiangxi one", "Jiangxi two")]
    with PastTheirUserReads(threads):
        for thread in threads:
            thread.start()
        joined(threads)

    assert outcomes == ["ok", "ok"]
    first, second = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "user.update")
                                       .order_by(AuditRecord.seq))
    assert first.detail["before"]["display_name"] == ""
    assert second.detail["before"] == first.detail["after"]
    assert db.session.get(User, target_id).display_name == second.detail["after"]["display_name"]
    assert audit.verify().ok


def test_two_cli_edits_of_one_user_at_once_each_change_only_what_it_names(app, make_user):
    """`flask users update` keeps what it is not given: a rename and a role change of one account at once both
    stay. Each filled in the fields it was not given from its own first read, so the second wrote the first's
    field back as it was."""
    target_id = make_user("jx-admin", role="provincial_admin", scopes=("360000",)).id
    db.session.remove()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def update(*options: str) -> None:
        try:
            barrier.wait(timeout=60)
            result = app.test_cli_runner().invoke(args=["users", "update", "jx-admin", *options])
            outcomes.append("ok" if result.exit_code == 0 else result.output)
        except BaseException as error:
            outcomes.append(repr(error))

    threads = [threading.Thread(target=update, args=("--name", "Jiangxi one")),
               threading.Thread(target=update, args=("--role", "auditor"))]
    with PastTheirUserReads(threads):
        for thread in threads:
            thread.start()
        joined(threads)

    assert outcomes == ["ok", "ok"]
    target = db.session.get(User, target_id)
    assert (target.display_name, target.role, target.scopes) == ("Jiangxi one", "auditor", [])
    assert audit.verify().ok
