"""A provincial admin's scope that a newer GB/T 2260 revision retires: the account can still be edited and
disabled, the console shows the retired code, and the import that retires it names the account."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from app.audit.models import AuditRecord
from app.auth.models import User
from app.divisions import service as divisions
from app.extensions import db
from tests.conftest import Console

OLDER = divisions.DATA_DIR / "gb2260-2019.04.csv"
REFUSAL = "区划 130521 邢台县 已于 2023 版撤销。"


@pytest.fixture
def xingtai(app, make_user):
    """xt-admin, a provincial admin scoped to 130521 邢台县 while revision 2019.04 was the current one."""
    divisions.import_revision(OLDER.read_bytes(), "2019.04", allow_older=True)
    db.session.commit()
    return make_user("xt-admin", "provincial_admin", ("130521",))


def retire_xingtai():
    """The 2023 revision: 130521 is gone (merged into 130505 任泽区)."""
    report = divisions.import_revision(divisions.DEFAULT_FILE.read_bytes(), "2023")
    db.session.commit()
    assert ("130521", "邢台县") in report.retired
    return report


def scopes_shown(html: str) -> str:
    match = re.search(r'<input[^>]*name="scopes"[^>]*>', html)
    assert match, "the form has no scope box"
    value = re.search(r'value="([^"]*)"', match.group(0))
    return value.group(1) if value else ""


def refusals(response) -> list[str]:
    """What the page says went wrong: the fields' errors and the flashes."""
    html = response.get_data(as_text=True)
    return re.findall(r'<div class="error"[^>]*>([^<]*)<', html) + \
        re.findall(r'class="flash error"[^>]*>([^<]*)<', html)


def user_updates(username: str) -> list[dict]:
    return [record.detail for record in db.session.scalars(
        select(AuditRecord).where(AuditRecord.action == "user.update", AuditRecord.target == username)
        .order_by(AuditRecord.seq))]


def test_a_provincial_admin_whose_scope_was_retired_is_disabled_through_the_console(xingtai, app, admin_console):
    """The reviewer's case: the form, posted back as shown with "active" unchecked, answered 200 with the
    retirement refusal and the account stayed active, still reaching 邢台 by its prefix."""
    signed_in = Console(app.test_client())
    assert signed_in.login("xt-admin").status_code == 302
    assert signed_in.client.get("/").status_code == 200
    retire_xingtai()
    page = admin_console.client.get("/users/xt-admin").get_data(as_text=True)
    assert scopes_shown(page) == "130521"  # the form offers the retired code back as it is

    response = admin_console.post_form("/users/xt-admin", {"display_name": "", "role": "provincial_admin",
                                                           "scopes": scopes_shown(page)})
    assert response.status_code == 302, refusals(response)
    db.session.expire_all()
    user = db.session.scalar(select(User).where(User.username == "xt-admin"))
    assert not user.active and user.scopes == ["130521"]
    [update] = user_updates("xt-admin")
    assert update["before"]["active"] is True and update["after"]["active"] is False
    assert update["before"]["scopes"] == update["after"]["scopes"] == "130521"
    # Signed out everywhere at once, as any disabled account is.
    assert signed_in.client.get("/").status_code == 302


def test_a_retired_scope_is_kept_while_the_name_changes_and_may_then_be_replaced(xingtai, admin_console):
    retire_xingtai()
    kept = admin_console.post_form("/users/xt-admin", {"display_name": "邢台市局", "role": "provincial_admin",
                                                       "scopes": "130521", "active": "y"})
    assert kept.status_code == 302, refusals(kept)
    db.session.expire_all()
    user = db.session.scalar(select(User).where(User.username == "xt-admin"))
    assert (user.display_name, user.scopes, user.active) == ("邢台市局", ["130521"], True)
    assert user_updates("xt-admin")[-1]["after"] == {"display_name": "邢台市局", "role": "provincial_admin",
                                                     "scopes": "130521", "active": True}

    # A current code added beside the retired one, then the retired one removed: both are ordinary edits.
    added = admin_console.post_form("/users/xt-admin", {"display_name": "邢台市局", "role": "provincial_admin",
                                                        "scopes": "130521,130505", "active": "y"})
    assert added.status_code == 302
    replaced = admin_console.post_form("/users/xt-admin", {"display_name": "邢台市局", "role": "provincial_admin",
                                                           "scopes": "130505", "active": "y"})
    assert replaced.status_code == 302
    db.session.expire_all()
    assert db.session.scalar(select(User.scope_codes).where(User.username == "xt-admin")) == "130505"


def test_a_retired_code_is_still_refused_as_a_new_scope(xingtai, make_user, admin_console):
    """Only the codes the account already holds are kept as they are: one added now must be current, for an
    account that holds none (hd-admin), one that holds another retired code (xt-admin, 130526 任县), a new
    account, and an account given the provincial role just now."""
    make_user("hd-admin", "provincial_admin", ("130400",))
    make_user("eye", "auditor")
    retire_xingtai()
    for username, data in (("hd-admin", {"role": "provincial_admin", "scopes": "130400,130521"}),
                           ("xt-admin", {"role": "provincial_admin", "scopes": "130521,130526"}),
                           ("eye", {"role": "provincial_admin", "scopes": "130521"})):
        response = admin_console.post_form(f"/users/{username}", {**data, "display_name": "", "active": "y"})
        html = response.get_data(as_text=True)
        assert response.status_code == 422
        refusal = REFUSAL if "130526" not in data["scopes"] else "区划 130526 任县 已于 2023 版撤销。"
        assert refusal in html, username
    created = admin_console.post_form("/users/new", {"username": "new-admin", "role": "provincial_admin",
                                                     "scopes": "130521", "password": "Xingtai-Admin-1"})
    assert created.status_code == 422 and REFUSAL in created.get_data(as_text=True)
    db.session.expire_all()
    scopes = dict(db.session.execute(select(User.username, User.scope_codes)).all())
    assert (scopes["hd-admin"], scopes["xt-admin"], scopes["eye"]) == ("130400", "130521", "")
    assert "new-admin" not in scopes and user_updates("hd-admin") == user_updates("eye") == []


def test_the_users_page_and_the_edit_form_mark_a_retired_scope(xingtai, make_user, admin_console):
    make_user("hd-admin", "provincial_admin", ("130400",))
    retire_xingtai()
    listing = admin_console.client.get("/users/").get_data(as_text=True)
    row = re.search(r"<tr>\s*<td><a href=\"/users/xt-admin\">.*?</tr>", listing, re.S).group(0)
    assert "130521" in row and "已于 2023 版撤销" in row
    other = re.search(r"<tr>\s*<td><a href=\"/users/hd-admin\">.*?</tr>", listing, re.S).group(0)
    assert "130400" in other and "撤销" not in other

    form = admin_console.client.get("/users/xt-admin").get_data(as_text=True)
    note = re.search(r'<p[^>]*id="retired-scopes"[^>]*>.*?</p>', form, re.S)
    assert note and "130521 邢台县" in note.group(0) and "2023" in note.group(0)
    assert 'id="retired-scopes"' not in admin_console.client.get("/users/hd-admin").get_data(as_text=True)


def test_the_import_that_retires_a_scope_names_its_console_users(xingtai, make_user, runner, admin_console):
    """Beside the nodes on retired codes (retirement_checks): the CLI's report, its JSON and the audit record
    the console's audit log shows. A scope above the retired code (130000, 130500) keeps covering what is left,
    so it is not named."""
    make_user("hb-admin", "provincial_admin", ("130000",))
    make_user("xt-city", "provincial_admin", ("130500",))
    gone = make_user("rx-admin", "provincial_admin", ("130526", "130527"))
    gone.active = False
    db.session.commit()

    result = runner.invoke(args=["divisions", "import", "--revision", "2023"])  # the shipped list
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("  ! ")]
    assert warnings == ["  ! console user rx-admin (disabled) has retired codes 130526, 130527 in its division scope",
                        "  ! console user xt-admin has retired code 130521 in its division scope"]

    record = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "divisions.import")
                                .order_by(AuditRecord.seq.desc())).first()
    assert record.target == "2023" and record.detail["retired_in_use"] == [line[4:] for line in warnings]
    audit_page = admin_console.client.get("/audit/?action=divisions.import").get_data(as_text=True)
    assert "console user xt-admin has retired code 130521 in its division scope" in audit_page

    # The report object the CLI prints, as --json gives it.
    divisions.import_revision(OLDER.read_bytes(), "2019.04", allow_older=True)
    db.session.commit()
    report = divisions.import_revision(divisions.DEFAULT_FILE.read_bytes(), "2023")
    assert "console user xt-admin has retired code 130521 in its division scope" in report.to_dict()["retired_in_use"]


def test_the_edit_forms_note_on_retired_scopes_reads_as_each_language_writes(xingtai, make_user, admin_console):
    """Its sentences were joined with a space ("…现行代码。 130526…"), and on the English console the county's
    Chinese name sat in lang="en" unmarked."""
    make_user("rx-admin", "provincial_admin", ("130521", "130526"))
    retire_xingtai()

    def note() -> str:
        form = admin_console.client.get("/users/rx-admin").get_data(as_text=True)
        return re.search(r'<p[^>]*id="retired-scopes"[^>]*>(.*?)</p>', form, re.S).group(1)

    chinese = note()
    assert "请换成现行代码。130526 任县" in chinese and "。 " not in chinese, chinese
    admin_console.client.get("/lang/en")
    english = note()
    assert ('130521 <span lang="zh-CN">邢台县</span> was retired in GB/T 2260 revision 2023: it still covers what '
            'it did, but replace it with a current code. 130526 <span lang="zh-CN">任县</span> was retired'
            in english), english
