"""The console's sign-in throttle: how many password checks an account or an address may have, confirmed
failures and checks under way together, and the locks they lead to. `service.authenticate` and
`service.change_own_password` take a place before the slow hash and give it back after (docs/operations.md)."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy import delete, func, select

from app.auth.models import LoginCheck, LoginThrottle
from app.database import serialise, utcnow
from app.errors import DomainError
from app.extensions import db

# A password check still under way after this long was left by a process that died mid-check: its place is
# given back. Far longer than a hash takes, and than a worker may run (gunicorn's timeout).
CHECK_LIFETIME = timedelta(seconds=60)
# How long a sign-in waits for a place while every place of its account or address is held by checks under
# way (a burst of sign-ins), and how often it looks; then it is refused as busy, not locked, and not counted.
BUSY_WAIT_SECONDS = 5.0
BUSY_POLL_SECONDS = 0.05


class LoginRefused(DomainError):
    code = "login_refused"
    status = 401


class SignInsBusy(LoginRefused):
    """Every place of the account or address stayed held by checks under way (`start_check`): try again."""

    code = "busy"
    status = 429


WITH_PORT = re.compile(r"\[(?P<v6>[^\]]+)\](?::[0-9]{1,5})?|(?P<v4>[0-9.]+):[0-9]{1,5}")


def without_port(remote_addr: str) -> str:
    """`remote_addr` without a port after it, and an IPv6 address without its brackets."""
    match = WITH_PORT.fullmatch(remote_addr)
    return (match["v6"] or match["v4"]) if match else remote_addr


def address_key(remote_addr: str) -> str:
    """The address counter a sign-in from `remote_addr` counts on: an IPv6 client by its /64 (one subscriber
    holds all of it, and counted address by address it never locked), an IPv4-mapped IPv6 address
    (::ffff:a.b.c.d, a dual-stack listener's view of an IPv4 client) as that IPv4 address, any other as given.
    A port a proxy wrote after the address in X-Forwarded-For (a.b.c.d:port, [v6]:port) is dropped: kept, it
    made each connection of one client a counter of its own, which never locked. Anything else unreadable counts
    as given. What follows "addr:" is what the users page and the CLI show, e.g. 2001:db8:1:1::/64."""
    try:
        address = ipaddress.ip_address(without_port(remote_addr))
    except ValueError:
        return f"addr:{remote_addr}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"addr:{address.ipv4_mapped}"
        if address.is_loopback:  # ::1 is this host, alone in its /64
            return f"addr:{address}"
        return f"addr:{ipaddress.IPv6Network((address.packed, 64), strict=False)}"
    return f"addr:{address}"


def throttle_row(key: str) -> LoginThrottle:
    row = db.session.get(LoginThrottle, key)
    if row is None:
        row = LoginThrottle(key=key, failures=0)
        db.session.add(row)
    return row


def locked(key: str) -> bool:
    row = db.session.get(LoginThrottle, key)
    return bool(row and row.locked_until and row.locked_until > utcnow())


def serialise_keys(*keys: str) -> None:
    """Queue behind every other request reading or writing these counters, until commit."""
    serialise(*(f"login_throttle:{key}" for key in keys))


def register_failure(key: str, limit: int) -> bool:
    """Count one confirmed failure; returns True when this failure locks the key."""
    now = utcnow()
    window = timedelta(minutes=current_app.config["MPIM_LOGIN_LOCK_MINUTES"])
    row = throttle_row(key)
    if row.locked_until and row.locked_until <= now:  # a lock that ran out takes its refusal count with it
        row.locked_until, row.refused = None, 0
    if row.first_failure_at is None or now - row.first_failure_at > window:
        row.failures, row.first_failure_at = 0, now
    row.failures += 1
    if row.failures >= limit:
        row.locked_until, row.failures, row.first_failure_at, row.refused = now + window, 0, None, 0
        return True
    return False


def count_refusal(keys) -> list[str]:
    """A sign-in refused because some of `keys` are locked (`start_check` returned None, its keys still held):
    count it on each lock in force; returns the keys whose lock refuses its first sign-in, which the caller
    audits. The others are only counted: one CSRF token serves any number of posts, and each refusal audited
    let anyone who never signed in write permanent records without limit."""
    first = []
    for key in keys:
        row = db.session.get(LoginThrottle, key)
        if row is not None and row.locked_until and row.locked_until > utcnow():
            if not row.refused:
                first.append(key)
            row.refused += 1
    return first


def refused_counts(rows: list[LoginThrottle]) -> dict[str, int]:
    """The sign-ins each of these locks refused, for the record of the unlock that lifts them: of the locks
    still in force only (one that ran out by itself took its count with it)."""
    now = utcnow()
    return {row.key: row.refused for row in rows if row.refused and row.locked_until and row.locked_until > now}


# The spent counters one run of `prune_job` deletes per transaction.
PRUNE_BATCH = 500


def prune_job() -> str:
    """Scheduler job (with auth.expire_sessions): delete the counters whose window and lock have both run out,
    such as the `user:NAME` row every made-up username leaves, which nothing else deletes. Each batch queues
    behind the sign-ins counting on its keys, so none writes to a row deleted under it."""
    window = timedelta(minutes=current_app.config["MPIM_LOGIN_LOCK_MINUTES"])
    deleted = 0
    while True:
        now = utcnow()
        spent = (LoginThrottle.locked_until.is_(None) | (LoginThrottle.locked_until <= now),
                 LoginThrottle.first_failure_at.is_(None) | (LoginThrottle.first_failure_at < now - window))
        keys = list(db.session.scalars(select(LoginThrottle.key).where(*spent).order_by(LoginThrottle.key)
                                       .limit(PRUNE_BATCH)))
        if not keys:
            break
        serialise_keys(*keys)
        deleted += db.session.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(keys), *spent)
                                      .execution_options(synchronize_session=False)).rowcount
        db.session.commit()
        if len(keys) < PRUNE_BATCH:
            break
    return f"deleted {deleted} spent sign-in counters"


def places_taken(limits: dict[str, int], now: datetime) -> dict[str, int]:
    """Per key, its confirmed failures in the current window plus its checks under way; forgets the checks
    older than CHECK_LIFETIME on the way (their process died before it resolved them)."""
    window = timedelta(minutes=current_app.config["MPIM_LOGIN_LOCK_MINUTES"])
    db.session.execute(delete(LoginCheck).where(LoginCheck.key.in_(limits),
                                                LoginCheck.started_at < now - CHECK_LIFETIME))
    taken = dict.fromkeys(limits, 0)
    for key, count in db.session.execute(select(LoginCheck.key, func.count()).where(LoginCheck.key.in_(limits))
                                         .group_by(LoginCheck.key)):
        taken[key] += count
    for key, failures, first in db.session.execute(
            select(LoginThrottle.key, LoginThrottle.failures, LoginThrottle.first_failure_at)
            .where(LoginThrottle.key.in_(limits))):
        if first is not None and now - first <= window:
            taken[key] += failures
    return taken


def start_check(limits: dict[str, int]) -> list[int] | None:
    """Take one of each key's places for a password check, and commit it; returns the checks' ids to hand to
    `end_check`, or None (nothing taken, nothing written) when one of the keys is locked.

    A key has `limit` places, held by its confirmed failures and by the checks under way: however many guesses
    arrive together, no more than `limit` wrong ones are checked before the lock (checked first and counted
    after the slow hash, 120 guesses sent together got 31 checks with a limit of 5). A check under way is not a
    failure, and does not lock: counted as one, right passwords signed in together from one address locked it
    and were refused. While the places are all taken, the attempt waits, polling in short transactions, for
    the checks under way to end; SignInsBusy if they have not after BUSY_WAIT_SECONDS."""
    deadline = time.monotonic() + BUSY_WAIT_SECONDS
    while True:
        serialise_keys(*limits)
        if any(locked(key) for key in limits):
            return None  # the caller records the refusal and commits
        now = utcnow()
        taken = places_taken(limits, now)
        if all(taken[key] < limit for key, limit in limits.items()):
            checks = [LoginCheck(key=key, started_at=now) for key in limits]
            db.session.add_all(checks)
            db.session.flush()
            ids = [check.id for check in checks]
            db.session.commit()
            return ids
        db.session.commit()  # the stale checks forgotten, and the locks let go while this one waits
        if time.monotonic() >= deadline:
            raise SignInsBusy(_l("Too many sign-ins at once from this address or to this account: try again in "
                                 "a moment."))
        time.sleep(BUSY_POLL_SECONDS)


@contextmanager
def places_held(checks: list[int]) -> Iterator[None]:
    """Give the places back at once when the check between `start_check` and `end_check` fails part way (a
    database error in the user lookup, a broken hash): left to their lifetime, a few such errors held every
    place of an account or address for CHECK_LIFETIME, and right passwords were refused as busy."""
    try:
        yield
    except BaseException:
        db.session.rollback()
        try:
            db.session.execute(delete(LoginCheck).where(LoginCheck.id.in_(checks)))
            db.session.commit()
        except Exception:  # the database itself is failing: the places' lifetime frees them
            db.session.rollback()
        raise


def end_check(checks: list[int], limits: dict[str, int], *, right: bool) -> list[str]:
    """Give back the places `start_check` took, in the caller's transaction: a right password clears the
    account's failures, a wrong one counts as a failure of each key. Returns the keys this failure locks.

    Not the address's failures: cleared by a right password, an insider with a working account reset the
    address's limit at each own sign-in and guessed at other accounts without limit (95 wrong guesses from one
    address, none locked, with a limit of 20). The address's count runs out with its window."""
    serialise_keys(*limits)
    db.session.execute(delete(LoginCheck).where(LoginCheck.id.in_(checks)))
    if right:
        db.session.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(
            [key for key in limits if key.startswith("user:")])))
        return []
    return [key for key, limit in limits.items() if register_failure(key, limit)]


def locked_addresses(limit: int | None = None) -> list[tuple[str, datetime]]:
    """Addresses refused now (too many failed sign-ins from them), with when each lock ends; the first `limit`
    of them (a guessing run from many addresses locks them all), every one without."""
    return [(row.key.removeprefix("addr:"), row.locked_until) for row in address_locks(limit)]


def locked_address_count() -> int:
    return db.session.scalar(select(func.count()).select_from(address_locks_query().subquery())) or 0


def address_locks_query():
    return select(LoginThrottle).where(LoginThrottle.key.startswith("addr:"), LoginThrottle.locked_until > utcnow())


def address_locks(limit: int | None = None) -> list[LoginThrottle]:
    return list(db.session.scalars(address_locks_query().order_by(LoginThrottle.key).limit(limit)))


def clear_address_locks() -> tuple[list[str], dict[str, int]]:
    """The addresses whose locks are lifted, and how many sign-ins each lock refused (`refused_counts`)."""
    rows = address_locks()
    for row in rows:
        db.session.delete(row)
    return [row.key.removeprefix("addr:") for row in rows], refused_counts(rows)


def clear_account(username: str) -> bool:
    """Delete the account's failures and lock, queued behind the sign-ins counting on them; True when a lock
    was in force."""
    key = f"user:{username.lower()}"
    serialise_keys(key)
    row = db.session.get(LoginThrottle, key)
    if row is None:
        return False
    lifted = bool(row.locked_until and row.locked_until > utcnow())
    db.session.delete(row)
    return lifted


def is_locked(username: str) -> bool:
    return locked(f"user:{username.lower()}")
