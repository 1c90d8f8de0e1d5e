"""Health state across a node's suspension, resumption and revocation: never an old verdict shown as current."""

from __future__ import annotations

import html
import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.admission import applications, nodes
from app.database import utcnow
from app.extensions import db
from app.health import maintenance, service
from app.health.models import HealthEvent, NodeHealth
from app.routing import service as routes
from tests.factories import change_document
from tests.test_health_state import Hook, Result, sent, webhook  # noqa: F401 (fixture; Result: one poll's outcome)
from tests.test_sessions import admit_with_keys, people, wait_for_a_lock_wait  # noqa: F401 (fixture)


def listed_status(node_id: str) -> str | None:
    entries = {entry["node_id"]: entry for entry in json.loads(routes.head().body)["nodes"]}
    return entries[node_id]["status"] if node_id in entries else None


def bring_up(node_id: str) -> None:
    for _ in range(2):
        service.apply_round([Result(node_id, True)])
    assert db.session.get(NodeHealth, node_id).status == "up"


def test_a_resumed_node_is_listed_unknown_until_polled_again_not_with_its_verdict_from_before(app, people):  # noqa: F811
    """Nobody polls a suspended node: the "up" it had when suspended says nothing of it days later. Shown and
    published again on resumption, it told the console and every peer "up" until three rounds had failed."""
    minister, _ = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    assert listed_status(node.node_id) == "up"
    nodes.suspend(node, "drill", by=minister)
    db.session.commit()
    assert db.session.get(NodeHealth, node.node_id).status == "unknown"
    nodes.resume(node, "drill over", by=minister)
    db.session.commit()
    health = db.session.get(NodeHealth, node.node_id)
    assert health.status == "unknown" and health.consecutive_successes == 0 and health.consecutive_failures == 0
    assert listed_status(node.node_id) == "unknown"
    bring_up(node.node_id)  # the next polls decide, with the usual thresholds
    assert listed_status(node.node_id) == "up"


def test_a_revoked_node_keeps_no_health_verdict(app, people):  # noqa: F811
    minister, _ = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    nodes.revoke(node, "key lost", by=minister)
    db.session.commit()
    assert db.session.get(NodeHealth, node.node_id).status == "unknown"


def test_a_node_whose_endpoint_moved_is_listed_unknown_until_the_new_one_is_polled(app, people):  # noqa: F811
    """The polls so far were of the old endpoint: published with the new one, their "up" said a server nobody
    had polled yet was up."""
    minister, jx_admin = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    moved = node.endpoint.rstrip("/") + "/v2"
    change = applications.submit_change(node, change_document("360000", endpoint=moved), by=jx_admin)
    db.session.commit()
    applications.approve(change, by=minister)
    db.session.commit()
    entry = {e["node_id"]: e for e in json.loads(routes.head().body)["nodes"]}[node.node_id]
    assert (entry["endpoint"], entry["status"]) == (moved, "unknown")
    contact_only = change_document("360000", endpoint=moved, contact={"name": "李四", "phone": "0791-7654321",
                                                                      "email": "li@jx.example"})
    bring_up(node.node_id)
    change = applications.submit_change(node, contact_only, by=jx_admin)
    db.session.commit()
    applications.approve(change, by=minister)
    db.session.commit()
    assert db.session.get(NodeHealth, node.node_id).status == "up"  # nothing polled changed


def history(node_id: str) -> list[tuple[str, str, str | None]]:
    return [(e.old_status, e.new_status, e.reason) for e in db.session.scalars(
        select(HealthEvent).where(HealthEvent.node_id == node_id).order_by(HealthEvent.at, HealthEvent.id))]


def test_an_admins_reset_to_unknown_is_a_health_event_naming_the_action(app, people):  # noqa: F811
    """The history read "unknown → up, then unknown → up" with nothing between: how the node became unknown
    again (a suspension, a revocation, a moved endpoint) was nowhere in it."""
    minister, jx_admin = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    nodes.suspend(node, "drill", by=minister)
    db.session.commit()
    nodes.resume(node, "drill over", by=minister)  # a suspended node is not polled: nothing to forget, no event
    db.session.commit()
    bring_up(node.node_id)
    moved = node.endpoint.rstrip("/") + "/v2"
    change = applications.submit_change(node, change_document("360000", endpoint=moved), by=jx_admin)
    db.session.commit()
    applications.approve(change, by=minister)
    db.session.commit()
    service.apply_round([Result(node.node_id, False, failure="refused")])
    nodes.revoke(node, "key lost", by=minister)
    db.session.commit()
    assert history(node.node_id) == [
        ("unknown", "up", None), ("up", "unknown", "node_suspended"), ("unknown", "up", None),
        ("up", "unknown", "endpoint_changed"), ("unknown", "unknown", "node_revoked")]
    assert not any(e.in_maintenance for e in db.session.scalars(select(HealthEvent)))


def test_a_reset_inside_a_maintenance_window_is_marked_so(app, people):  # noqa: F811
    minister, _ = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade", by=minister)
    nodes.suspend(node, "upgrade", by=minister)
    db.session.commit()
    event = db.session.scalars(select(HealthEvent).order_by(HealthEvent.id.desc())).first()
    assert (event.old_status, event.new_status, event.reason, event.in_maintenance) == \
        ("up", "unknown", "node_suspended", True)


def test_the_console_names_the_action_that_reset_a_node_in_the_readers_language(app, people, console):  # noqa: F811
    minister, _ = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    nodes.suspend(node, "drill", by=minister)
    db.session.commit()
    console.login("minister")
    events = html.unescape(console.client.get(f"/health/events?node={node.node_id}").get_data(as_text=True))
    assert "节点被暂停" in events and "node_suspended" not in events
    page = html.unescape(console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True))
    assert "正常 → 未知 节点被暂停" in page
    console.client.get("/lang/en")
    assert "node suspended" in console.client.get("/health/events").get_data(as_text=True)


def test_suspending_and_resuming_a_node_is_no_flapping(app, people, console):  # noqa: F811
    """An admin's resets are events, but not changes polling found: counted, three suspensions in an hour made a
    node that was up each time it was polled "flapping"."""
    minister, _ = people
    node, _ = admit_with_keys(people)
    for _ in range(3):
        bring_up(node.node_id)
        nodes.suspend(node, "drill", by=minister)
        nodes.resume(node, "drill over", by=minister)
        db.session.commit()
    assert len(history(node.node_id)) == 6
    assert service.flap_counts([node.node_id]) == {node.node_id: 3}
    console.login("minister")
    assert "状态频繁变化" not in console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)


def test_a_node_down_in_maintenance_then_suspended_and_resumed_is_alerted_only_if_polls_find_it_down_again(
        app, people, webhook):  # noqa: F811
    """The suspension forgets the "down" the window held back, as it forgets any verdict: no alert for the
    suspension or the resumption (an admin's action, audited), and no late alert for a verdict nobody holds any
    more. Whatever the polls after the resumption find is alerted: late when the window ends, if they found it
    down inside the window; as any change, if they find it after."""
    app.config["MPIM_HEALTH_WEBHOOK_URL"] = webhook
    Hook.fail_first = 0
    minister, _ = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade", by=minister)
    db.session.commit()
    for _ in range(3):
        service.apply_round([Result(node.node_id, False, failure="refused")])
    assert db.session.get(NodeHealth, node.node_id).status == "down"
    nodes.suspend(node, "upgrade", by=minister)
    nodes.resume(node, "upgrade done", by=minister)
    db.session.commit()
    assert [c["new"] for h in sent() for c in h["changes"]] == ["up"]  # the resets sent nothing

    for _ in range(3):  # inside the window, the polls find it down again: held back, then sent late, once
        service.apply_round([Result(node.node_id, False, failure="timeout")])
    db.session.get(NodeHealth, node.node_id).maintenance_until = utcnow() - timedelta(seconds=1)
    db.session.commit()
    report = service.apply_round([Result(node.node_id, False, failure="timeout")])
    assert [(c.old, c.new, c.reason) for c in report.late_alerts] == [("unknown", "down", "timeout")]
    assert len(sent()) == 2 and sent()[1]["changes"][0]["after_maintenance"] is True

    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade", by=minister)
    nodes.suspend(node, "upgrade", by=minister)  # down inside a window, suspended, the window ends meanwhile
    db.session.get(NodeHealth, node.node_id).maintenance_until = utcnow() - timedelta(seconds=1)
    nodes.resume(node, "upgrade done", by=minister)
    db.session.commit()
    report = service.apply_round([Result(node.node_id, False, failure="timeout")])
    assert report.late_alerts == [] and report.changes == []  # unknown: no verdict to announce yet
    for _ in range(2):
        report = service.apply_round([Result(node.node_id, False, failure="timeout")])
    assert [(c.old, c.new, c.in_maintenance) for c in report.changes] == [("unknown", "down", False)]
    assert len(sent()) == 3 and sent()[2]["changes"][0]["after_maintenance"] is False


def test_a_round_applied_while_a_suspension_commits_waits_for_it_and_skips_the_node(app, people):  # noqa: F811
    """PostgreSQL: the round and the suspension queued on different locks (the round's own, the node's), so a round
    applied while the suspension was being committed waited only for the health row the reset had written, then
    wrote the streak of a poll made before the suspension over it. It now waits for the node's row, and skips it."""
    import threading

    from sqlalchemy import func

    from app.health.models import HealthSample
    from tests.test_admission_concurrency import joined

    if db.engine.dialect.name != "postgresql":
        pytest.skip("an admin and a round at once: PostgreSQL (SQLite has one writer at a time)")
    minister, _ = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    polled = [Result(node.node_id, True)]  # the round polled the node before the suspension
    reports: list = []
    errors: list[BaseException] = []

    def apply() -> None:
        with app.app_context():
            try:
                reports.append(service.apply_round(polled))
            except BaseException as error:
                errors.append(error)
            finally:
                db.session.remove()

    nodes.suspend(node, "drill", by=minister)  # the admin's transaction, not committed yet
    thread = threading.Thread(target=apply)
    thread.start()
    wait_for_a_lock_wait(thread)  # until the round waits on the suspension, or has finished
    assert thread.is_alive()  # it waits for the admin
    db.session.commit()
    joined([thread])
    assert not errors, errors
    db.session.expire_all()
    health = db.session.get(NodeHealth, node.node_id)
    assert (health.status, health.consecutive_successes, health.consecutive_failures) == ("unknown", 0, 0)
    assert db.session.scalar(select(func.count()).select_from(HealthSample)) == 2  # bring_up's
    assert reports[0].skipped == 1 and reports[0].ok == 0


def test_a_suspension_while_a_round_is_applied_waits_for_it_and_then_resets_what_it_wrote(app, people):  # noqa: F811
    """The other order: the round holds the node's row when the admin comes to suspend it. The admin waited only for
    the health row, then wrote the reset over a state it had read before the round committed: the status it saw was
    already unknown, so the round's "up" stayed. It now waits for the round at the node's row, and reads after it."""
    import threading

    from app.auth.models import User
    from tests.test_admission_concurrency import joined

    if db.engine.dialect.name != "postgresql":
        pytest.skip("an admin and a round at once: PostgreSQL (SQLite has one writer at a time)")
    minister, _ = people
    node, _ = admit_with_keys(people)
    node_id, minister_id = node.node_id, minister.id
    service.apply_round([Result(node_id, True)])  # one more success takes it up
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []

    def suspend() -> None:
        with app.app_context():
            try:
                nodes.suspend(nodes.get(node_id), "drill", by=db.session.get(User, minister_id))
                db.session.commit()
            except BaseException as error:
                errors.append(error)
            finally:
                db.session.remove()

    def while_applying(_changes) -> None:
        """Inside the round's transaction: the admin's suspension starts and runs until it waits on the round."""
        thread = threading.Thread(target=suspend)
        thread.start()
        threads.append(thread)
        wait_for_a_lock_wait(thread)

    service.status_changed.append(while_applying)
    try:
        report = service.apply_round([Result(node_id, True)])
    finally:
        service.status_changed.remove(while_applying)
    joined(threads)
    assert not errors, errors
    db.session.expire_all()
    health = db.session.get(NodeHealth, node_id)
    assert (health.status, health.consecutive_successes, health.consecutive_failures) == ("unknown", 0, 0)
    assert history(node_id) == [("unknown", "up", None), ("up", "unknown", "node_suspended")]
    assert [(c.old, c.new) for c in report.changes] == [("unknown", "up")]


def test_polls_taken_before_a_suspension_do_not_count_after_the_resumption(app, people):  # noqa: F811
    """A round polls, then applies. A node suspended and resumed in between is active again when the round applies,
    at the same endpoint, so its polls passed `still_polled` and counted toward the streak the resumption had
    just begun: two successes from before the suspension brought it "up" with no poll since. They are kept as
    samples (the node was active when polled), and decide nothing."""
    minister, _ = people
    node, _ = admit_with_keys(people)
    polled_at = utcnow() - timedelta(seconds=5)
    nodes.suspend(node, "drill", by=minister)
    db.session.commit()
    nodes.resume(node, "drill over", by=minister)
    db.session.commit()
    for _ in range(2):
        service.apply_round([Result(node.node_id, True, checked_at=polled_at)])
    health = db.session.get(NodeHealth, node.node_id)
    assert (health.status, health.consecutive_successes, health.consecutive_failures) == ("unknown", 0, 0)
    assert listed_status(node.node_id) == "unknown"
    bring_up(node.node_id)  # polls taken after the resumption decide, as usual


def test_polls_taken_before_a_reset_of_a_known_node_do_not_bring_back_its_verdict(app, people):  # noqa: F811
    """The same with a verdict to forget: the node was up, suspended (reset to unknown) and resumed; the round's
    successes, polled while it was up, counted again and published "up" before any poll of the resumed node."""
    minister, _ = people
    node, _ = admit_with_keys(people)
    bring_up(node.node_id)
    polled_at = utcnow()
    nodes.suspend(node, "drill", by=minister)
    db.session.commit()
    nodes.resume(node, "drill over", by=minister)
    db.session.commit()
    for _ in range(2):
        report = service.apply_round([Result(node.node_id, True, checked_at=polled_at)])
        assert report.changes == []
    assert db.session.get(NodeHealth, node.node_id).status == "unknown"
