"""The nodes and applications lists' filters are kept as typed (blanks around them aside) and compared as typed:
they were cut (the vendor and search to 60 characters, the division to 6, a province to its first two digits),
so a long vendor the dropdown offered listed nothing, and a mistyped value listed what it was cut to. A value no
option has is said so at its box, and nothing is listed until it is corrected."""

from __future__ import annotations

import re

import pytest

from app.admission import applications
from app.extensions import db
from tests.factories import node_document


@pytest.fixture
def minister(admin_console):
    from app.auth.models import User

    return db.session.scalar(db.select(User).where(User.username == "minister"))


def admit(minister, division: str = "360100", **fields):
    node = applications.approve(applications.submit_by_user(node_document(division, **fields), by=minister),
                                by=minister)
    db.session.commit()
    return node


def listed(html: str, *nodes) -> list[str]:
    return [node.node_id for node in nodes if f'href="/nodes/{node.node_id}"' in html]


def select_box(html: str, name: str) -> str:
    return re.search(rf'<select name="{name}"[^>]*>.*?</select>', html, re.S).group(0)


def selected(html: str, name: str) -> list[str]:
    return re.findall(r'<option(?: value="([^"]*)")? selected>([^<]*)<', select_box(html, name))


def test_a_vendor_longer_than_60_characters_is_found_and_shown_selected(admin_console, minister):
    vendor = "厂商" * 35  # 70 characters; the form allows 100
    node = admit(minister, vendor=vendor)
    other = admit(minister, vendor=vendor[:60], endpoint="https://other.jx.example")
    page = admin_console.client.get("/nodes/", query_string={"vendor": f" {vendor} "}).get_data(as_text=True)
    assert listed(page, node, other) == [node.node_id]
    assert selected(page, "vendor") == [("", vendor)]
    assert "aria-invalid" not in page


def test_a_long_search_is_kept_as_typed(admin_console, minister):
    node = admit(minister)
    typed = "x" * 61
    page = admin_console.client.get("/nodes/", query_string={"q": typed}).get_data(as_text=True)
    assert re.search(r'name="q" value="([^"]*)"', page).group(1) == typed
    assert listed(page, node) == [] and "没有符合条件的节点" in page


@pytest.mark.parametrize("name, typed, error", [
    ("province", "440000x", "province-error"), ("province", "360100", "province-error"),
    ("status", "bogus", "status-error"), ("capability", "bogus", "capability-error")])
def test_a_node_filter_no_option_has_is_said_so_at_its_box_and_lists_nothing(admin_console, minister, name, typed,
                                                                            error):
    node = admit(minister)
    page = admin_console.client.get("/nodes/", query_string={name: typed}).get_data(as_text=True)
    assert listed(page, node) == []
    box = select_box(page, name)
    assert 'aria-invalid="true"' in box and f'aria-describedby="{error}"' in box, box
    assert selected(page, name) == [(typed, typed)]
    assert re.search(rf'<div class="error" id="{error}">[^<]*“{re.escape(typed)}”[^<]*</div>', page), page
    assert "没有符合条件的节点" not in page  # the error says why the list is empty


@pytest.mark.parametrize("typed", ["360000", "3600", "36"])  # the dropdown's, the tile map's, the CLI's
def test_a_province_filter_lists_the_province(admin_console, minister, typed):
    node = admit(minister)
    outside = admit(minister, "440100", endpoint="https://gd.example")
    page = admin_console.client.get("/nodes/", query_string={"province": typed}).get_data(as_text=True)
    assert listed(page, node, outside) == [node.node_id]
    assert selected(page, "province") == [("360000", "江西")] and "aria-invalid" not in page


def test_an_unknown_sort_is_said_to_be_ignored(admin_console, minister):
    first = admit(minister)
    second = admit(minister, endpoint="https://second.jx.example")
    page = admin_console.client.get("/nodes/", query_string={"sort": "bogus", "desc": "1"}).get_data(as_text=True)
    assert listed(page, first, second) == [first.node_id, second.node_id]
    assert page.index(second.node_id) < page.index(first.node_id)  # by node id, in the direction asked
    assert re.search(r'id="sort-ignored">[^<]*“bogus”[^<]*<', page), page


def test_an_application_filter_by_division_is_kept_as_typed_and_a_malformed_one_said_so(admin_console, minister):
    application = applications.submit_by_user(node_document("360100"), by=minister)
    db.session.commit()
    client = admin_console.client
    for typed in ("3601001", "%", "36_1", "abc"):
        page = client.get("/applications/", query_string={"division": typed}).get_data(as_text=True)
        assert application.id not in page, typed
        box = re.search(r'<input name="division"[^>]*>', page).group(0)
        assert f'value="{typed}"' in box and 'aria-invalid="true"' in box, (typed, box)
        assert 'id="division-error"' in page and "没有符合条件的申请" not in page, typed
    for typed in ("360100", "3601", "36", " 360000 "):
        page = client.get("/applications/", query_string={"division": typed}).get_data(as_text=True)
        assert application.id in page and "aria-invalid" not in page, typed


@pytest.mark.parametrize("name, typed", [("status", "bogus"), ("kind", "bogus")])
def test_an_application_filter_no_option_has_is_said_so_at_its_box(admin_console, minister, name, typed):
    application = applications.submit_by_user(node_document("360100"), by=minister)
    db.session.commit()
    page = admin_console.client.get("/applications/", query_string={name: typed}).get_data(as_text=True)
    assert application.id not in page
    box = select_box(page, name)
    assert 'aria-invalid="true"' in box and selected(page, name) == [(typed, typed)], box
    assert re.search(rf'<div class="error" id="{name}-error">[^<]*“{typed}”[^<]*</div>', page), page


def test_the_applications_division_filter_takes_like_wildcards_as_characters(app, minister):
    """Defence behind the console's check: the query itself escapes % and _ (PostgreSQL and SQLite alike)."""
    applications.submit_by_user(node_document("360100"), by=minister)
    db.session.commit()
    for typed, expected in (("3%", 0), ("36_1", 0), ("3601", 1), ("36", 1)):
        query = applications.queue_query(minister, division=typed)
        assert len(db.session.scalars(query).all()) == expected, typed
