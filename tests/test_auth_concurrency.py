"""Sign-in guesses that arrive together: the throttle checks no more passwords than its limits allow, on both
databases. The lock was checked before the slow password hash and the failure counted after it, so every
guess of a burst passed the check (120 at once got 31 password checks with a limit of 5), and the counters,
read and written back, lost increments."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from app.audit import service as audit
from app.audit.models import AuditRecord
from app.auth import service
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
    assert _count("auth.login_blocked") == GUESSES - limit
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
