"""Console: the banner that tells of a stopped scheduler."""

from __future__ import annotations

from flask import current_app
from flask_babel import lazy_gettext as _l

from app.i18n import local_time, sentences
from app.scheduler import liveness

# As the routing table's re-signing banner, whose cause it names first: those who see the operational banners.
READERS = ("ministry_admin", "auditor")


def banner(user) -> list[dict]:
    """Ministry admins and auditors are told when the scheduler's heartbeat is stale (`liveness.stale_heartbeat`):
    a stopped scheduler fails no request, and its jobs (health polling, CRLs, the routing table's re-signing) stop
    unseen. Nothing when no heartbeat was ever recorded (a fresh install, the test suite's database)."""
    if user.role not in READERS:
        return []
    interval = current_app.config["MPIM_HEARTBEAT_SECONDS"]
    stale = liveness.stale_heartbeat(interval)
    if stale is None:
        return []
    if stale.finished:
        said = _l("The scheduler has not run since %(time)s: its heartbeat, every %(seconds)s s, has stopped.",
                  time=local_time(stale.last_started_at), seconds=f"{interval:g}")
    else:
        said = _l("The scheduler's heartbeat that started at %(time)s never ended: the scheduler is hung or was "
                  "killed.", time=local_time(stale.last_started_at))
    return [{"kind": "error", "text": sentences(said, _l(
        "Health polling, CRL refresh and the routing table's re-signing wait until it runs again: start "
        "`flask scheduler run` (or restart its service; docs/operations.md, Processes)."))}]
