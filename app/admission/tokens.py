"""Enrollment tokens (SPEC §3 step 1): single use, expiring, stored hashed, shown once."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from flask_babel import lazy_gettext as _l
from sqlalchemy import select, update

from app.admission.models import EnrollmentToken
from app.audit import service as audit
from app.auth.access import require_admin, require_division_scope
from app.database import get_by_number, utcnow
from app.divisions import service as divisions
from app.errors import NotFound, Unauthorized, ValidationFailed
from app.extensions import db
from app.readable import readable_text

TOKEN_PREFIX = "mpet_"
DEFAULT_TTL = timedelta(days=7)
MAX_TTL = timedelta(days=90)
TTL_PATTERN = re.compile(r"([0-9]{1,4})([mhd])")  # fullmatch, ASCII digits: \d is any Unicode digit


class StaleToken(Unauthorized):
    """The bearer token is unknown, used, expired or revoked (each has its own code)."""

    code = "invalid_token"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def parse_ttl(text: str) -> timedelta:
    """`7d`, `12h`, `30m`: how long a token lives."""
    match = TTL_PATTERN.fullmatch(text.strip())
    if not match:
        raise ValidationFailed(_l("A lifetime looks like 7d, 12h or 30m."), code="invalid_ttl", field="ttl")
    amount, unit = int(match.group(1)), match.group(2)
    ttl = {"m": timedelta(minutes=amount), "h": timedelta(hours=amount), "d": timedelta(days=amount)}[unit]
    if not timedelta(minutes=5) <= ttl <= MAX_TTL:
        raise ValidationFailed(_l("A token lives between 5 minutes and 90 days."), code="invalid_ttl", field="ttl")
    return ttl


def create_token(division_code: str, *, by, ttl: timedelta = DEFAULT_TTL,
                 note: str = "") -> tuple[EnrollmentToken, str]:
    """Returns the row and the raw token; the raw token exists only in this return value."""
    require_admin(by)
    divisions.require_current(division_code)
    require_division_scope(by, division_code)
    note = readable_text(note, "note", limit=200)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    # Whole seconds, as its record and every other recorded moment read; the token expires when the record says.
    token = EnrollmentToken(token_hash=hash_token(raw), prefix=raw[: len(TOKEN_PREFIX) + 6],
                            division_code=division_code, issued_by_id=by.id, note=note,
                            expires_at=(utcnow() + ttl).replace(microsecond=0))
    db.session.add(token)
    db.session.flush()
    audit.record("token.create", token.prefix, {"division": division_code, "expires_at": token.expires_at,
                                                "note": token.note}, actor=by.username)
    return token, raw


def find_by_raw(raw: str | None) -> EnrollmentToken:
    """The token a bearer holds, in whatever state; unknown tokens are refused."""
    if not raw:
        raise StaleToken("An enrollment token is required: Authorization: Bearer <token>.", code="missing_token")
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 100:  # not worth a lookup, but a token all the same
        raise StaleToken(f"This is not an enrollment token (they begin with {TOKEN_PREFIX} and are at most 100 "
                         "characters long).", code="unknown_token")
    token = db.session.scalar(select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(raw)))
    if token is None:
        raise StaleToken("This enrollment token is not known.", code="unknown_token")
    return token


def require_usable(token: EnrollmentToken) -> None:
    """Unused, unexpired, not revoked, and its issuer still an active admin whose scope covers its division."""
    state = token.state()
    if state != "active":
        messages = {"used": "This enrollment token has been used already.",
                    "expired": "This enrollment token has expired.",
                    "revoked": "This enrollment token has been revoked.",
                    "division_retired": f"The division this enrollment token admits nodes in, "
                                        f"{token.division_code}, was retired by a newer GB/T 2260 revision: ask "
                                        f"an admin for a token for the division that replaced it.",
                    "issuer_inactive": "The admin who issued this enrollment token could not issue it now (the "
                                       "account was disabled, or its role or scope changed): ask an admin for a "
                                       "new token."}
        raise StaleToken(messages[state], code=f"token_{state}")


def consume(token: EnrollmentToken) -> None:
    """Mark used in one conditional UPDATE, so two racing applications cannot both use it. When it matches
    nothing, the token changed after `require_usable` read it: used, revoked or expired meanwhile, and the
    refusal says which."""
    now = utcnow()
    result = db.session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == token.id, EnrollmentToken.used_at.is_(None),
               EnrollmentToken.revoked_at.is_(None), EnrollmentToken.expires_at > now)
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.refresh(token)  # as the UPDATE found it: a revocation or the clock, not only another application
        require_usable(token)
        raise StaleToken("This enrollment token has been used already.", code="token_used")  # unreachable in practice
    db.session.refresh(token)


def revoke_token(token_id: int, *, by) -> EnrollmentToken:
    require_admin(by)
    token = get_by_number(EnrollmentToken, token_id)
    # Another province's token is answered as missing: its existence and division are not ours to tell.
    if token is None or not by.can_access_division(token.division_code):
        raise NotFound(_l("No such enrollment token."), code="token_not_found")
    # One conditional UPDATE, as `consume`: an application using the token at this moment holds its row, and a
    # blind write would wait for it and then mark revoked a token that admitted an application.
    now = utcnow()
    result = db.session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == token.id, EnrollmentToken.used_at.is_(None),
               EnrollmentToken.revoked_at.is_(None), EnrollmentToken.expires_at > now)
        .values(revoked_at=now, revoked_by=by.username)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise ValidationFailed(_l("Only an unused, unexpired token can be revoked."), code="token_not_active")
    db.session.refresh(token)
    audit.record("token.revoke", token.prefix, {"division": token.division_code}, actor=by.username)
    return token


def visible_tokens_query(user):
    """Ministry admins see every token; provincial admins those inside their scope."""
    from app.admission.scope import division_filter

    query = select(EnrollmentToken).order_by(EnrollmentToken.created_at.desc(), EnrollmentToken.id.desc())
    return query.where(division_filter(user, EnrollmentToken.division_code))


def retired_codes_unused(codes: set[str]) -> list[str]:
    """divisions.retirement_checks entry: name every token still unused, unrevoked and unexpired for a retired
    code. It admits nothing now (`state`: division_retired) but reads as usable to whoever holds it, until an
    admin revokes it or it expires."""
    rows = db.session.scalars(select(EnrollmentToken).where(
        EnrollmentToken.division_code.in_(codes), EnrollmentToken.used_at.is_(None),
        EnrollmentToken.revoked_at.is_(None), EnrollmentToken.expires_at > utcnow())
        .order_by(EnrollmentToken.division_code, EnrollmentToken.id))
    return [f"enrollment token {t.prefix}… (unused) is for retired code {t.division_code}: it admits nothing now"
            for t in rows]
