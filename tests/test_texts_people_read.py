"""Notes, reasons and display names people read: a bidi override or a control character makes one
read otherwise than it is ("江西省\u202e厅安公" shows as 江西省公安厅), and PostgreSQL refuses NUL, so
the console answered 500 there. Each door refuses them, as A.1 names are refused."""

from __future__ import annotations

import re

import pytest

from app.admission import applications
from app.admission.models import Application, EnrollmentToken, Node
from app.auth.models import User
from app.extensions import db
from app.health.models import NodeHealth
from tests.conftest import Console
from tests.factories import node_document

MISLEADING = ["江西省\u202e厅安公", "a\u0085b", "a\x00b", "a\x1bb", "\u2066x\u2069"]


@pytest.fixture
def jx(app, make_user):
    """The minister's and a provincial admin's consoles, a pending application and an active node."""
    minister = make_user("minister")
    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    document = node_document()
    node = applications.approve(applications.submit_by_user(document, by=jx_admin),
                                by=minister)
    pending = node_document()
    application = applications.submit_by_user(pending, by=jx_admin)
    db.session.commit()
    consoles = {}
    for name in ("minister", "jx-admin"):
        consoles[name] = Console(app.test_client())
        consoles[name].login(name)
    return consoles, node.node_id, application.id


def field_error(response) -> str:
    """The refusal beside the field of a form sent back (422) with what was typed still in it."""
    assert response.status_code == 422
    return re.search(r'<div class="error" id="[a-z-]+-error-1">([^<]*)<', response.get_data(as_text=True)).group(1)


@pytest.mark.parametrize("text", MISLEADING)
def test_console_refuses_a_misleading_note_reason_or_name(jx, text):
    consoles, node_id, application_id = jx
    minister, jx_admin = consoles["minister"], consoles["jx-admin"]
    html = minister.post_form("/tokens/", {"division_code": "360000", "ttl": "7d", "note": text}).get_data(as_text=True)
    assert "备注：含有控制字符" in html
    html = minister.post_form("/users/new", {"username": "eye", "password": "Correct-Horse-9x", "role": "auditor",
                                             "scopes": "", "display_name": text}).get_data(as_text=True)
    assert "名称：含有控制字符" in html
    html = minister.post_form("/users/jx-admin", {"role": "provincial_admin", "scopes": "360000", "active": "y",
                                                  "display_name": text}).get_data(as_text=True)
    assert "名称：含有控制字符" in html
    asked = jx_admin.post_form(f"/nodes/{node_id}", {"reason": text}, action=f"/nodes/{node_id}/request-suspension")
    assert "理由：含有控制字符" in field_error(asked)
    suspended = minister.post_form(f"/nodes/{node_id}", {"reason": text}, action=f"/nodes/{node_id}/suspend")
    assert "理由：含有控制字符" in field_error(suspended)
    window = minister.post_form(f"/nodes/{node_id}", {"hours": "2", "note": text},
                                action=f"/health/{node_id}/maintenance")
    assert "备注：含有控制字符" in field_error(window)
    rejected = minister.post_form(f"/applications/{application_id}", {"reason": text},
                                  action=f"/applications/{application_id}/reject")
    assert "理由：含有控制字符" in field_error(rejected)
    db.session.expire_all()
    node = db.session.get(Node, node_id)
    assert node.status == "active" and not node.suspension_requested
    assert db.session.get(Application, application_id).status == "pending"
    assert db.session.scalar(db.select(EnrollmentToken)) is None and db.session.get(NodeHealth, node_id) is None
    assert {user.display_name for user in db.session.scalars(db.select(User))} == {""}


def test_a_rejection_reason_may_take_several_lines(jx):
    consoles, _, application_id = jx
    rejected = consoles["minister"].post_form(f"/applications/{application_id}", {"reason": "证书不符\r\n请重新申请"},
                                              action=f"/applications/{application_id}/reject")
    assert rejected.status_code == 302
    db.session.expire_all()
    application = db.session.get(Application, application_id)
    assert application.status == "rejected" and application.reason == "证书不符\n请重新申请"  # one line break, as typed


def test_cli_refuses_a_misleading_note_reason_or_name(jx, runner):
    _, node_id, application_id = jx
    text = MISLEADING[0]
    for args in (["tokens", "create", "--division", "360000", "--user", "minister", "--note", text],
                 ["users", "create", "--role", "auditor", "--username", "eye", "--name", text],
                 ["nodes", "suspend", node_id, "--reason", text, "--user", "minister"],
                 ["applications", "reject", application_id, "--reason", text, "--user", "minister"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 1 and "contains control characters" in result.output, args


def test_cli_refuses_an_argument_that_is_not_utf8(jx, runner):
    """Bytes that are not UTF-8 reach a command as lone surrogates (Python decodes argv with
    surrogateescape); no database stores one, and each of these ended in a UnicodeEncodeError traceback."""
    _, node_id, application_id = jx
    name = "\udcbd\udcad"  # what argv gives for 江 typed in GBK under a UTF-8 locale
    for args in (["users", "unlock", name],
                 ["tokens", "create", "--division", "360000", "--user", name],
                 ["users", "create", "--role", "auditor", "--username", "eye", "--name", name],
                 ["applications", "show", name],
                 ["applications", "reject", name, "--reason", "重复申请", "--user", "minister"],
                 ["nodes", "list", "--province", name, "--user", "minister"],
                 ["audit", "verify", "--anchor", "1:" + name * 32]):
        result = runner.invoke(args=args)
        assert result.exit_code == 2 and "not UTF-8" in result.output, (args, result.output, result.exception)


def test_a_note_reason_or_name_longer_than_its_column_is_refused_at_every_door_not_cut_short(jx, runner):
    """The CLI's doors cut each of these to its column's length without a word, and the console refused a long
    reason as if none had been given ("需要填写理由", the typed reason gone with the redirect)."""
    consoles, node_id, application_id = jx
    minister = consoles["minister"]
    page = minister.client.get(f"/nodes/{node_id}").get_data(as_text=True)
    assert re.search(r'<input name="reason"[^>]* maxlength="500"', page)  # the browser holds the limit as typed
    assert 'maxlength="500"' in minister.client.get(f"/applications/{application_id}").get_data(as_text=True)
    suspended = minister.post_form(f"/nodes/{node_id}", {"reason": "理" * 501}, action=f"/nodes/{node_id}/suspend")
    assert "理由：超过 500 个字符" in field_error(suspended)
    rejected = minister.post_form(f"/applications/{application_id}", {"reason": "理" * 501},
                                  action=f"/applications/{application_id}/reject")
    assert "理由：超过 500 个字符" in field_error(rejected)
    window = minister.post_form(f"/nodes/{node_id}", {"hours": "2", "note": "注" * 201},
                                action=f"/health/{node_id}/maintenance")
    assert "备注：超过 200 个字符" in field_error(window)
    for args, message in (
            (["tokens", "create", "--division", "360000", "--user", "minister", "--note", "注" * 201], "Note"),
            (["users", "create", "--role", "auditor", "--username", "eye", "--name", "名" * 121], "Name"),
            (["nodes", "suspend", node_id, "--reason", "理" * 501, "--user", "minister"], "Reason"),
            (["applications", "reject", application_id, "--reason", "理" * 501, "--user", "minister"], "Reason"),
            (["health", "maintenance", node_id, "--hours", "2", "--note", "注" * 201, "--user", "minister"], "Note")):
        result = runner.invoke(args=args)
        assert result.exit_code == 1 and f"{message}: longer than" in result.output, (args[:2], result.output)
    db.session.expire_all()
    assert db.session.get(Node, node_id).status == "active" and db.session.get(NodeHealth, node_id) is None
    assert db.session.get(Application, application_id).status == "pending"
    assert db.session.scalar(db.select(EnrollmentToken)) is None
    assert [user.username for user in db.session.scalars(db.select(User).order_by(User.username))] == \
        ["jx-admin", "minister"]
    at_limit = minister.post_form(f"/nodes/{node_id}", {"reason": "理" * 500}, action=f"/nodes/{node_id}/suspend")
    assert at_limit.status_code == 302
    db.session.expire_all()
    assert db.session.get(Node, node_id).status_reason == "理" * 500


def test_a_rejection_typed_up_to_the_textareas_limit_is_taken_whatever_its_line_breaks(jx):
    """A browser holds a textarea's maxlength=500 counting a line break as one character, and sends it as CR LF:
    500 characters typed on 11 lines arrive as 510, and were refused as longer than 500."""
    consoles, _node_id, application_id = jx
    typed = "\n".join(["理" * 45] * 10 + ["由" * 40])
    assert len(typed) == 500
    sent = typed.replace("\n", "\r\n")
    rejected = consoles["minister"].post_form(f"/applications/{application_id}", {"reason": sent},
                                              action=f"/applications/{application_id}/reject")
    assert rejected.status_code == 302
    db.session.expire_all()
    application = db.session.get(Application, application_id)
    assert application.status == "rejected" and application.reason == typed


def test_the_blanks_an_application_refuses_are_the_reference_nodes_for_names():
    """One list of characters that show as nothing (docs/protocol.md §8): the reference node's name pattern
    (common.schema.json: a name needs one character outside it) and A.1's texts (app.readable) must not drift."""
    import unicodedata

    from app.appnode import validation
    from app.readable import BIDI_CONTROLS, BLANKS, shows_nothing

    pattern = validation.schema("common")["$defs"]["name"]["pattern"]
    needed = re.search(r"\]\*\[\^([^\]]*)\]", pattern).group(1)  # the class of the one character a name needs
    refused = set()
    for first, last in re.findall(r"\\u([0-9a-f]{4})(?:-\\u([0-9a-f]{4}))?", needed):
        refused.update(map(chr, range(int(first, 16), int(last or first, 16) + 1)))
    blanks = {ch for ch in refused if unicodedata.category(ch) != "Cc" and ch not in BIDI_CONTROLS}
    assert blanks == BLANKS
    assert shows_nothing("".join(sorted(blanks))) and shows_nothing("\U000e0041\u2062 ")
    assert not any(shows_nothing(text) for text in ("a", "\u200ba", "张\u00a0三", "\U0001f600", ".", "\x7f"))


# Texts that show as nothing (app.readable.shows_nothing), as A.1's names refuse them: a reason of them is no reason.
INVISIBLE = ["\u200b", "\ufeff\u3000", "\u00a0\u2060\u00ad", "\u3164\ufe0f"]


@pytest.mark.parametrize("text", INVISIBLE)
def test_console_refuses_a_reason_that_shows_as_nothing_as_it_refuses_none(jx, text):
    consoles, node_id, application_id = jx
    minister, jx_admin = consoles["minister"], consoles["jx-admin"]
    asked = jx_admin.post_form(f"/nodes/{node_id}", {"reason": text}, action=f"/nodes/{node_id}/request-suspension")
    assert "需要填写理由" in field_error(asked)
    suspended = minister.post_form(f"/nodes/{node_id}", {"reason": text}, action=f"/nodes/{node_id}/suspend")
    assert "需要填写理由" in field_error(suspended)
    rejected = minister.post_form(f"/applications/{application_id}", {"reason": text + "\r\n\u200b"},
                                  action=f"/applications/{application_id}/reject")
    assert "驳回需要填写理由" in field_error(rejected)
    db.session.expire_all()
    node = db.session.get(Node, node_id)
    assert node.status == "active" and not node.suspension_requested
    assert db.session.get(Application, application_id).status == "pending"


def test_cli_refuses_a_reason_that_shows_as_nothing_as_it_refuses_none(jx, runner):
    from app.admission import nodes
    from app.auth.service import get_user

    _, node_id, application_id = jx
    text = "\ufeff\u3000\u200b"
    for args, message in (
            (["applications", "reject", application_id, "--reason", text, "--user", "minister"], "needs a reason"),
            (["nodes", "request-suspension", node_id, "--reason", text, "--user", "jx-admin"], "reason is required"),
            (["nodes", "suspend", node_id, "--reason", text, "--user", "minister"], "reason is required"),
            (["nodes", "revoke", node_id, "--reason", text, "--user", "minister"], "reason is required")):
        result = runner.invoke(args=args)
        assert result.exit_code == 1 and message in result.output, (args[:2], result.output)
    nodes.request_suspension(db.session.get(Node, node_id), "维护", by=get_user("jx-admin"))
    db.session.commit()
    result = runner.invoke(args=["nodes", "decline-suspension", node_id, "--reason", text, "--user", "minister"])
    assert result.exit_code == 1 and "reason is required" in result.output, result.output
    nodes.suspend(db.session.get(Node, node_id), "维护", by=get_user("minister"))
    db.session.commit()
    result = runner.invoke(args=["nodes", "resume", node_id, "--reason", text, "--user", "minister"])
    assert result.exit_code == 1 and "reason is required" in result.output, result.output
    db.session.expire_all()
    assert db.session.get(Node, node_id).status == "suspended"
    assert db.session.get(Application, application_id).status == "pending"


def test_an_optional_note_reason_or_name_that_shows_as_nothing_is_stored_empty(jx, runner):
    """As an optional A.1 text is (information.text_field): a note of zero-width characters reads as none."""
    from app.admission import nodes
    from app.audit.models import AuditRecord
    from app.auth.service import get_user

    consoles, node_id, _ = jx
    text = "\u200b\ufeff\u3000"
    created = consoles["minister"].post_form("/tokens/", {"division_code": "360000", "ttl": "7d", "note": text})
    assert created.status_code == 200 and "含有控制字符" not in created.get_data(as_text=True)
    edited = consoles["minister"].post_form("/users/jx-admin", {"role": "provincial_admin", "scopes": "360000",
                                                                "active": "y", "display_name": text})
    assert edited.status_code == 302
    for args in (["users", "create", "--role", "auditor", "--username", "eye", "--name", text],
                 ["health", "maintenance", node_id, "--hours", "2", "--note", text, "--user", "minister"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0, (args[:2], result.output)
    nodes.request_suspension(db.session.get(Node, node_id), "维护", by=get_user("jx-admin"))
    db.session.commit()
    result = runner.invoke(args=["nodes", "withdraw-suspension", node_id, "--reason", text, "--user", "jx-admin"])
    assert result.exit_code == 0, result.output
    db.session.expire_all()
    assert db.session.scalar(db.select(EnrollmentToken.note)) == ""
    assert {user.display_name for user in db.session.scalars(db.select(User))} == {""}
    assert db.session.get(NodeHealth, node_id).maintenance_note == ""
    withdrawn = db.session.scalar(db.select(AuditRecord).where(AuditRecord.action == "node.withdraw_suspension"))
    assert withdrawn.detail["reason"] == ""
