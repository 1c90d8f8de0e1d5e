"""Admission on a code a newer GB/T 2260 revision retires (SPEC §2: flagged, never silently dropped): the import
names the applications waiting on it and the enrollment tokens that could still be used for it, and such a
token is shown, and refused, as not usable."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.admission import tokens
from app.admission.models import EnrollmentToken
from app.database import utcnow
from app.extensions import db
from tests.factories import node_document
from tests.test_retired_scopes import OLDER, retire_xingtai


@pytest.fixture
def hebei(app, make_user):
    """hb-admin, a provincial admin of 河北 while revision 2019.04 (which lists 130521 邢台县) was the current one."""
    from app.divisions import service as divisions

    divisions.import_revision(OLDER.read_bytes(), "2019.04", allow_older=True)
    db.session.commit()
    return make_user("hb-admin", "provincial_admin", ("130000",))


def apply(client, raw: str, division: str):
    return client.post("/api/v1/applications", json=node_document(division),
                       headers={"Authorization": f"Bearer {raw}"})


def test_the_import_that_retires_a_code_names_its_pending_applications_and_unused_tokens(hebei, client, runner):
    """The reviewer's case: the report named nodes and console users only, so the application stayed pending
    (approval refused as retired_division_code) holding its key and endpoint, and the token read "active" yet
    admitted nothing. A token used, revoked or expired admits nothing anyway, and is not named."""
    _, province = tokens.create_token("130000", by=hebei)
    county, _ = tokens.create_token("130521", by=hebei)
    revoked, _ = tokens.create_token("130521", by=hebei)
    expired, _ = tokens.create_token("130521", by=hebei)
    _, used = tokens.create_token("130526", by=hebei)  # 任县, also retired
    db.session.commit()
    waiting = apply(client, province, "130521").get_json()["application_id"]
    assert apply(client, used, "130526").status_code == 201  # used: its application is named, not the token
    tokens.revoke_token(revoked.id, by=hebei)
    expired.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()

    result = runner.invoke(args=["divisions", "import", "--revision", "2023"])  # the shipped list
    assert result.exit_code == 0, result.output
    warnings = [line[4:] for line in result.output.splitlines() if line.startswith("  ! ")]
    assert f"application {waiting} (江西省公安厅) is waiting for review for retired code 130521" in warnings
    assert f"enrollment token {county.prefix}… (unused) is for retired code 130521: it admits nothing now" \
        in warnings
    named = [line for line in warnings if line.startswith("enrollment token")]
    assert named == [f"enrollment token {county.prefix}… (unused) is for retired code 130521: it admits nothing now"]
    assert len([line for line in warnings if line.startswith("application")]) == 2


def test_a_token_for_a_retired_code_is_shown_and_refused_as_not_usable(hebei, client, admin_console):
    """It read "active" (未使用) and was refused only for its body's division, retired or out of its scope."""
    county, raw = tokens.create_token("130521", by=hebei)
    db.session.commit()
    retire_xingtai()
    db.session.expire_all()
    assert db.session.get(EnrollmentToken, county.id).state() == "division_retired"

    for division in ("130521", "130505"):  # the retired code, and 任泽区 which took it over
        response = apply(client, raw, division)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "token_division_retired"

    listing = admin_console.client.get("/tokens/").get_data(as_text=True)
    row = re.search(rf"<tr><td><code>{re.escape(county.prefix)}….*?</tr>", listing, re.S).group(0)
    assert "不可用" in row and "其区划 130521 已于 2023 版撤销。" in row and "撤销</button>" in row
    tokens.revoke_token(county.id, by=hebei)
    db.session.commit()
    assert db.session.scalar(select(EnrollmentToken.revoked_by).where(EnrollmentToken.id == county.id)) == "hb-admin"


def flashes(html: str) -> list[str]:
    return [re.sub(r"\s+", " ", text).strip()
            for text in re.findall(r'<div class="flash[^"]*"[^>]*>(.*?)</div>', html, re.S)]


def test_an_application_for_a_retired_code_says_on_its_page_that_it_is_to_be_rejected(hebei, admin_console):
    """It was found out only on Approve, whose refusal said the code was retired and not what to do instead."""
    from app.admission import applications

    application = applications.submit_by_user(node_document("130521"), by=hebei)
    db.session.commit()
    retire_xingtai()
    page_url = f"/applications/{application.id}"
    page = admin_console.client.get(page_url).get_data(as_text=True)
    division = re.search(r"<dt>行政区划</dt><dd>(.*?)</dd>", page, re.S).group(1)
    assert "已于 2023 版撤销" in division, division  # the marker every list of codes uses
    note = re.search(r'id="retired-division">([^<]*)<', page)
    assert note and "不能批准" in note.group(1) and "驳回" in note.group(1), page
    approve = re.search(r'<button[^>]*id="approve"[^>]*>', page).group(0)
    assert 'aria-describedby="retired-division"' in approve, approve
    # The queue marks it too, as the nodes list marks a node's code: it showed "邢台县 130521" plain.
    queue = admin_console.client.get("/applications/").get_data(as_text=True)
    row = re.search(rf'<tr[^>]*>(?:(?!</tr>).)*href="{page_url}"(?:(?!</tr>).)*</tr>', queue, re.S).group(0)
    assert '<span class="tag bad">代码已撤销</span>' in row, row

    answer = admin_console.post_form(page_url, {}, action=f"{page_url}/approve")
    said = flashes(admin_console.client.get(answer.headers["Location"]).get_data(as_text=True))
    assert any("区划 130521 邢台县 已于 2023 版撤销" in text and "不能批准" in text and "驳回" in text
               for text in said), said
