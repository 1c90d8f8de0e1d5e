"""The certificate inventory's states: a certificate its holder replaced is superseded, not expiring, so the
dashboard warns of nodes that need to renew, and its count, its link, the list and `flask ca list` agree;
a provincial admin cannot tell another division's certificate from one that does not exist."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import event

from app.admission import applications
from app.database import utcnow
from app.extensions import db
from app.pki import own_keys, revocation
from app.pki import service as pki
from app.pki.models import Certificate
from app.pki.views import dashboard_panel
from tests.conftest import Console
from tests.factories import NodeKeys, node_document
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def in_last_third(row) -> None:
    """As if issued 80 of its 90 days ago: inside the 30-day window, and the node's renewal window open."""
    row.not_before, row.not_after = utcnow() - timedelta(days=80), utcnow() + timedelta(days=10)


def listed_serials(console: Console, url: str) -> list[str]:
    html = console.client.get(url).get_data(as_text=True)
    return re.findall(r'href="/certificates/([0-9a-f]+)"', html)


def cli_list(runner, *options: str) -> list[dict]:
    result = runner.invoke(args=["ca", "list", "--json", *options])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def test_a_node_that_renewed_is_not_expiring_and_its_old_certificate_is_superseded(app, runner, people):  # noqa: F811
    minister, _ = people
    node, _ = admit_with_keys(people)
    old = pki.current_certificate(node.node_id)
    in_last_third(old)
    new = pki.renew(node, NodeKeys().csr, by=minister)
    db.session.commit()
    old_serial, new_serial = old.serial, new.serial

    assert dashboard_panel(minister)["expiring"] == 0
    console = Console(app.test_client())
    console.login("minister")
    assert listed_serials(console, "/certificates/?state=expiring") == []
    assert listed_serials(console, "/certificates/?state=superseded") == [old_serial]
    # Superseded is still valid (until revoked or expired): the valid filter keeps it.
    assert {old_serial, new_serial} <= set(listed_serials(console, "/certificates/?state=valid"))
    listing = console.client.get(f"/certificates/?node={node.node_id}").get_data(as_text=True)
    assert re.findall(r'<span class="tag [a-z]+"[^>]*>([^<]+)</span>', listing) == ["有效", "已被替换"]
    detail = console.client.get(f"/certificates/{old_serial}").get_data(as_text=True)
    assert re.search(r'id="certificate-state"[^>]*>已被替换<', detail)

    assert cli_list(runner, "--state", "expiring") == []
    assert [(row["serial"], row["state"]) for row in cli_list(runner, "--state", "superseded")] == [
        (old_serial, "superseded")]
    assert {row["serial"]: row["state"] for row in cli_list(runner, "--node", node.node_id)} == {
        old_serial: "superseded", new_serial: "valid"}
    shown = runner.invoke(args=["ca", "show", old_serial, "--json"])
    assert json.loads(shown.output)["state"] == "superseded"


def test_a_node_whose_newest_valid_certificate_expires_soon_is_warned_of(app, runner, people):  # noqa: F811
    """Only a valid newer certificate replaces one: a renewal since revoked leaves the old one expiring again."""
    minister, _ = people
    node, _ = admit_with_keys(people)
    old = pki.current_certificate(node.node_id)
    in_last_third(old)
    db.session.commit()
    assert dashboard_panel(minister)["expiring"] == 1
    new = pki.renew(node, NodeKeys().csr, by=minister)
    db.session.commit()
    assert dashboard_panel(minister)["expiring"] == 0
    revocation.revoke(new, "unspecified", by=minister)
    db.session.commit()
    assert dashboard_panel(minister)["expiring"] == 1
    assert [row["serial"] for row in cli_list(runner, "--state", "expiring")] == [old.serial]
    console = Console(app.test_client())
    console.login("minister")
    assert listed_serials(console, "/certificates/?state=expiring") == [old.serial]


def test_the_management_nodes_rotated_certificates_are_superseded_too(app, runner, people):  # noqa: F811
    """Its own certificates are told apart by kind (route signer, TLS), their node id being empty."""
    old_signer = pki.service_certificates("route_signer")[0]
    old_tls = pki.service_certificates("management")[0]
    own_keys.rotate_route_signer(actor="tests")
    own_keys.rotate_management_certificate(actor="tests")
    db.session.commit()
    in_last_third(old_signer)
    in_last_third(old_tls)
    db.session.commit()
    states = {row["serial"]: row["state"] for row in cli_list(runner)}
    assert states[old_signer.serial] == states[old_tls.serial] == "superseded"
    assert cli_list(runner, "--state", "expiring") == []
    current_signer = pki.service_certificates("route_signer")[0]
    in_last_third(current_signer)
    db.session.commit()
    assert [row["serial"] for row in cli_list(runner, "--state", "expiring")] == [current_signer.serial]
    assert cli_list(runner, "--state", "expiring", "--kind", "node") == []


def test_the_dashboards_expiring_count_and_the_list_it_links_to_agree(app, make_user, people):  # noqa: F811
    """The reviewer's case: the route signer in use expiring (warned of elsewhere, not counted) was in the
    linked list while the dashboard counted the node certificates only."""
    minister, _ = people
    node, _ = admit_with_keys(people)
    in_last_third(pki.current_certificate(node.node_id))
    in_last_third(pki.service_certificates("route_signer")[0])
    db.session.commit()
    make_user("gd-admin", "provincial_admin", ("440000",))
    for username, count in (("minister", 1), ("jx-admin", 1), ("gd-admin", 0)):
        console = Console(app.test_client())
        console.login(username)
        html = console.client.get("/").get_data(as_text=True)
        links = re.findall(r'href="(/certificates/\?[^"]*state=expiring[^"]*)"', html)
        if count == 0:
            assert links == []
            continue
        assert f"{count} 个将在 30 天内到期" in html
        listed = listed_serials(console, links[0].replace("&amp;", "&"))
        assert listed == [pki.current_certificate(node.node_id).serial]


def test_the_inventory_reads_the_states_of_a_page_in_a_fixed_number_of_queries(app, people):  # noqa: F811
    minister, _ = people

    def statements_for_the_list() -> int:
        console = Console(app.test_client())
        console.login("minister")
        seen = []

        def count(_connection, _cursor, statement, *_args):
            seen.append(statement)

        event.listen(db.engine, "before_cursor_execute", count)
        try:
            console.client.get("/certificates/")
        finally:
            event.remove(db.engine, "before_cursor_execute", count)
        return len(seen)

    node, _ = admit_with_keys(people)
    pki.renew(node, NodeKeys().csr, by=minister)
    db.session.commit()
    statements_for_the_list()  # the first page compares the CA directory with the database (`agreement`): once a minute
    few = statements_for_the_list()
    for _ in range(3):
        node, _ = admit_with_keys(people)
        pki.renew(node, NodeKeys().csr, by=minister)
    db.session.commit()
    assert statements_for_the_list() == few


def test_one_rule_decides_each_state(app, people):  # noqa: F811
    """Revoked and expired come first, as before; then superseded, then expiring."""
    from app.pki import inventory

    minister, _ = people
    node, _ = admit_with_keys(people)
    first = pki.current_certificate(node.node_id)
    in_last_third(first)
    second = pki.renew(node, NodeKeys().csr, by=minister)
    db.session.commit()
    assert inventory.state_of(first) == "superseded" and inventory.state_of(second) == "valid"
    first.not_after = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert inventory.state_of(first) == "expired"
    revocation.revoke(first, "superseded", by=minister)
    db.session.commit()
    assert inventory.state_of(first) == "revoked"


def test_another_divisions_certificate_answers_as_one_that_does_not_exist(app, make_user, people):  # noqa: F811
    minister, _ = people
    gd_admin = make_user("gd-admin", "provincial_admin", ("440000",))
    document = node_document("440000", csr=NodeKeys().csr)
    node = applications.approve(applications.submit_by_user(document, by=gd_admin), by=minister)
    db.session.commit()
    theirs = pki.current_certificate(node.node_id).serial
    missing = theirs[:-1] + ("1" if theirs[-1] == "0" else "0")
    assert db.session.get(Certificate, missing) is None
    signer = pki.service_certificates("route_signer")[0].serial
    console = Console(app.test_client())
    console.login("jx-admin")

    def answer(url: str, serial: str) -> tuple:
        """The page, the serial asked for and what changes with the second (the CSRF token's time, the session's
        seconds left) blanked: two requests either side of a second's boundary differed there alone."""
        response = console.client.get(url)
        page = response.get_data(as_text=True).replace(serial, "SERIAL")
        page = re.sub(r'(name="csrf_token"[^>]*value=|content=|data-csrf=|data-seconds-left=)"[^"]*"', r'\1""', page)
        return response.status_code, response.mimetype, page

    for serial in (theirs, signer):
        for suffix in ("", ".pem"):
            assert answer(f"/certificates/{serial}{suffix}", serial) == answer(f"/certificates/{missing}{suffix}",
                                                                               missing)
            assert answer(f"/certificates/{serial}{suffix}", serial)[0] == 404


def test_the_node_filter_is_kept_as_typed_and_a_malformed_one_is_said_so(app, people):  # noqa: F811
    """The filter was cut to 20 characters: a pasted id one digit too long listed the certificates of the node it
    was cut to, and the box came back changed."""
    node, _ = admit_with_keys(people)
    console = Console(app.test_client())
    console.login("minister")
    typed = node.node_id + "9"
    page = console.client.get(f"/certificates/?node={typed}").get_data(as_text=True)
    assert f'value="{typed}"' in page and 'aria-invalid="true"' in page
    assert "节点编号为 20 位数字" in page and listed_serials(console, f"/certificates/?node={typed}") == []
    assert listed_serials(console, f"/certificates/?node={node.node_id}")  # the right id still lists
    other = "36" + "0" * 18
    page = console.client.get(f"/certificates/?node={other}").get_data(as_text=True)
    assert 'aria-invalid' not in page and "没有符合条件的证书" in page


def test_show_and_revoke_take_the_serial_as_openssl_prints_it(app, runner, people, tmp_path):  # noqa: F811
    """`openssl x509 -text` prints a serial as colon-separated octets (`30:83:4b:...`, a leading `00:` when its top
    bit is set): `flask ca show` and `flask ca revoke` take that, and the octets separated by spaces, as they take
    upper case and leading zeros."""
    import subprocess

    node, _ = admit_with_keys(people)
    row = pki.current_certificate(node.node_id)
    (tmp_path / "node.pem").write_text(row.pem)
    text = subprocess.run(["openssl", "x509", "-in", "node.pem", "-noout", "-text"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=True).stdout
    printed = re.search(r"Serial Number:\s*\n\s*([0-9a-f:]+)", text).group(1)
    assert ":" in printed and printed.replace(":", "").lstrip("0") == row.serial
    for given in (printed, printed.upper(), printed.replace(":", " ")):
        shown = runner.invoke(args=["ca", "show", given, "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["serial"] == row.serial
    revoked = runner.invoke(args=["ca", "revoke", printed, "--reason", "superseded", "--user", "minister"])
    assert revoked.exit_code == 0, revoked.output
    other = printed[:-1] + ("1" if printed[-1] == "0" else "0")
    missing = runner.invoke(args=["ca", "show", other, "--json"])
    assert missing.exit_code != 0 and json.loads(missing.stderr)["error"]["code"] == "certificate_not_found"


def test_certificates_issued_in_one_second_are_listed_in_one_order_on_every_page(app, people):  # noqa: F811
    """`flask ca record` stores whole seconds, and a bulk approval issues several certificates a second. Sorted
    by that time alone, PostgreSQL returned ties in any order from one page's query to the next: walking the
    list by "Next" showed some certificates twice and others never. Ties are now ordered by serial."""
    from sqlalchemy import update

    from app.pki import inventory

    minister, _ = people
    for _ in range(5):
        node, _ = admit_with_keys(people)
        pki.renew(node, NodeKeys().csr, by=minister)
    same_second = utcnow().replace(microsecond=0)
    db.session.execute(update(Certificate).values(issued_at=same_second))
    db.session.commit()
    listed = [row.serial for row, _ in db.session.execute(inventory.inventory_query()).all()]
    assert len(listed) >= 10 and listed == sorted(listed)
    app.config["MPIM_PAGE_SIZE"] = 3
    console = Console(app.test_client())
    console.login("minister")
    walked = [serial for number in range(1, -(-len(listed) // 3) + 1)
              for serial in listed_serials(console, f"/certificates/?page={number}")]
    assert walked == listed


def select_box(html: str, name: str) -> str:
    return re.search(rf'<select name="{name}"[^>]*>.*?</select>', html, re.S).group(0)


@pytest.mark.parametrize("name", ["state", "kind"])
def test_a_certificate_filter_no_option_has_is_said_so_at_its_box_and_lists_nothing(app, people, name):  # noqa: F811
    """?state=zz listed every certificate, its box showing "All": an unknown state or kind is now kept in its box,
    marked, said so beside it in the reader's language, and nothing is listed until another is chosen."""
    admit_with_keys(people)
    console = Console(app.test_client())
    console.login("minister")
    assert listed_serials(console, "/certificates/")
    url = f"/certificates/?{name}=zz"
    page = console.client.get(url).get_data(as_text=True)
    assert listed_serials(console, url) == []
    box = select_box(page, name)
    assert 'aria-invalid="true"' in box and f'aria-describedby="{name}-error"' in box, box
    assert re.findall(r'<option value="([^"]*)" selected>', box) == ["zz"], box
    said = {"state": "“zz”不是证书状态；另选之前不列出任何证书。", "kind": "“zz”不是证书类型；另选之前不列出任何证书。"}
    assert f'<div class="error" id="{name}-error">{said[name]}</div>' in page, page
    assert "没有符合条件的证书" not in page  # the error says why the list is empty
    console.client.get("/lang/en")
    english = {"state": "“zz” is no certificate state; no certificates are listed until another is chosen.",
               "kind": "“zz” is no kind of certificate; no certificates are listed until another is chosen."}
    assert f'<div class="error" id="{name}-error">{english[name]}</div>' in console.client.get(url).get_data(
        as_text=True)


def test_a_provincial_admin_is_told_of_an_unknown_kind_though_they_have_no_kind_box(app, people):  # noqa: F811
    admit_with_keys(people)
    console = Console(app.test_client())
    console.login("jx-admin")
    assert listed_serials(console, "/certificates/")
    page = console.client.get("/certificates/?kind=zz").get_data(as_text=True)
    assert '<select name="kind"' not in page and listed_serials(console, "/certificates/?kind=zz") == []
    assert '<div class="error" id="kind-error">“zz”不是证书类型；另选之前不列出任何证书。</div>' in page, page


def test_the_inventory_lists_nothing_for_a_state_or_kind_it_does_not_know(app, runner, people):  # noqa: F811
    """One rule for every door: the query itself filters on an unknown value rather than ignoring it, and
    `flask ca list` refuses one as a usage error."""
    from app.pki import inventory

    admit_with_keys(people)
    assert db.session.execute(inventory.inventory_query()).all()
    for filters in ({"state": "zz"}, {"kind": "zz"}):
        assert db.session.execute(inventory.inventory_query(**filters)).all() == [], filters
    for option in ("--state", "--kind"):
        result = runner.invoke(args=["ca", "list", option, "zz"])
        assert result.exit_code == 2 and "Invalid value" in result.output, result.output
