"""The node page's maintenance form: pages drawn before another admin changed the window, its heading, and nodes
that are not polled."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.admission import nodes
from app.audit.models import AuditRecord
from app.auth.models import User
from app.database import utcnow
from app.extensions import db
from app.health import maintenance, service
from app.health.models import NodeHealth
from app.i18n import local_time
from tests.conftest import Console, csrf_token
from tests.test_admission_review import admit


@pytest.fixture
def node(make_user):
    make_user("jx-admin2", "provincial_admin", ("360000",))
    return admit(make_user("jx-admin", "provincial_admin", ("360000",)), make_user("minister"))


def admin(app, username: str) -> Console:
    console = Console(app.test_client())
    console.login(username)
    return console


def save_from(console: Console, page: str, node, data: dict):
    """The maintenance form of `page` saved as a browser saves it: the hidden fields as the page drew them."""
    fields = dict(re.findall(r'<input[^>]*name="(seen_window)"[^>]*value="([^"]*)"', page))
    return console.client.post(f"/health/{node.node_id}/maintenance",
                               data={**fields, **data, "csrf_token": csrf_token(page)})


def window(node_id: str) -> tuple:
    db.session.expire_all()
    health = db.session.get(NodeHealth, node_id)
    return health.maintenance_until, health.maintenance_note


def maintenance_actors(node_id: str) -> list[str]:
    return list(db.session.scalars(select(AuditRecord.actor).where(AuditRecord.action == "health.maintenance",
                                                                   AuditRecord.target == node_id)))


def test_a_window_set_since_the_page_loaded_is_not_replaced_by_its_form(app, node):
    """B's page showed no window; A set 24 hours with a note; B saved 1 hour with another note, was told "saved",
    and A's window ended in an hour with its note gone. Now B is told what the window is, at the length field."""
    page_url = f"/nodes/{node.node_id}"
    first, second = admin(app, "jx-admin"), admin(app, "jx-admin2")
    stale_page = second.client.get(page_url).get_data(as_text=True)
    first.post_form(page_url, {"hours": "24", "note": "核心交换机升级"}, action=f"/health/{node.node_id}/maintenance")
    set_window = window(node.node_id)

    response = save_from(second, stale_page, node, {"hours": "1", "note": "证书轮换"})

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    with app.test_request_context():
        shown_until = local_time(set_window[0])
    assert (f'<div class="error" id="hours-error-1">本页载入后维护窗口已有变更：现在的窗口至 {shown_until}，'
            f'由 jx-admin 设置。请核对后再保存。</div>') in page
    assert 'name="note" type="text" value="证书轮换"' in page
    assert window(node.node_id) == set_window
    assert maintenance_actors(node.node_id) == ["jx-admin"]

    # The page shown with the refusal draws the window as it now is: saved from it, B's choice stands.
    assert save_from(second, page, node, {"hours": "1", "note": "证书轮换"}).status_code == 302
    assert window(node.node_id)[1] == "证书轮换"


def test_keeping_the_end_of_a_window_replaced_since_the_page_loaded_is_refused(app, node):
    """B's page was drawn during A's first window; A replaced it with another and its note; "keep the current end"
    from B's page wrote B's note over A's new one."""
    page_url = f"/nodes/{node.node_id}"
    first, second = admin(app, "jx-admin"), admin(app, "jx-admin2")
    first.post_form(page_url, {"hours": "1", "note": "升级"}, action=f"/health/{node.node_id}/maintenance")
    stale_page = second.client.get(page_url).get_data(as_text=True)
    first.post_form(page_url, {"hours": "24", "note": "机房搬迁"}, action=f"/health/{node.node_id}/maintenance")
    replaced = window(node.node_id)

    response = save_from(second, stale_page, node, {"hours": "keep", "note": "升级，第二天"})

    assert response.status_code == 422
    assert "本页载入后维护窗口已有变更" in response.get_data(as_text=True)
    assert window(node.node_id) == replaced


def test_a_length_from_a_page_drawn_before_the_window_was_ended_is_refused(app, node):
    page_url = f"/nodes/{node.node_id}"
    first, second = admin(app, "jx-admin"), admin(app, "jx-admin2")
    first.post_form(page_url, {"hours": "1", "note": "升级"}, action=f"/health/{node.node_id}/maintenance")
    stale_page = second.client.get(page_url).get_data(as_text=True)
    first.post_form(page_url, {}, action=f"/health/{node.node_id}/maintenance/end")

    response = save_from(second, stale_page, node, {"hours": "4", "note": "升级"})

    assert response.status_code == 422
    assert ('<div class="error" id="hours-error-1">本页载入后维护窗口已有变更：现在没有进行中的维护窗口。'
            '请核对后再保存。</div>') in response.get_data(as_text=True)
    assert not service.in_maintenance(db.session.get(NodeHealth, node.node_id))


def test_a_window_that_ran_out_by_itself_is_no_change_for_a_new_length(app, node):
    """The page saw a window that has since ended at its time, and a round has cleared it since: nobody changed it,
    and a new length is saved (the page was held to the window's end, and refused once the round had run)."""
    from tests.test_health_state import Result

    page_url = f"/nodes/{node.node_id}"
    console = admin(app, "jx-admin")
    console.post_form(page_url, {"hours": "1", "note": "升级"}, action=f"/health/{node.node_id}/maintenance")
    page = console.client.get(page_url).get_data(as_text=True)  # drawn while the window lasts
    db.session.get(NodeHealth, node.node_id).maintenance_until = utcnow() - timedelta(seconds=1)
    db.session.commit()
    service.apply_round([Result(node.node_id, True)])  # the round after the window's end

    assert save_from(console, page, node, {"hours": "4", "note": "再次升级"}).status_code == 302
    until, note = window(node.node_id)
    assert note == "再次升级" and until - utcnow() > timedelta(hours=3.9)


def test_a_note_edited_since_the_page_loaded_is_not_saved_over(app, node):
    """A edited the note of the window, keeping its end; B's page, drawn before, kept the end too and wrote B's note
    over A's: the page was held to the window's end alone (review of this stop's diff)."""
    page_url = f"/nodes/{node.node_id}"
    first, second = admin(app, "jx-admin"), admin(app, "jx-admin2")
    first.post_form(page_url, {"hours": "4", "note": "核心交换机升级"}, action=f"/health/{node.node_id}/maintenance")
    stale_page = second.client.get(page_url).get_data(as_text=True)
    first.post_form(page_url, {"hours": "keep", "note": "核心交换机升级；延至机房断电结束"},
                    action=f"/health/{node.node_id}/maintenance")
    edited = window(node.node_id)

    response = save_from(second, stale_page, node, {"hours": "keep", "note": "核心交换机升级（B 补充）"})

    assert response.status_code == 422 and "本页载入后维护窗口已有变更" in response.get_data(as_text=True)
    assert window(node.node_id) == edited


def test_a_refusal_of_the_note_still_holds_the_page_to_the_window_it_was_drawn_after(app, node):
    """B's page showed no window; A set one; B's note was refused as too long, and the page that said so was drawn
    for A's window: B's next save replaced it without A's change ever being named (review of this stop's diff)."""
    page_url = f"/nodes/{node.node_id}"
    first, second = admin(app, "jx-admin"), admin(app, "jx-admin2")
    stale_page = second.client.get(page_url).get_data(as_text=True)
    first.post_form(page_url, {"hours": "24", "note": "核心交换机升级"}, action=f"/health/{node.node_id}/maintenance")
    set_window = window(node.node_id)

    refused = save_from(second, stale_page, node, {"hours": "1", "note": "长" * 201})
    assert refused.status_code == 422 and "本页载入后维护窗口已有变更" not in refused.get_data(as_text=True)
    again = save_from(second, refused.get_data(as_text=True), node, {"hours": "1", "note": "证书轮换"})

    assert again.status_code == 422 and "本页载入后维护窗口已有变更" in again.get_data(as_text=True)
    assert window(node.node_id) == set_window


def test_a_record_number_no_page_draws_is_held_to_nothing(app, node):
    """A hand-made POST with a 5,000-digit number: int() refused it with a ValueError, a 500 (review of this
    stop's diff); the lifecycle forms read theirs the same way."""
    page_url = f"/nodes/{node.node_id}"
    console = admin(app, "jx-admin")
    page = console.client.get(page_url).get_data(as_text=True)
    response = console.client.post(f"/health/{node.node_id}/maintenance",
                                   data={"seen_window": "9" * 5000, "hours": "1", "note": "升级",
                                         "csrf_token": csrf_token(page)})
    assert response.status_code == 302
    minister = admin(app, "minister")
    page = minister.client.get(page_url).get_data(as_text=True)
    response = minister.client.post(f"{page_url}/suspend", data={"seen_change": "9" * 5000, "reason": "审计",
                                                                 "csrf_token": csrf_token(page)})
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(type(node), node.node_id).status == "suspended"


def test_the_cli_door_is_held_to_no_page(app, node, make_user):
    """`seen_window` is the console's: a caller that saw no page passes nothing and sets the window as it is."""
    minister = db.session.scalar(select(User).where(User.username == "minister"))
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "升级", by=minister)
    db.session.commit()
    assert maintenance.schedule_maintenance(db.session.merge(node), "4", "改期", by=minister) is not None


def test_the_maintenance_form_has_a_heading_of_its_own(app, node):
    """Moving by heading, the form was found under "Recent events" or "Uptime, 90 days"."""
    page = admin(app, "jx-admin").client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    section = page[page.index('<section class="card health">'):]
    before_form = section[:section.index('id="maintenance-form"')]
    assert re.findall(r"<h[1-6][^>]*>[^<]*", before_form)[-1] == '<h3 id="maintenance-heading">维护窗口'
    assert 'id="maintenance-form" aria-labelledby="maintenance-heading"' in section


def test_a_suspended_node_s_health_says_it_is_not_polled_and_offers_no_window(app, node):
    """It read "Health: Unknown · Last poll ... connection refused" with an offer of a maintenance window, as if
    the node were polled still."""
    minister = db.session.scalar(select(User).where(User.username == "minister"))
    nodes.suspend(db.session.merge(node), "证书过期", by=minister)
    db.session.commit()
    page = admin(app, "jx-admin").client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    section = page[page.index('<section class="card health">'):page.index("</section>",
                                                                          page.index('<section class="card health">'))]
    assert '<span class="tag muted" id="health-status">不巡检</span>' in section
    assert "节点已暂停，恢复之前不巡检；以下为暂停之前的记录。" in section
    assert 'id="maintenance-form"' not in section and "维护窗口" not in section


def test_a_window_from_a_page_drawn_before_the_node_was_suspended_is_refused_in_words(app, node):
    """The form is no longer offered once the node is suspended; a page drawn before saved one all the same. A
    window in progress can still be ended."""
    page_url = f"/nodes/{node.node_id}"
    console = admin(app, "jx-admin")
    stale_page = console.client.get(page_url).get_data(as_text=True)
    minister = db.session.scalar(select(User).where(User.username == "minister"))
    nodes.suspend(db.session.merge(node), "证书过期", by=minister)
    db.session.commit()

    response = save_from(console, stale_page, node, {"hours": "4", "note": "升级"})

    assert response.status_code == 422
    assert "已暂停的节点不巡检，恢复之前不能设置维护窗口。" in response.get_data(as_text=True)
    assert not service.in_maintenance(db.session.get(NodeHealth, node.node_id))
    assert maintenance_actors(node.node_id) == []


def test_a_window_of_a_node_suspended_during_it_can_be_ended(app, node):
    page_url = f"/nodes/{node.node_id}"
    console = admin(app, "jx-admin")
    console.post_form(page_url, {"hours": "4", "note": "升级"}, action=f"/health/{node.node_id}/maintenance")
    minister = db.session.scalar(select(User).where(User.username == "minister"))
    nodes.suspend(db.session.merge(node), "证书过期", by=minister)
    db.session.commit()
    page = console.client.get(page_url).get_data(as_text=True)
    assert 'id="maintenance-form"' not in page and 'id="maintenance-end"' in page

    assert console.post_form(page_url, {}, action=f"/health/{node.node_id}/maintenance/end").status_code == 302
    assert not service.in_maintenance(db.session.get(NodeHealth, node.node_id))
