"""Console users and the login-throttle counters."""

from __future__ import annotations

from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.database import UTCDateTime, utcnow
from app.extensions import db

ROLES = ("ministry_admin", "provincial_admin", "auditor")
# The joined division codes a user's scope holds (`service.normalise_scopes` refuses a longer list).
SCOPE_CODES_LENGTH = 400


def division_prefix(code: str) -> str:
    """The code prefix a scope covers: 360000 → 36, 360100 → 3601, 360102 → 360102."""
    if code.endswith("0000"):
        return code[:2]
    if code.endswith("00"):
        return code[:4]
    return code


class User(UserMixin, db.Model):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint(f"role IN {ROLES!r}", name="role_known"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    display_name: Mapped[str] = mapped_column(String(120), nullable=False, default="")
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[str] = mapped_column(String(32), nullable=False)
    # Comma-separated division codes (e.g. "360000,440000"); empty for non-provincial roles.
    scope_codes: Mapped[str] = mapped_column(String(SCOPE_CODES_LENGTH), nullable=False, default="")
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Someone else chose the password (a new account, an admin's reset): it is changed before anything else.
    password_must_change: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False,
                                                       server_default=false())

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return self.active

    @property
    def scopes(self) -> list[str]:
        return [code for code in self.scope_codes.split(",") if code]

    @property
    def is_ministry_admin(self) -> bool:
        return self.role == "ministry_admin"

    def can_access_division(self, code: str) -> bool:
        """Ministry admins and auditors see the nation; provincial admins only their prefixes."""
        if self.role != "provincial_admin":
            return True
        return any(code.startswith(division_prefix(scope)) for scope in self.scopes)


class LoginThrottle(db.Model):
    """Failure counters per account ("user:NAME") and per address ("addr:IP", an IPv6 client's /64 as
    "addr:NETWORK/64": `throttle.address_key`). `refused`: the sign-ins refused during the current lock; the
    first is audited (auth.login_blocked), the others only counted here."""

    __tablename__ = "login_throttles"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    first_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    refused: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")


class LoginCheck(db.Model):
    """A password check under way under a throttle key, one row per key: it holds one of the key's `limit`
    places until its hash is checked, and is then deleted (and counted in LoginThrottle if it was wrong).
    A row older than the service's CHECK_LIFETIME was left by a process that died mid-check, and is ignored."""

    __tablename__ = "login_checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class ConsoleSession(db.Model):
    """One console sign-in, held on the server: the cookie carries a random token, this row only its SHA-256.

    A request is signed in only while its token's row is live (no `ended_at`): signing out, an admin and the
    idle and absolute limits end the row, so a copied or written-back cookie is dead with it."""

    __tablename__ = "console_sessions"
    __table_args__ = (
        CheckConstraint("(ended_at IS NULL) = (end_reason IS NULL)", name="ended_with_reason"),
        Index("ix_console_sessions_user_live", "user_id", "ended_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    signed_in_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_active_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    remote_addr: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    user_agent: Mapped[str] = mapped_column(String(120), nullable=False, default="")
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_reason: Mapped[str | None] = mapped_column(String(32))

    user: Mapped[User] = relationship()


class PasswordHistory(db.Model):
    """A user's earlier password hashes, the newest few only: a change or a reset may not bring one back."""

    __tablename__ = "password_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    # When this password stopped being the user's.
    replaced_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
