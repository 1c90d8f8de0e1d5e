"""Users, sign-in and its throttle. Console, API and CLI all come through here."""

from __future__ import annotations

import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from app.audit import service as audit
from app.auth import console_sessions, throttle
from app.auth.models import ROLES, SCOPE_CODES_LENGTH, ConsoleSession, LoginThrottle, PasswordHistory, User
from app.database import serialise, sqlite_write_lock, utcnow
from app.divisions.codes import typed_code
from app.errors import Conflict, DomainError, NotFound, PermissionDenied, Refusals, ValidationFailed
from app.extensions import db
from app.readable import BLANKS, misleading, readable_text

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{2,64}$")
# The console's fixed pages under /users/ (app/auth/views.py): /users/new is the create form, so an account
# named "new" had no page of its own. Compared case-insensitively, as usernames are. And the audit log's actors
# that are no account (the CLI, the scheduler, a sign-in with no name): an account so named would read as them.
INTERNAL_ACTORS = frozenset({"cli", "system", "anonymous"})
RESERVED_USERNAMES = frozenset({"new", "address-locks"}) | INTERNAL_ACTORS
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256  # the forms' Length(max=...)
# A new password may not be any of the account's last five: the current one and the four before it.
PASSWORD_HISTORY = 5
# Checked even for unknown accounts, so the reply time does not reveal which usernames exist.
_DUMMY_HASH = generate_password_hash("not-a-real-password")

# What the views, the CLI and the tests reach through this module: the throttle is one part of signing in.
LoginRefused, SignInsBusy = throttle.LoginRefused, throttle.SignInsBusy
locked_addresses, locked_address_count, is_locked = (throttle.locked_addresses, throttle.locked_address_count,
                                                     throttle.is_locked)


class PasswordChangeLocked(DomainError):
    """The change form's refusal while the account is locked (`change_own_password`). `locked_now`: this
    attempt's wrong current password is the one that locked it."""

    code = "locked"
    status = 429

    def __init__(self, message, *, locked_now: bool) -> None:
        super().__init__(message)
        self.locked_now = locked_now


@dataclass(frozen=True)
class UserDraft:
    """What a form or the CLI hands to `create_user`."""

    username: str
    password: str
    role: str
    scopes: tuple[str, ...] = ()
    display_name: str = ""
    # The creator chose the password, so the user replaces it at first sign-in; False only where the
    # password is the user's own (MPIM_ADMIN_PASSWORD set by the operator who signs in with it).
    must_change_password: bool = True


# What a password's length does not count: the blanks and invisible characters a name of them shows nothing
# with (app.readable), but for the ordinary space, a key a passphrase types between its words.
UNCOUNTED = BLANKS - {" "}


def visible_length(password: str) -> int:
    """The characters a password has as one sees them: counted after NFC (an accent typed apart joins its
    letter, Korean jamo their syllable), combining marks (M), format characters (Cf: zero-width joiners, the
    byte-order mark, soft hyphens, tag characters) and the other blanks of app.readable (Hangul fillers, the
    ideographic space) left uncounted: "Aa1" with seven accents, or seven zero-width joiners, passed as ten
    characters. For counting only: the password is hashed and checked as typed, so the hashes already stored
    still match."""
    return sum(not unicodedata.category(character).startswith(("M", "Cf")) and character not in UNCOUNTED
               for character in unicodedata.normalize("NFC", password))


def check_password_policy(password: str, username: str = "", *, field: str = "password") -> None:
    """Every rule `password` breaks, at once (`Refusals`: the first raised, the CLI's one error, in this order).
    `field`: the form field the refusals are shown at (the change form's is new_password)."""
    refusals = Refusals()
    with refusals.check():
        # NUL, Escape, Bell, a tab (the change form, a reset and --password-stdin took them): no keyboard
        # types them back at the sign-in form.
        if any(unicodedata.category(character) == "Cc" for character in password):
            raise ValidationFailed(_l("Passwords cannot contain control characters (such as a tab, NUL or "
                                      "Escape)."), code="weak_password", field=field)
    with refusals.check():
        if len(password) > MAX_PASSWORD_LENGTH:  # what the sign-in form takes: a longer one could never sign in
            raise ValidationFailed(_l("Passwords have at most %(n)s characters.", n=MAX_PASSWORD_LENGTH),
                                   code="weak_password", field=field)
        if visible_length(password) < MIN_PASSWORD_LENGTH:
            raise ValidationFailed(_l("Passwords need at least %(n)s characters.", n=MIN_PASSWORD_LENGTH),
                                   code="weak_password", field=field)
    with refusals.check():
        classes = sum(bool(re.search(p, password)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^A-Za-z0-9]"))
        if classes < 3:
            raise ValidationFailed(_l("Passwords need three of: lower case, upper case, digits, symbols."),
                                   code="weak_password", field=field)
    with refusals.check():
        if len(username) >= 4 and username.lower() in password.lower():
            raise ValidationFailed(_l("A password must not contain the username."), code="weak_password",
                                   field=field)
    refusals.raise_any()


# Between typed codes (the console's scope field, the CLI's --scope): a comma, its full-width and enumeration forms
# a zh-CN keyboard types (，、), a semicolon (; ；) or blanks. "360000，440000" was one unknown code.
CODE_SEPARATORS = re.compile(r"[,，、;；\s]+")


def typed_codes(text: str | None) -> list[str]:
    return [typed_code(code) for code in CODE_SEPARATORS.split(text or "") if code]


def normalise_scopes(role: str, scopes: tuple[str, ...] | list[str], held: frozenset[str] = frozenset()) -> str:
    """Provincial admins need at least one known, current division code; other roles none. `held`: the codes
    the account has already, kept as they are though a later revision retired them (they still cover what
    they did): checked again, the edit form refused every change to such an account, even disabling it. The codes
    joined fit the column (`SCOPE_CODES_LENGTH`): SQLite stored a longer list, which the console's field then
    refused on every edit, and PostgreSQL refused it with a traceback; a list the account holds already (SQLite)
    is kept as it is, so that the account can still be disabled."""
    from app.divisions import service as divisions

    codes = sorted({code.strip() for code in scopes if code.strip()})
    if role != "provincial_admin":
        if codes:
            raise ValidationFailed(_l("Only provincial admins have a division scope."), code="scope_not_allowed",
                                   field="scopes")
        return ""
    if not codes:
        raise ValidationFailed(_l("A provincial admin needs at least one division code."), code="scope_required",
                               field="scopes")
    joined = ",".join(codes)
    # Before each code is looked up: a list of hundreds is refused without hundreds of queries. A code is six
    # digits and a comma.
    if len(joined) > SCOPE_CODES_LENGTH and set(codes) != held:
        raise ValidationFailed(_l("A division scope holds at most %(count)s codes (%(n)s characters): the code of a "
                                  "province or a city (such as 360000) covers every code under it.",
                                  count=(SCOPE_CODES_LENGTH + 1) // 7, n=SCOPE_CODES_LENGTH),
                               code="too_long", field="scopes")
    for code in codes:
        if code not in held:
            divisions.require_current(code, field="scopes")
    return joined


def retired_scopes_in_use(codes: set[str]) -> list[str]:
    """divisions.retirement_checks entry: name every console user with a retired code in its scope (an edit
    keeps it, so the import's report is where the operator learns it is to be replaced), disabled ones too:
    enabled again, they would have it still. A scope above a retired code keeps covering what is left."""
    lines = []
    for user in db.session.scalars(select(User).where(User.scope_codes != "").order_by(User.username)):
        retired = sorted(codes.intersection(user.scopes))
        if retired:
            lines.append(f"console user {user.username}{'' if user.active else ' (disabled)'} has retired "
                         f"{'code' if len(retired) == 1 else 'codes'} {', '.join(retired)} in its division scope")
    return lines


def check_draft(draft: UserDraft) -> tuple[str, str]:
    """(display name, scope codes) of a new user, or every field's refusal at once, in this order (the CLI and
    the API-less callers name the first). The console also calls it when WTForms refused a field, so that the
    other fields' refusals come with that one."""
    refusals = Refusals()
    with refusals.check():
        if not USERNAME_PATTERN.fullmatch(draft.username):  # match() would let "alice\n" through ($)
            raise ValidationFailed(_l("Usernames are 2-64 letters, digits, '_', '.' or '-'."),
                                   code="invalid_username", field="username")
        # "..": the console's /users/.. is read by every browser as the page above it, so such an account
        # could not be managed there.
        if not draft.username.strip("."):
            raise ValidationFailed(_l("A username needs a letter, a digit, '_' or '-', not only dots."),
                                   code="invalid_username", field="username")
        if draft.username.lower() in INTERNAL_ACTORS:
            raise ValidationFailed(_l('The username "%(name)s" is how the audit log names actions of the system '
                                      'itself and cannot be used.', name=draft.username),
                                   code="reserved_username", field="username")
        if draft.username.lower() in RESERVED_USERNAMES:
            raise ValidationFailed(_l('The username "%(name)s" is the path of a console page and cannot be used.',
                                      name=draft.username), code="reserved_username", field="username")
    with refusals.check():
        if draft.role not in ROLES:
            raise ValidationFailed(_l("Unknown role %(role)s.", role=draft.role), code="invalid_role", field="role")
    with refusals.check():
        check_password_policy(draft.password, draft.username)
    with refusals.check():
        display_name = readable_text(draft.display_name, "display_name", limit=120)
    if draft.role in ROLES:  # which scope a role takes is known only for a known role
        with refusals.check():
            scope_codes = normalise_scopes(draft.role, draft.scopes)
    refusals.raise_any()
    return display_name, scope_codes


def create_user(draft: UserDraft, *, actor: str | None = None) -> User:
    """`actor`: who creates it, when not the console's signed-in admin (the CLI says "cli")."""
    display_name, scope_codes = check_draft(draft)
    serialise(f"user:{draft.username.lower()}")  # two admins creating one name together: one is told it is taken
    if db.session.scalar(select(User.id).where(func.lower(User.username) == draft.username.lower())):
        raise Conflict(_l("User %(name)s already exists.", name=draft.username), code="username_taken",
                       field="username")
    user = User(username=draft.username, display_name=display_name, role=draft.role,
                scope_codes=scope_codes, password_hash=generate_password_hash(draft.password),
                password_must_change=draft.must_change_password)
    db.session.add(user)
    db.session.flush()
    audit.record("user.create", draft.username, {"display_name": display_name, "role": draft.role,
                                                 "scopes": scope_codes}, actor=actor)
    return user


def check_user_change(user: User, *, role: str, scopes: list[str], display_name: str) -> tuple[str, str]:
    """(scope codes, display name) of `user` changed so, or every field's refusal at once, in this order (the CLI
    names the first). The console also calls it when WTForms refused a field, so that the other fields'
    refusals come with that one."""
    refusals = Refusals()
    with refusals.check():
        if role not in ROLES:
            raise ValidationFailed(_l("Unknown role %(role)s.", role=role), code="invalid_role", field="role")
    if role in ROLES:  # which scope a role takes is known only for a known role
        with refusals.check():
            scope_codes = normalise_scopes(role, scopes, held=frozenset(user.scopes))
    with refusals.check():
        display_name = readable_text(display_name, "display_name", limit=120)
    refusals.raise_any()
    return scope_codes, display_name


def hold_user(user: User) -> None:
    """Queue behind any other change of this account until commit, then read it again: what the caller reads
    of it next is what its change replaces. Taken again by `update_user`; a caller that fills in the fields it
    was not given (`flask users update`) takes it before reading them."""
    serialise(f"user:{user.username.lower()}")  # create_user's name: an account's one identity
    db.session.refresh(user)


def update_user(user: User, *, role: str, scopes: list[str], active: bool, display_name: str,
                by: User | None = None) -> bool:
    """The fields' refusals first (`check_user_change`), then the checks about no one field: `by` (the console's
    signed-in admin; None for the operator on the server) neither demotes nor disables itself, and the last
    active ministry admin stays one. False when the account already is so: nothing changed, nothing recorded
    (a form saved as it was shown wrote a `user.update` whose before was its after).

    Two edits of one account at once queue, and each reads the account again once its turn comes: both had
    read it first, so the second wrote over the first and audited as "before" what neither left (the first's
    change appeared in no record as replaced). The lock is per account, so that two admins demoting each
    other still both reach `_refuse_if_last_ministry_admin`, whose row locks (in id order) decide."""
    hold_user(user)
    scope_codes, display_name = check_user_change(user, role=role, scopes=scopes, display_name=display_name)
    if by is not None and by.id == user.id and (role != user.role or not active):
        raise PermissionDenied(_l("You cannot demote or deactivate yourself."), code="own_account")
    before = {"display_name": user.display_name, "role": user.role, "scopes": user.scope_codes, "active": user.active}
    after = {"display_name": display_name, "role": role, "scopes": scope_codes, "active": active}
    if after == before:
        return False
    if user.role == "ministry_admin" and user.active and (role != "ministry_admin" or not active):
        _refuse_if_last_ministry_admin(user)
    user.role, user.scope_codes, user.active = role, scope_codes, active
    user.display_name = display_name
    # The name too: the console shows it beside the user's actions, so a rename is a change worth a record.
    audit.record("user.update", user.username, {"before": before, "after": after})
    if before["active"] and not active:
        console_sessions.end_sessions(user, "disabled")  # a disabled account is signed out everywhere at once
    return True


def _refuse_if_last_ministry_admin(user: User) -> None:
    """Nobody could approve a node, sign in to the console's ministry pages or make another admin: the console
    refuses demoting oneself, but the CLI's `users update` disabled or demoted the only one, and `flask users
    ensure-admin` (a step of `make run`) then failed on the name it holds.

    Two admins disabling each other at once both counted the other and both went ahead. The active ministry
    admins' rows are locked (FOR UPDATE, in id order) before they are counted, so the second waits for the first
    to commit and counts what it left; SQLite has no row locks, so its write lock is taken before the count."""
    sqlite_write_lock()
    admins = db.session.scalars(select(User.id).where(User.role == "ministry_admin", User.active.is_(True))
                                .order_by(User.id).with_for_update())
    if not set(admins) - {user.id}:
        raise Conflict(_l("This is the last active ministry admin: make another one first."),
                       code="last_ministry_admin")


def set_password(user: User, new_password: str, *, action: str = "user.password_reset",
                 temporary: bool = True, field: str = "password", actor: str | None = None,
                 detail: dict | None = None) -> None:
    """`temporary`: an admin's reset, which the user must replace at the next sign-in; `field`: where a
    refusal is shown; `actor`: who, when not the console's signed-in user (the CLI says "cli"). None of the
    account's last PASSWORD_HISTORY passwords comes back (MLPS 2.0 asks passwords to be changed, which a change
    back to the last one would not be). Every rule it breaks is refused at once (`check_password_policy`); a past
    password met the rules when it was set, so only one that meets them now is looked for among them."""
    check_password_policy(new_password, user.username, field=field)
    earlier = list(db.session.scalars(select(PasswordHistory).where(PasswordHistory.user_id == user.id)
                                      .order_by(PasswordHistory.replaced_at.desc(), PasswordHistory.id.desc())))
    if any(check_password_hash(hashed, new_password)
           for hashed in [user.password_hash, *(row.password_hash for row in earlier[:PASSWORD_HISTORY - 1])]):
        raise ValidationFailed(_l("The new password must differ from the last %(n)d passwords of this account.",
                                  n=PASSWORD_HISTORY), code="password_reused", field=field)
    db.session.add(PasswordHistory(user_id=user.id, password_hash=user.password_hash))
    for row in earlier[PASSWORD_HISTORY - 2:]:  # with the one just added, the newest four are kept
        db.session.delete(row)
    user.password_hash = generate_password_hash(new_password)
    user.password_must_change = temporary
    user.password_changed_at = utcnow()
    audit.record(action, user.username, detail, actor=actor)


def reset_password(user: User, new_password: str, *, by: User | None, actor: str | None = None) -> None:
    """An admin's reset of someone else's password: one the user must replace at the next sign-in, and
    every session of the user ends. The account's failed sign-ins and its lock go with the old password (the
    record says `lock_lifted` when one was in force): the user was still refused as locked with the new one
    until the admin also unlocked the account. Address locks stay: those are the unlock's to lift.
    Not of the admin's own (PermissionDenied, "own_password"): a reset asks
    for no current password, so whoever found an admin's console signed in would take the account and
    sign its owner out everywhere; one's own is changed with the current one (`change_own_password`).
    `by` None: the operator on the server (`flask users reset-password`, `actor` "cli"), who is no console
    session and may reset any account, the one ministry admin's forgotten password too."""
    _refuse_own_reset(user, by)
    lifted = throttle.clear_account(user.username)
    set_password(user, new_password, actor=actor, detail={"lock_lifted": True} if lifted else None)
    console_sessions.end_sessions(user, "password_reset", actor=actor)


def check_reset(user: User, new_password: str, *, by: User | None) -> None:
    """What `reset_password` refuses without reading the account's past passwords: for the console's reset form
    when WTForms refused it, so that the password's other refusals come with WTForms' one."""
    _refuse_own_reset(user, by)
    check_password_policy(new_password, user.username)


def _refuse_own_reset(user: User, by: User | None) -> None:
    if by is not None and user.id == by.id:
        raise PermissionDenied(_l("You cannot reset your own password here: change it on the Change password "
                                  "page, which asks for the current one."), code="own_password")


def change_own_password(user: User, current_password: str, new_password: str, *,
                        keep: ConsoleSession | None = None) -> None:
    """The user's own change: their other sessions end, `keep` (the one they changed it in) stays.

    The current password is checked under the account's sign-in throttle (`user:NAME`), as a sign-in is: a
    console left signed in, or a stolen cookie, would otherwise guess it without limit. A wrong one counts
    as a failed sign-in and is audited (auth.password_change_failed), the right one clears the count; while
    the account is locked the change is refused (PasswordChangeLocked; auth.password_change_blocked once per
    lock, at its first refusal, sign-in or change, the others counted on the lock). Commits
    the count and its records itself: they must outlive the refusal."""
    limits = {f"user:{user.username.lower()}": current_app.config["MPIM_LOGIN_MAX_FAILURES"]}
    checks = throttle.start_check(limits)
    if checks is None:
        # Audited once per lock, as a sign-in is (`throttle.count_refusal`): one session could post the form
        # without limit, each post a permanent record. The refusals after the first are counted on the lock.
        if throttle.count_refusal(limits):
            audit.record("auth.password_change_blocked", user.username, {"reason": "locked"}, actor=user.username)
        db.session.commit()
        raise PasswordChangeLocked(_l("Too many failed sign-ins: this account is locked for a while, and its "
                                      "password cannot be changed until the lock ends."), locked_now=False)
    with throttle.places_held(checks):
        right = check_password_hash(user.password_hash, current_password)
        locked = throttle.end_check(checks, limits, right=right)
        if not right:
            audit.record("auth.password_change_failed", user.username, {"locked": locked}, actor=user.username)
        db.session.commit()  # a right password clears the count, whether or not the new one is accepted
    if not right:
        if locked:
            raise PasswordChangeLocked(_l("Too many wrong passwords: this account is locked for a while."),
                                       locked_now=True)
        # With the rules the new one breaks, which are no secret; not whether it is a past one of the account.
        refusals = Refusals()
        with refusals.check():
            raise ValidationFailed(_l("The current password is wrong."), code="wrong_password",
                                   field="current_password")
        with refusals.check():
            check_password_policy(new_password, user.username, field="new_password")
        refusals.raise_any()
    if current_password == new_password:
        raise ValidationFailed(_l("The new password must differ from the current one."), code="weak_password",
                               field="new_password")
    set_password(user, new_password, action="user.password_change", temporary=False,
                 field="new_password")
    console_sessions.end_sessions(user, "password_change", keep=keep)


def password_change_due(user: User) -> str | None:
    """Why the user must change their password before anything else: "temporary" (someone else chose it),
    "expired" (older than MPIM_PASSWORD_MAX_DAYS; MLPS 2.0 asks passwords to be changed regularly), or None."""
    if user.password_must_change:
        return "temporary"
    max_days = current_app.config["MPIM_PASSWORD_MAX_DAYS"]
    if max_days and user.password_changed_at < utcnow() - timedelta(days=max_days):
        return "expired"
    return None


def generate_password() -> str:
    """A password that meets the policy, for the first admin when none was given."""
    while True:
        candidate = secrets.token_urlsafe(15)
        try:
            check_password_policy(candidate)
            return candidate
        except ValidationFailed:
            continue


def get_user(username: str) -> User:
    user = db.session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(_l("No user named %(name)s.", name=username), code="user_not_found")
    return user


def acting_user(username: str) -> User:
    """The console user a CLI command acts as (`--user`): its role and divisions apply, and the audit log
    names it, in every record the command's transaction writes. A disabled account signs in nowhere, so it acts
    through no command either."""
    user = get_user(username)
    if not user.active:
        raise PermissionDenied(_l("The account %(name)s is disabled.", name=username), code="account_disabled")
    audit.act_as(user.username)
    return user


def authenticate(username: str, password: str, remote_addr: str) -> User:
    """Check credentials under the throttle. Commits failures itself: they must outlive the refusal."""
    if misleading(username):
        # No account has such a name (USERNAME_PATTERN). It is throttled and audited escaped: PostgreSQL refuses
        # a NUL (the sign-in answered 500), and a control or bidi character would misread in the audit log.
        # Cut to the 64 characters a name has: escaped, up to six times as long, it outgrew the record's actor.
        username = username.encode("unicode_escape").decode("ascii")[:64]
    # An address gets more tries than an account: one person's typos must not lock everyone behind it.
    limits = {f"user:{username.lower()}": current_app.config["MPIM_LOGIN_MAX_FAILURES"],
              throttle.address_key(remote_addr): current_app.config["MPIM_LOGIN_MAX_ADDRESS_FAILURES"]}
    checks = throttle.start_check(limits)
    if checks is None:
        # Audited once per lock, at its first refusal; the refusals after it are counted on the lock.
        if first := throttle.count_refusal(limits):
            named = db.session.scalar(select(User.username).where(func.lower(User.username) == username.lower()))
            audit.record("auth.login_blocked", named or username, {"reason": "locked", "keys": first,
                                                                   **_typed_otherwise(username, named)},
                         actor=refused_actor(username, named), remote_addr=remote_addr)
        db.session.commit()
        raise LoginRefused("Too many failed sign-ins: this account or address is locked for a while.",
                           code="locked")
    with throttle.places_held(checks):
        user = db.session.scalar(select(User).where(func.lower(User.username) == username.lower()))
        valid = check_password_hash(user.password_hash if user else _DUMMY_HASH, password)
        right = valid and user is not None and user.active
        locked = throttle.end_check(checks, limits, right=right)
        if right:
            user.last_login_at = utcnow()
            audit.record("auth.login", user.username, actor=user.username, remote_addr=remote_addr)
        else:
            named = user.username if user is not None else None
            audit.record("auth.login_failed", named or username, {"locked": locked,
                                                                  **_typed_otherwise(username, named)},
                         actor=refused_actor(username, named), remote_addr=remote_addr)
        db.session.commit()
    if not right:
        raise LoginRefused("Wrong username or password." if not locked else
                           "Too many failed sign-ins: this account or address is locked for a while.",
                           code="locked" if locked else "bad_credentials")
    return user


def refused_actor(typed: str, named: str | None) -> str:
    """Who a refused sign-in is recorded as: the account's name as stored, else the name as typed; "anonymous" for
    none, and for a name the audit log keeps for the system itself ("system", "cli"), which a stranger typing it
    would otherwise put among the scheduler's records (the typed name is in the detail, `_typed_otherwise`)."""
    if named is not None:
        return named
    return "anonymous" if not typed or typed.lower() in INTERNAL_ACTORS else typed


def _typed_otherwise(typed: str, named: str | None) -> dict:
    """A refused sign-in of an account is recorded under the account's name as stored, whatever case it was typed
    in, so that the audit log's actor filter finds every one of them (`audit.search.actors_named`); the detail
    keeps what was typed when it differs."""
    return {"typed": typed} if typed and typed != refused_actor(typed, named) else {}


def unlock(username: str, *, actor: str | None = None) -> list[str]:
    """Clear the account's lock and every address lock in force (the admin is letting people back in,
    and an address lock would keep refusing this user too); returns the addresses cleared. NotFound for a
    username no account has: an unlock "done" for nobody was reported and audited as if it were real.
    `actor`: who, when not the console's signed-in admin (the CLI says "cli")."""
    user = get_user(username)
    row = db.session.get(LoginThrottle, f"user:{user.username.lower()}")
    if row is not None:
        db.session.delete(row)
    addresses, refused = throttle.clear_address_locks()
    if row is None and not addresses:  # a second click, a stale page: nothing to clear, nothing to record
        raise Conflict(_l("%(name)s is not locked, and no address is: nothing to clear.", name=user.username),
                       code="not_locked")
    refused.update(throttle.refused_counts([row] if row is not None else []))
    detail = {**({"addresses": addresses} if addresses else {}), **({"refused": refused} if refused else {})}
    audit.record("auth.unlock", user.username, detail or None, actor=actor)
    return addresses


def unlock_addresses(*, actor: str | None = None) -> list[str]:
    """The users page's "clear address locks": every address lock in force, audited. `actor`: who, when not
    the console's signed-in admin (the CLI says "cli")."""
    addresses, refused = throttle.clear_address_locks()
    if addresses:  # none in force: nothing happened to record
        audit.record("auth.unlock_addresses", ", ".join(addresses)[:200],
                     {"addresses": addresses, **({"refused": refused} if refused else {})}, actor=actor)
    return addresses
