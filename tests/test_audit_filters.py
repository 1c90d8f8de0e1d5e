"""The audit log's filters mean the same on SQLite and PostgreSQL, and show what they filter by."""

from __future__ import annotations

import re

from app.audit import service
from app.extensions import db
from tests.test_audit_export import KEYS, export, exports, read_csv


def seed_targets() -> None:
    for target in ("node-1", "NODE-2", "Node_3", "Éclair", "éclair", "节点-1"):
        service.record("node.suspend", target, {}, actor="minister")
    service.record("NODE.RESUME", "node-1", {}, actor="minister")  # as a record edited in the database might hold
    db.session.commit()


def listed_targets(client, **query) -> list[str]:
    page = client.get("/audit/", query_string={"actor": "minister", **query}).get_data(as_text=True)
    return re.findall(r"<td>([^<]*)</td><td>[^<]*</td>\s*<td class=\"detail\">", page)


def test_the_target_and_action_filters_ignore_the_case_of_latin_letters_on_either_database(admin_console, runner):
    """SQLite's LIKE ignores the case of ASCII letters, PostgreSQL's does not: target=NODE-1 listed node-1 on one
    and nothing on the other. Both ignore it now, in the list, the console's file and the command's; other
    letters are compared as stored on both (SQLite's lower() knows only ASCII), and % and _ are still typed."""
    seed_targets()
    client = admin_console.client
    assert sorted(listed_targets(client, target="NODE-")) == ["NODE-2", "node-1", "node-1"]
    assert listed_targets(client, target="node-1", action="node.s") == ["node-1"]
    assert sorted(listed_targets(client, action="NODE.")) == sorted(["node-1", "NODE-2", "Node_3", "Éclair", "éclair",
                                                                      "节点-1", "node-1"])
    assert listed_targets(client, target="node_") == ["Node_3"]  # _ is no wildcard
    assert listed_targets(client, target="Éclair") == ["Éclair"]
    assert listed_targets(client, target="节点") == ["节点-1"]
    rows = read_csv(export(client, target="NODE-1").data)
    assert [row["target"] for row in rows] == ["node-1", "node-1"]
    result = runner.invoke(args=["audit", "export", "--target", "NODE-1", "--action", "Node.Suspend"])
    assert [row["target"] for row in read_csv(result.stdout_bytes, KEYS)] == ["node-1"]


def test_a_date_typed_without_its_zeros_is_shown_as_the_date_box_writes_it(admin_console, runner):
    """since=2026-1-1 (a hand-typed address) filtered by the day, but a date box shows only 2026-01-01: the box was
    empty, and the next Filter dropped the date without a word. The filter now holds the day as the box writes it,
    in the box, the export's hidden fields and its record."""
    seed_targets()
    client = admin_console.client
    page = client.get("/audit/", query_string={"since": "2000-1-1", "until": "9999-12-1"}).get_data(as_text=True)
    assert '<input type="date" name="since" value="2000-01-01">' in page
    assert '<input type="date" name="until" value="9999-12-01">' in page
    assert '<input type="hidden" name="since" value="2000-01-01">' in page
    assert "Éclair" in page and "不是日期" not in page
    export(client, since="2000-1-1")
    assert exports()[-1].detail["filters"] == {"since": "2000-01-01"}
    assert runner.invoke(args=["audit", "export", "--until", "9999-1-01"]).exit_code == 0
    assert exports()[-1].detail["filters"] == {"until": "9999-01-01"}


def test_the_actor_filter_finds_a_user_typed_in_another_case(admin_console, make_user, runner):
    """Usernames ignore case at sign-in and the record keeps the name as created: `ZhangSan` signing in as
    `zhangsan` is recorded as `ZhangSan`, and actor=zhangsan found nothing. Other actors are still compared
    whole: "minister" is no prefix of anyone."""
    make_user("ZhangSan")
    service.record("node.suspend", "node-1", {}, actor="ZhangSan")
    service.record("node.suspend", "node-2", {}, actor="ministers")
    db.session.commit()
    client = admin_console.client
    assert listed_targets(client, actor="zhangsan") == ["node-1"]
    assert listed_targets(client, actor="ZHANGSAN") == ["node-1"]
    assert listed_targets(client, actor="ZhangSan") == ["node-1"]
    assert listed_targets(client, actor="zhang") == []
    assert listed_targets(client, actor="Ministers") == []  # no such user: as typed
    result = runner.invoke(args=["audit", "export", "--actor", "zhangsan"])
    assert [row["target"] for row in read_csv(result.stdout_bytes, KEYS)] == ["node-1"]


def test_the_actor_filter_finds_refused_sign_ins_of_an_account_however_they_were_typed(app, make_user):
    """A refused sign-in was recorded under the name as typed: the filter found ZhangSan's failed sign-ins only when
    the auditor typed the same miscasing (ZHANGSAN) as the guesser. They are recorded under the account's name as
    stored, the typed name in the detail; a name no account has is still recorded as typed (review of this stop's
    diff)."""
    from app.audit.models import AuditRecord
    from app.auth import service as users
    from app.auth.throttle import LoginRefused

    make_user("ZhangSan")
    for typed in ("ZHANGSAN", "nobody-here"):
        try:
            users.authenticate(typed, "wrong-Password-1", "10.0.0.7")
        except LoginRefused:
            pass
    rows = db.session.execute(db.select(AuditRecord.actor, AuditRecord.target, AuditRecord.detail)
                              .where(AuditRecord.action == "auth.login_failed").order_by(AuditRecord.seq)).all()
    assert [(actor, target) for actor, target, _ in rows] == [("ZhangSan", "ZhangSan"), ("nobody-here", "nobody-here")]
    assert rows[0].detail["typed"] == "ZHANGSAN" and "typed" not in rows[1].detail
    from app.audit.search import actors_named

    assert set(actors_named("zhangsan")) == {"zhangsan", "ZhangSan"}


def test_the_internal_actors_are_no_account_names(app, make_user, runner):
    """Typing "system" listed an account named System among the scheduler's records (review of this stop's diff):
    "cli", "system" and "anonymous" are reserved, and the filter takes them as typed."""
    from app.audit.search import actors_named

    for name in ("system", "CLI", "Anonymous"):
        result = runner.invoke(args=["users", "create", "--role", "auditor", "--username", name, "--password-stdin"],
                               input="Auditor-Pass-77\n")
        assert result.exit_code == 1 and "names actions of the system itself" in result.output, result.output
    assert actors_named("system") == ["system"]
    from app.audit.models import AuditRecord
    from app.auth import service as users
    from app.auth.throttle import LoginRefused

    try:  # a stranger typing "system" at the sign-in page is not recorded as the system
        users.authenticate("System", "wrong-Password-1", "10.0.0.7")
    except LoginRefused:
        pass
    record = db.session.scalar(db.select(AuditRecord).where(AuditRecord.action == "auth.login_failed"))
    assert (record.actor, record.detail["typed"]) == ("anonymous", "System")
