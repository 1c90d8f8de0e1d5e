"""Division look-ups and revision imports: what the console, API, CLI and admission share."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flask_babel import lazy_gettext as _l
from sqlalchemy import func, or_, select

from app.audit import service as audit
from app.database import serialise
from app.divisions.codes import NATION_CODE, NATION_NAME, DivisionRow, check_code_format, parse_division_file
from app.divisions.models import Division, DivisionRevision
from app.divisions.names import ENGLISH_NAMES
from app.errors import Conflict, NotFound, ValidationFailed
from app.extensions import db
from app.readable import readable_text

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_FILE = DATA_DIR / "gb2260-2023.csv"
DEFAULT_REVISION = "2023"
LEVEL_ORDER = {"province": 0, "prefecture": 1, "county": 2}

# Features that hold division codes (admission's nodes, applications and tokens; users' scopes) register a check
# here: given the codes a revision retires, they return human lines naming what still uses them.
RetirementCheck = Callable[[set[str]], list[str]]
retirement_checks: list[RetirementCheck] = []
AUDITED_IN_USE = 50  # lines of retired_in_use an import's audit record keeps; the rest are counted


class RetiredDivision(ValidationFailed):
    code = "retired_division_code"


@dataclass
class ImportReport:
    revision: str
    total: int = 0
    added: list[tuple[str, str]] = field(default_factory=list)
    renamed: list[tuple[str, str, str]] = field(default_factory=list)
    retired: list[tuple[str, str]] = field(default_factory=list)
    restored: list[tuple[str, str]] = field(default_factory=list)
    retired_in_use: list[str] = field(default_factory=list)
    first: bool = False  # into an empty table: every code is new, so none is listed as added

    @property
    def changed(self) -> bool:
        return bool(self.added or self.renamed or self.retired or self.restored)

    def to_dict(self) -> dict:
        return {
            "revision": self.revision, "total": self.total, "first": self.first,
            "added": [{"code": c, "name": n} for c, n in self.added],
            "renamed": [{"code": c, "old_name": o, "new_name": n} for c, o, n in self.renamed],
            "retired": [{"code": c, "name": n} for c, n in self.retired],
            "restored": [{"code": c, "name": n} for c, n in self.restored],
            "retired_in_use": self.retired_in_use,
        }


def import_revision(data: bytes, revision: str, *, actor: str | None = None,
                    allow_older: bool = False, allow_mass_retirement: bool = False) -> ImportReport:
    """Load a revision: add, rename, restore; flag codes it no longer lists. Caller commits.

    Nothing is ever deleted: a retired code keeps its row with `retired` set, because nodes and
    history may still name it. A revision older than the current one is refused unless
    `allow_older`: it would bring abolished codes back and retire current ones. One that retires a province or
    more than a twentieth of the current codes is refused unless `allow_mass_retirement` (`_mass_retirement`):
    a file cut short reads as such a revision. The audit record says which flag let through what would have been
    refused. Imports queue (`lock_imports`): each reads the table as the one before it left it.
    """
    revision = readable_text(revision, "revision")  # shown in the console and the audit log; blanks only are none
    if not revision or len(revision) > 32:
        raise ValidationFailed(_l("A revision name of 1-32 characters is needed."), code="invalid_revision",
                               field="revision")
    if _revision_date(revision) is None:
        raise ValidationFailed(_l("A revision is named by its date, as GB/T 2260's are: 2023, or 2019.04 (year and "
                                  "month)."), code="invalid_revision", field="revision")
    rows = sorted(parse_division_file(data), key=lambda r: (LEVEL_ORDER[r.level], r.code))
    lock_imports()
    # Read after the lock, and over what the session may hold from before it: what the last import left.
    existing = {d.code: d for d in db.session.scalars(select(Division).execution_options(populate_existing=True))}
    latest = db.session.scalar(select(DivisionRevision.name).order_by(DivisionRevision.id.desc()).limit(1))
    older = bool(existing and latest and is_older_revision(revision, latest))
    if older and not allow_older:
        raise Conflict(_l("Revision %(revision)s is older than the current %(latest)s: importing it would bring "
                          "back abolished codes and retire current ones. Use --allow-older if that is intended.",
                          revision=revision, latest=latest), code="older_revision", field="revision")
    overrides = {"allow_older": True} if older else {}  # the flags that let through what was to be refused
    report = ImportReport(revision=revision, total=len(rows), first=not existing)
    incoming: dict[str, DivisionRow] = {row.code: row for row in rows}
    level = "province"
    for row in rows:
        if row.level != level:
            # Parents first: a flush per level keeps the self-referencing foreign key satisfied.
            db.session.flush()
            level = row.level
        current = existing.get(row.code)
        if current is None:
            db.session.add(Division(code=row.code, name=row.name, level=row.level, parent_code=row.parent_code,
                                    revision=revision, retired=False))
            if existing:
                report.added.append((row.code, row.name))
            continue
        if current.retired:
            report.restored.append((row.code, row.name))
            current.retired, current.retired_in = False, None
        if current.name != row.name:
            report.renamed.append((row.code, current.name, row.name))
            current.name = row.name
        current.parent_code, current.level, current.revision = row.parent_code, row.level, revision
    for code, current in existing.items():
        if code not in incoming and not current.retired:
            current.retired, current.retired_in = True, revision
            report.retired.append((code, current.name))
    if (refusal := _mass_retirement(report, existing)) is not None:
        if not allow_mass_retirement:
            raise refusal
        overrides["allow_mass_retirement"] = True
    db.session.flush()
    retired_codes = {code for code, _ in report.retired}
    if retired_codes:
        for check in retirement_checks:
            report.retired_in_use.extend(check(retired_codes))
    if existing and not report.changed and latest == revision:
        return report  # the same list again (`make run` imports on every start): nothing to record
    db.session.add(DivisionRevision(name=revision, imported_by=actor or "system", added=len(report.added),
                                    renamed=len(report.renamed), retired=len(report.retired),
                                    restored=len(report.restored)))
    in_use = report.retired_in_use[:AUDITED_IN_USE]
    if len(report.retired_in_use) > AUDITED_IN_USE:  # said where the list is read, not only in the count beside it
        in_use.append(f"… and {len(report.retired_in_use) - AUDITED_IN_USE} more")
    audit.record("divisions.import", revision,
                 {"total": report.total, "added": len(report.added), "renamed": len(report.renamed),
                  "retired": len(report.retired), "restored": len(report.restored),
                  "retired_in_use": in_use, "retired_in_use_count": len(report.retired_in_use), **overrides},
                 **({"actor": actor} if actor else {}))
    return report


def lock_imports() -> None:
    """One import at a time, from reading the table to commit: two at once (two starts' `make db`) both read it
    before either wrote, and the second's inserts failed on the first's codes (on PostgreSQL, a traceback). The
    second now reads what the first left, as if run after it. The CLI takes it before its bare import's check of
    the loaded revision, which is to read what an import running meanwhile leaves."""
    serialise("divisions.import")


def is_older_revision(revision: str, latest: str) -> bool:
    """True for a revision dated before the latest (GB/T 2260 revisions are named by date: "2019.04",
    "2023"); for names that are not dates, one imported before and since superseded."""
    if revision == latest:
        return False
    dated, dated_latest = _revision_date(revision), _revision_date(latest)
    if dated is not None and dated_latest is not None:
        return dated < dated_latest
    return db.session.scalar(select(DivisionRevision.id).where(DivisionRevision.name == revision).limit(1)) is not None


def _revision_date(name: str) -> tuple[int, int] | None:
    """(year, month; 0 for none) of a revision named by its date ("2023", "2019.04"), else None."""
    match = re.fullmatch(r"([0-9]{4})(?:[.\-/]([0-9]{1,2}))?", name.strip())
    if match is None or not 0 < int(match.group(2) or 1) <= 12:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


MASS_RETIREMENT_SHARE = 20  # more than 1/20 of the current codes retired at once is refused without the flag


def _mass_retirement(report: ImportReport, existing: dict[str, Division]) -> Conflict | None:
    """The refusal of a revision that retires a province, or more than a twentieth of the current codes (None for
    another): what a file cut short (the first 300 lines of the list retired 2,911 codes, 31 provinces among them)
    or the wrong file reads as, and it refused every application, token and scope on those codes until the full
    list came back. Real revisions retire a few dozen counties (2019.04 to 2023: 71 of about 3,200)."""
    # Current before this import: the codes it restores were retired, and do not widen the twentieth.
    current = sum(1 for division in existing.values() if not division.retired) + len(report.retired) - len(
        report.restored)
    provinces = [(code, name) for code, name in report.retired if existing[code].level == "province"]
    if not provinces and len(report.retired) * MASS_RETIREMENT_SHARE <= current:
        return None
    named = ", ".join(f"{code} {name}" for code, name in provinces[:5]) + ("…" if len(provinces) > 5 else "")
    if provinces:
        return Conflict(_l("Revision %(revision)s would retire %(retired)s of the %(current)s current codes, provinces "
                           "among them (%(named)s): is the file whole (%(total)s codes in it)? A revision retires a "
                           "few dozen codes at most. Use --allow-mass-retirement if that is intended.",
                           revision=report.revision, retired=len(report.retired), current=current, named=named,
                           total=report.total), code="mass_retirement", field="revision")
    return Conflict(_l("Revision %(revision)s would retire %(retired)s of the %(current)s current codes: is the file "
                       "whole (%(total)s codes in it)? A revision retires a few dozen codes at most. Use "
                       "--allow-mass-retirement if that is intended.",
                       revision=report.revision, retired=len(report.retired), current=current,
                       total=report.total), code="mass_retirement", field="revision")


def get(code: str, field: str = "division_code") -> Division:
    """The division `code`; a refusal names `field`, where the caller read the code (the API's `division`)."""
    check_code_format(code, field)
    division = db.session.get(Division, code)
    if division is None:
        raise NotFound(_l("There is no division %(code)s in the loaded GB/T 2260 revisions.", code=code),
                       code="division_not_found", field=field)
    return division


def require_current(code: str, field: str = "division_code") -> Division:
    """A code a new node or scope may use: well-formed, known, not retired."""
    check_code_format(code, field)
    division = db.session.get(Division, code)
    if division is None:
        raise ValidationFailed(_l("There is no division %(code)s in GB/T 2260.", code=code),
                               code="unknown_division_code",
                               field=field)
    if division.retired:
        raise RetiredDivision(_l("Division %(code)s %(name)s was retired in revision %(rev)s.", code=code,
                                 name=division.name, rev=division.retired_in),
                              field=field)
    return division


def retired_among(codes: Iterable[str]) -> dict[str, Division]:
    """The retired divisions among `codes`, by code: what the console marks beside a code it shows."""
    codes = set(codes)
    if not codes:
        return {}
    return {division.code: division for division in db.session.scalars(
        select(Division).where(Division.code.in_(codes), Division.retired.is_(True)))}


def path(division: Division) -> list[Division]:
    """From the province down to `division` itself."""
    chain = [division]
    while chain[-1].parent_code:
        parent = db.session.get(Division, chain[-1].parent_code)
        if parent is None:
            break
        chain.append(parent)
    return list(reversed(chain))


def children(parent_code: str | None, include_retired: bool = False) -> list[Division]:
    query = select(Division).order_by(Division.code)
    query = query.where(Division.level == "province") if parent_code is None else \
        query.where(Division.parent_code == parent_code)
    if not include_retired:
        query = query.where(Division.retired.is_(False))
    return list(db.session.scalars(query))


def search_query(term: str):
    """Code prefix, a part of the Chinese name, or a part of a province's English name (what the
    English console shows, so an English reader can search for what they read)."""
    # NFKC: a Chinese input method in full-width mode types ３６０１ and ｊｉａｎｇｘｉ, which matched nothing.
    term = unicodedata.normalize("NFKC", term).strip()[:50]
    query = select(Division).order_by(Division.retired, Division.code)
    if term.isascii() and term.isdigit():
        return query.where(Division.code.startswith(term))
    english = [code for code, name in ENGLISH_NAMES.items() if term and term.casefold() in name.casefold()]
    return query.where(or_(Division.name.contains(term, autoescape=True), Division.code == term,  # % and _ as typed
                           Division.code.in_(english)))


def counts() -> dict[str, int]:
    rows = db.session.execute(
        select(Division.level, func.count()).where(Division.retired.is_(False)).group_by(Division.level)
    ).all()
    result = {level: 0 for level in LEVEL_ORDER}
    result.update({level: count for level, count in rows})
    result["retired"] = db.session.scalar(select(func.count()).where(Division.retired.is_(True))) or 0
    return result


def latest_revision() -> DivisionRevision | None:
    return db.session.scalar(select(DivisionRevision).order_by(DivisionRevision.id.desc()).limit(1))


def revision_was_loaded(name: str) -> bool:
    """Whether a revision of this name was ever imported here (one moved away from since is a rollback's origin)."""
    return db.session.scalar(select(DivisionRevision.id).where(DivisionRevision.name == name).limit(1)) is not None


def reason_to_keep_loaded_revision() -> str | None:
    """Why a start's bare import of the shipped list (what `make db` runs every time) is to leave the loaded
    revision alone, or None when the shipped list is to be loaded. Kept: a newer revision (refused as older, it
    failed the start) and a rollback from the shipped list with --allow-older (which the next start undid,
    retiring its codes again). Loaded: nothing yet, the shipped list itself, or an older revision loaded while
    the shipped one never was, which is the last release's list under a release that ships a newer one."""
    latest = latest_revision()
    shipped = DEFAULT_REVISION
    if latest is None or latest.name == shipped:
        return None
    if is_older_revision(shipped, latest.name):
        return f"revision {latest.name} is loaded, newer than the shipped {shipped}: nothing imported"
    if revision_was_loaded(shipped):
        return (f"revision {latest.name} is loaded, rolled back from the shipped {shipped}: nothing imported; "
                f"`flask divisions import --revision {shipped}` loads the shipped list again")
    return None


def describe(code: str) -> dict:
    """SPEC §4 `GET /api/v1/divisions/{code}` and `flask divisions show`: a division of the loaded list,
    or the nation. The list has no row for 100000, but it is the nation's code (the ministry's node id
    starts with it), so it is answered as a division above the provinces, at level "nation". Provinces
    keep `parent: null`, as the standard's list has them."""
    if code == NATION_CODE:
        return {"code": NATION_CODE, "name": NATION_NAME, "level": "nation", "parent": None,
                "path": [NATION_CODE], "path_names": [NATION_NAME], "revision": None, "retired": False,
                "retired_in": None}
    return to_dict(get(code))


def to_dict(division: Division) -> dict:
    """SPEC §4 `GET /api/v1/divisions/{code}` for a division of the list."""
    chain = path(division)
    return {
        "code": division.code, "name": division.name, "level": division.level,
        "parent": division.parent_code, "path": [d.code for d in chain],
        "path_names": [d.name for d in chain], "revision": division.revision,
        "retired": division.retired, "retired_in": division.retired_in,
    }
