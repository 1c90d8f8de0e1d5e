"""The health console: the node page's latency line and the health events filter."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from app.database import utcnow
from app.extensions import db
from app.health import charts
from app.health.models import HealthEvent, HealthSample
from tests.test_admission_review import admit


@pytest.fixture
def node(make_user):
    return admit(make_user("jx-admin", "provincial_admin", ("360000",)), make_user("minister"))


def poll(node, at: datetime, latency: float | None) -> HealthSample:
    """A successful poll with a latency, a failed one (timeout) without."""
    return HealthSample(node_id=node.node_id, at=at, ok=latency is not None, latency_ms=latency,
                        failure=None if latency is not None else "timeout")


def latency_svg(console, node) -> str:
    body = console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    return re.search(r'<svg[^>]*class="chart latency".*?</svg>', body, re.S).group(0)


def subpaths(svg: str) -> list[str]:
    path = re.search(r'<path d="([^"]*)"', svg)
    return re.findall(r"M[^M]*", path.group(1)) if path else []


def test_the_latency_line_breaks_where_polls_failed(console, node):
    """Polled every 30 s (the default interval): 3 answers, 18 failures, 3 answers."""
    start = utcnow() - timedelta(minutes=20)
    db.session.add_all([poll(node, start + timedelta(seconds=30 * i), 30.0 if i < 3 or i >= 21 else None)
                        for i in range(24)])
    db.session.commit()
    console.login("minister")
    svg = latency_svg(console, node)
    assert len(subpaths(svg)) == 2, f"18 failed polls in a row bridged: {svg}"
    assert all(part.count(" L") == 2 for part in subpaths(svg)), svg
    # the name counts what is drawn, and says the line is broken
    assert "成功巡检 6 次" in svg and "失败巡检 18 次" in svg and "折线因巡检失败或未巡检断为 2 段" in svg, svg


def test_the_latency_line_breaks_where_no_polls_were_taken():
    """The poller stopped for hours: the line says nothing of a time nobody polled."""
    end = datetime(2026, 12, 1, 12, tzinfo=UTC)
    points = [(end - timedelta(hours=5), 20.0), (end - timedelta(hours=5) + timedelta(seconds=30), 21.0),
              (end - timedelta(hours=1), 22.0), (end - timedelta(hours=1) + timedelta(seconds=30), 23.0)]
    svg = charts.latency_chart(points, end=end, poll_interval=timedelta(seconds=30))
    assert len(subpaths(svg)) == 2, svg
    late = charts.latency_chart(points[:2] + [(points[1][0] + timedelta(seconds=80), 22.0)], end=end,
                                poll_interval=timedelta(seconds=30))
    assert len(subpaths(late)) == 1, f"one late poll is no outage: {late}"


def test_a_single_successful_poll_is_drawn_as_a_dot(console, node):
    db.session.add(poll(node, utcnow() - timedelta(hours=2), 30.0))
    db.session.commit()
    console.login("minister")
    svg = latency_svg(console, node)
    assert len(re.findall(r"<circle ", svg)) == 1, svg


def test_a_lone_poll_between_failures_is_drawn_as_a_dot_beside_the_line():
    end = datetime(2026, 12, 1, 12, tzinfo=UTC)
    points = [(end - timedelta(hours=3), 20.0), (end - timedelta(hours=3) + timedelta(seconds=30), 21.0),
              (end - timedelta(hours=2), None), (end - timedelta(hours=1), 22.0), (end - timedelta(minutes=30), None)]
    svg = charts.latency_chart(points, end=end)
    assert len(subpaths(svg)) == 1 and len(re.findall(r"<circle ", svg)) == 1, svg


def test_a_poll_later_than_now_is_left_out_of_the_line(console, node):
    """After the clock steps back (tests/test_health_state.py) a sample can be later than now."""
    now = utcnow()
    db.session.add_all([poll(node, now - timedelta(hours=5), 30.0), poll(node, now - timedelta(hours=4), 31.0),
                        poll(node, now + timedelta(hours=3), 99.0)])
    db.session.commit()
    console.login("minister")
    svg = latency_svg(console, node)
    xs = [float(x) for x in re.findall(r"[ML]([0-9.]+),", svg)] + \
        [float(x) for x in re.findall(r'<circle cx="([0-9.]+)"', svg)]
    assert xs and max(xs) <= 720 - 8, svg
    assert "99 ms" not in svg and "最近一次 31 ms" in svg, svg


def test_an_events_filter_keeps_what_was_typed_and_says_when_it_is_no_node_id(console, node):
    db.session.add(HealthEvent(node_id=node.node_id, at=utcnow(), old_status="unknown", new_status="up",
                               reason=None, detail="", in_maintenance=False))
    db.session.commit()
    console.login("minister")
    typed = node.node_id + "9"  # one digit too many, pasted
    body = console.client.get(f"/health/events?node=+{typed}+").get_data(as_text=True)
    assert re.search(r'name="node" value="([^"]*)"', body).group(1) == typed
    assert f'href="/nodes/{node.node_id}"' not in body, "the events of the node the id was cut to are listed"
    assert 'aria-invalid="true"' in body and "节点编号为 20 位数字" in body, body
    assert "尚无健康事件" not in body


def test_an_events_filter_that_matches_nothing_says_so(console, node, make_user):
    db.session.add(HealthEvent(node_id=node.node_id, at=utcnow(), old_status="unknown", new_status="up",
                               reason=None, detail="", in_maintenance=False))
    db.session.commit()
    console.login("minister")
    other = node.node_id[:-1] + ("1" if node.node_id[-1] != "1" else "2")
    body = console.client.get(f"/health/events?node={other}").get_data(as_text=True)
    empty = re.search(r'class="empty">([^<]*)', body).group(1)
    assert empty == "没有符合筛选条件的健康事件。", empty
    assert 'aria-invalid' not in body
    listed = console.client.get(f"/health/events?node={node.node_id}").get_data(as_text=True)
    assert f'href="/nodes/{node.node_id}"' in listed


def test_the_events_page_without_a_filter_says_the_log_is_empty(console, make_user):
    make_user("minister")
    console.login("minister")
    body = console.client.get("/health/events").get_data(as_text=True)
    assert re.search(r'class="empty">([^<]*)', body).group(1) == "尚无健康事件。"


def test_the_maintenance_lengths_are_in_the_readers_language(console, node):
    """The window's lengths read "1 h / 4 h / 24 h" on the Chinese page, beside the token form's "1 天 / 7 天"."""
    from app.auth.models import User
    from app.health import maintenance

    console.login("minister")

    def lengths() -> list[str]:
        body = console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
        select = re.search(r'<select[^>]*name="hours".*?</select>', body, re.S).group(0)
        return re.findall(r"<option[^>]*>([^<]*)</option>", select)

    assert lengths() == ["1 小时", "4 小时", "24 小时"]
    console.client.get("/lang/en")
    assert lengths() == ["1 hour", "4 hours", "24 hours"]
    minister = db.session.scalars(db.select(User).where(User.username == "minister")).one()
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade", by=minister)
    db.session.commit()
    assert lengths() == ["keep the current end", "1 hour", "4 hours", "24 hours"]



def failed_polls(node, failure: str, detail: str) -> None:
    """Polls failing as the poller words them, until the node is down."""
    from app.health import service
    from tests.test_health_state import Result

    for _ in range(3):
        service.apply_round([Result(node.node_id, False, latency_ms=None, failure=failure, detail=detail)])


def health_section(console, node) -> str:
    body = console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    return re.search(r'<section class="card health">.*?</section>', body, re.S).group(0)


def test_a_failure_s_detail_that_only_repeats_its_reason_is_left_out(console, node):
    """"连接被拒绝: 连接被拒绝" on the node page, and both the events' reason and detail columns said 连接被拒绝."""
    failed_polls(node, "refused", "Connection refused")
    console.login("minister")
    section = health_section(console, node)
    assert re.search(r"· 连接被拒绝\s*</p>", section), section
    events = console.client.get("/health/events").get_data(as_text=True)
    assert "<td>连接被拒绝</td><td></td>" in events


def test_a_failure_s_detail_that_says_more_follows_a_colon_of_the_reader_s_language(console, node):
    failed_polls(node, "http_status", "HTTP 500")
    console.login("minister")
    section = health_section(console, node)
    assert "· 异常 HTTP 状态码：HTTP 500" in section
    assert re.search(r"<h3>可用率（24 小时）：0\.00%</h3>", section), section
    assert re.search(r"<li>[0-9-]+ [0-9:]+：未知 → 故障 异常 HTTP 状态码</li>", section), section
    assert ": " not in re.sub(r"<[^>]*>", "", section)
    console.client.get("/lang/en")
    section = health_section(console, node)
    assert "· unexpected HTTP status: HTTP 500" in section and "<h3>Uptime, 24 hours: 0.00%</h3>" in section
    assert re.search(r"<li>[0-9-]+ [0-9:]+: Unknown → Down unexpected HTTP status</li>", section), section


def test_the_banner_counts_every_down_node_names_five_and_the_tiles_count_per_province(console, make_user):
    """Counted and cut in the query (a nationwide outage is thousands of rows): a node in maintenance, or not
    active, is left out; one whose window has ended is down again; a provincial admin counts their own. The
    five named are the first by node id."""
    from app.admission import nodes
    from app.admission.models import Node
    from app.health.models import NodeHealth

    minister, jx = make_user("minister"), make_user("jx-admin", "provincial_admin", ("360000",))
    jiangxi = [admit(jx, minister) for _ in range(8)]
    guangdong = admit(make_user("gd-admin", "provincial_admin", ("440000",)), minister, "440000")
    now = utcnow()
    for node in [*jiangxi, guangdong]:
        db.session.add(NodeHealth(node_id=node.node_id, status="down"))
    db.session.flush()
    db.session.get(NodeHealth, jiangxi[0].node_id).maintenance_until = now + timedelta(hours=1)
    db.session.get(NodeHealth, jiangxi[1].node_id).maintenance_until = now - timedelta(hours=1)
    nodes.suspend(jiangxi[2], "audit", by=minister)
    db.session.commit()
    jiangxi_down = sorted(n.node_id for n in [jiangxi[1], *jiangxi[3:]])

    def banner(ids: list[str]) -> str:
        names = ", ".join(f"{db.session.get(Node, i).org_name} ({i})" for i in ids[:5])
        return f"{len(ids)} nodes are down: {names} and {len(ids) - 5} more"

    console.login("minister")
    console.client.get("/lang/en")
    page = console.client.get("/").get_data(as_text=True)
    assert banner(sorted([*jiangxi_down, guangdong.node_id])) in page
    assert ": 7 active, 1 suspended, 6 down<" in page and ": 1 active, 0 suspended, 1 down<" in page
    scoped = type(console)(console.client.application.test_client())
    scoped.login("jx-admin")
    scoped.client.get("/lang/en")
    page = scoped.client.get("/").get_data(as_text=True)
    assert banner(jiangxi_down) in page and ": 7 active, 1 suspended, 6 down<" in page
    assert guangdong.node_id not in page and ": 1 active, 0 suspended, 1 down<" not in page


def listed_node_ids(page: str) -> list[str]:
    return re.findall(r'<td><a href="/nodes/(\d{20})"', page)


def test_the_banner_links_the_list_of_every_down_node(console, make_user):
    """The banner names five of the down nodes and says "and N more", and nothing listed the rest: the nodes list
    had no such filter, the events page lists changes. Its "down" filter lists them (active, down, out of
    maintenance, in the admin's scope), and the banner links it."""
    from app.admission import nodes
    from app.health.models import NodeHealth

    minister, jx = make_user("minister"), make_user("jx-admin", "provincial_admin", ("360000",))
    jiangxi = [admit(jx, minister) for _ in range(8)]
    guangdong = admit(make_user("gd-admin", "provincial_admin", ("440000",)), minister, "440000")
    for node in [*jiangxi[:7], guangdong]:
        db.session.add(NodeHealth(node_id=node.node_id, status="down"))
    db.session.add(NodeHealth(node_id=jiangxi[7].node_id, status="up"))
    db.session.flush()
    db.session.get(NodeHealth, jiangxi[0].node_id).maintenance_until = utcnow() + timedelta(hours=1)
    nodes.suspend(jiangxi[1], "audit", by=minister)
    db.session.commit()
    down = sorted(n.node_id for n in [*jiangxi[2:7], guangdong])

    for who, expected in (("minister", down), ("jx-admin", [i for i in down if i != guangdong.node_id])):
        viewer = type(console)(console.client.application.test_client())
        viewer.login(who)
        viewer.client.get("/lang/en")
        page = viewer.client.get("/").get_data(as_text=True)
        # The banner's sentence ends before the link, with the gap the reader's language puts between sentences.
        assert '. <a href="/nodes/?status=down">List every node that is down</a>' in page, who
        listed = viewer.client.get("/nodes/?status=down")
        assert listed.status_code == 200 and listed_node_ids(listed.get_data(as_text=True)) == expected, who
        assert '<option value="down" selected>Active and down</option>' in listed.get_data(as_text=True)
        viewer.client.get("/lang/zh_CN")
        assert '。<a href="/nodes/?status=down">列出全部故障节点</a>' in viewer.client.get("/").get_data(as_text=True)
