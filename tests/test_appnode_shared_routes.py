"""The node's server and its CLI share one data directory (SPEC §5 on the application node).

A table the operator pulls with `routes pull` is stored there by the CLI's process; the running server adopts
it before its own next pull, so the two never answer from different versions for longer than a moment.
Like every command, `routes pull` and `routes show` print lines for a person, and JSON only with `--json`.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess

import pytest

from tests.appnode_processes import PYTHON, ROOT, eventually, wait_http
from tests.conftest import stop_process
from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_appnode_renewal import node_cli
from tests.test_sessions import people  # noqa: F401 (fixture)


def test_the_running_node_uses_the_table_its_operator_pulled_from_the_cli(network):  # noqa: F811
    b = network["b"]
    held = b.node.routes.version
    c = network["join"]("110000")
    c.node.sync_routes()

    def cli_pulled_c():
        """On PostgreSQL the management node's serving process hears of the new version a moment late."""
        done = node_cli(b, "--json", "routes", "pull")
        assert done.returncode == 0, done.stderr
        pulled = json.loads(done.stdout)
        return pulled["version"] if f"{c.id} added" in pulled["changes"] else None
    version = eventually(cli_pulled_c, timeout=10, interval=0.05, what=f"the CLI's pull to list {c.id}")
    assert version > held

    eventually(lambda: b.node.routes.version == version, timeout=10, interval=0.05,
               what=f"the running node to adopt version {version}")
    assert b.node.routes.entry(c.id)["cert_sha256"] == c.node.identity.fingerprint()
    sent = c.node.send_text("sunqi", b.user("lisi"), "新节点")
    assert [row.state for row in c.node.outbox()] == ["delivered"]
    assert [entry["message"].message_id for entry in b.node.history("lisi", sent.conversation_id)] == [sent.message_id]


def test_routes_pull_and_show_print_lines_for_a_person_and_json_only_with_json(network):  # noqa: F811
    b = network["b"]
    c = network["join"]("110000")
    c.node.sync_routes()

    def cli_pulled_c():
        done = node_cli(b, "routes", "pull")
        assert done.returncode == 0, done.stderr
        return done.stdout if f"\n  {c.id} added\n" in done.stdout else None
    pulled = eventually(cli_pulled_c, timeout=10, interval=0.05, what=f"the CLI's pull to list {c.id}")
    installed = re.fullmatch(r"routing table v(\d+) installed \(was v\d+\)", pulled.splitlines()[0])
    assert installed, pulled
    version = int(installed[1])
    assert node_cli(b, "routes", "pull").stdout == f"routing table v{version} unchanged\n"
    assert json.loads(node_cli(b, "--json", "routes", "pull").stdout) == {"outcome": "unchanged", "version": version,
                                                                        "changes": [], "expired_at": None}

    table = json.loads(node_cli(b, "--json", "routes", "show").stdout)
    shown = node_cli(b, "routes", "show").stdout.splitlines()
    assert table["version"] == version and shown[0] == f"routing table v{version}, expires {table['expires_at']}"
    assert shown[1:] == [f"{entry['node_id']}\t{entry['division_code']}\t{entry['endpoint']}\t{entry['status']}"
                         for entry in table["nodes"]]
    assert f"{c.id}\t110000\t{c.node.config.endpoint}\t" in "\n".join(shown)


@pytest.mark.parametrize("data", [b"\x00garbage\xff", b'{"format": 2, "table": {"version": 3, "no',
                                  '{"table": {"issuer": "公安部"}}'.encode("gb18030")],
                         ids=["garbage", "truncated_json", "not_utf8"])
def test_a_node_whose_stored_table_is_unreadable_starts_and_installs_the_current_table(network, data):  # noqa: F811
    """An unreadable routes.json stopped the node's route client (storage_corrupt on every pull, and `status`
    refused), while one that fails verification was passed over. It is passed over too, with a warning."""
    a, b = network["a"], network["b"]
    b.stop()
    (b.dir / "routes.json").write_bytes(data)
    log = b.dir / "run.log"
    with open(log, "wb") as stream:
        server = subprocess.Popen([PYTHON, "-m", "app.appnode", "--data", str(b.dir), "run"], cwd=ROOT,
                                  stdout=stream, stderr=stream)
    try:
        wait_http(f"https://127.0.0.1:{b.port}/api/v1/health", server,
                  ssl.create_default_context(cafile=str(b.node.identity.bundle_file)))

        def installed_the_current_table() -> bool:
            done = node_cli(b, "--json", "status")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)["route_version"] == a.node.sync_routes().version
        eventually(installed_the_current_table, timeout=10, interval=0.1, what="the current table")
    finally:
        stop_process(server)
    assert f"not using the routing table stored in {b.dir / 'routes.json'}: storage_corrupt" in log.read_text()
    b.node.reload_routes()
    assert b.node.routes.entry(a.id)["cert_sha256"] == a.node.identity.fingerprint()
