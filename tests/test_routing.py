"""The signed routing table: versions, ETags, deltas, signatures, bad input (SPEC §5)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.admission import nodes
from app.errors import ValidationFailed
from app.extensions import db
from app.routing import service
from app.routing.client import MAX_STORED_DELTAS, RouteClient
from app.routing.models import RouteVersion
from app.routing.serving import MAX_CACHED_DELTAS, cache_for
from tests.conftest import Console
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def session(client, people):  # noqa: F811
    node, keys = admit_with_keys(people)
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    return {"node": node, "keys": keys, "headers": {"Authorization": f"Bearer {token}"}}


def pull(client, session, query="", **headers):
    return client.get(f"/api/v1/routes{query}", headers={**session["headers"], **headers})


def test_approval_publishes_a_signed_table_that_openssl_verifies(client, session, tmp_path):
    response = pull(client, session)
    assert response.status_code == 200
    table = json.loads(response.data)
    assert table["version"] == 1 and [n["node_id"] for n in table["nodes"]] == [session["node"].node_id]
    assert table["issuer"] == "10000000002015000001" and response.headers["ETag"] == '"1"'
    signer = client.get("/ca/route-signer.pem").data
    (tmp_path / "signer.pem").write_bytes(signer)
    (tmp_path / "body.json").write_bytes(response.data)
    (tmp_path / "sig.der").write_bytes(base64.b64decode(response.headers["X-Route-Signature"]))
    subprocess.run(["openssl", "x509", "-in", "signer.pem", "-pubkey", "-noout", "-out", "pub.pem"],
                   cwd=tmp_path, check=True, timeout=60)
    result = subprocess.run(["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig.der",
                             "body.json"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Verified OK" in result.stdout


def test_the_route_client_accepts_what_the_server_serves(client, session, tmp_path):
    root = client.get("/ca/ca.pem").data
    chain = client.get("/ca/chain.pem").data
    signer = client.get("/ca/route-signer.pem").data
    route_client = RouteClient(root, intermediates=chain, storage_path=tmp_path / "routes.json")
    response = pull(client, session)
    result = route_client.accept(response.data, response.headers["X-Route-Signature"],
                                 response.headers["X-Route-Signer"], signer)
    assert result.outcome == "accepted" and route_client.entry(session["node"].node_id)["status"] == "unknown"


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes


def test_a_client_pulling_deltas_asks_for_the_full_table_again_once_it_stores_max_stored_deltas(
        app, client, session, live_server, tmp_path):
    """The signed documents stored to verify the table again (the full table and every delta since) stay
    few: after MAX_STORED_DELTAS deltas the next pull asks for the full table, which starts them afresh."""
    storage = tmp_path / "routes.json"
    root, chain = client.get("/ca/ca.pem").data, client.get("/ca/chain.pem").data
    signer = client.get("/ca/route-signer.pem").data
    route_client = RouteClient(root, intermediates=chain, storage_path=storage)
    asked = []

    def fetch(headers, since):
        asked.append(since)
        query = f"?since={since}" if since is not None else ""
        request = urllib.request.Request(f"{live_server}/api/v1/routes{query}",
                                         headers={**headers, **session["headers"]})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as refusal:
            return Answer(refusal.code, dict(refusal.headers), refusal.read())

    def stored_documents() -> int:
        return len(json.loads(storage.read_text("utf-8"))["documents"])

    def served(version: int) -> None:
        """On PostgreSQL the server learns of a new version by NOTIFY, on a thread of its own."""
        deadline = time.monotonic() + 10
        while cache.current_version() < version and time.monotonic() < deadline:
            time.sleep(0.01)

    route_client.pull(fetch, signer)
    cache = cache_for(app)
    kept = [stored_documents()]
    for _ in range(MAX_STORED_DELTAS + 1):
        version = service.publish("re-sign", force=True).version
        db.session.commit()
        served(version)
        assert route_client.pull(fetch, signer).outcome == "accepted"
        kept.append(stored_documents())

    assert asked == [None, *range(1, MAX_STORED_DELTAS + 1), None]  # deltas while few, then the full table
    assert kept == [*range(1, MAX_STORED_DELTAS + 2), 1]
    assert route_client.version == MAX_STORED_DELTAS + 2
    assert RouteClient(root, intermediates=chain, storage_path=storage).table == route_client.table


def test_if_none_match_gets_304_and_garbage_gets_the_table(client, session):
    assert pull(client, session, **{"If-None-Match": '"1"'}).status_code == 304
    assert pull(client, session, **{"If-None-Match": 'W/"1"'}).status_code == 304
    assert pull(client, session, **{"If-None-Match": '"0", W/"1"'}).status_code == 304
    assert pull(client, session, **{"If-None-Match": "*"}).status_code == 304  # RFC 9110 §13.1.2: any current one
    garbage = pull(client, session, **{"If-None-Match": "%%% not an etag"})
    assert garbage.status_code == 200 and json.loads(garbage.data)["version"] == 1


def test_each_visible_change_is_one_new_version_with_a_delta(client, session, people):  # noqa: F811
    minister, _ = people
    other, _ = admit_with_keys(people)
    assert service.head_version() == 2
    nodes.suspend(other, "drill", by=minister)
    db.session.commit()
    assert service.head_version() == 3
    delta = json.loads(pull(client, session, "?since=2").data)
    assert delta["version"] == 3 and delta["since"] == 2 and delta["removed"] == [other.node_id]
    assert "changed" in delta and "nodes" not in delta
    folded = json.loads(pull(client, session, "?since=1").data)
    assert folded["removed"] == [] or other.node_id not in [e["node_id"] for e in folded["changed"]]
    assert pull(client, session, "?since=3").status_code == 304
    history = db.session.scalars(db.select(RouteVersion).order_by(RouteVersion.version)).all()
    assert history[-1].changes == [f"{other.node_id} removed"]


@pytest.mark.parametrize("passphrase", ["", "wrong-passphrase"])
def test_a_folded_delta_an_instance_cannot_sign_is_the_full_table_instead(app, client, session, people, tmp_path,  # noqa: F811
                                                                            passphrase, caplog):
    """An instance without the CA passphrase serves the stored table (docs/operations.md), but a `?since=` older
    than the previous version, a delta it must fold and sign, answered 503 `passphrase_missing`: a node asking
    for deltas asked again, and was answered the same, until it was sent to an instance that could sign. With a
    wrong passphrase it answered 503 `ca_key_unreadable`, naming the key file, and logged nothing."""
    minister, _ = people
    other, _ = admit_with_keys(people)
    nodes.suspend(other, "drill", by=minister)
    db.session.commit()
    assert service.head_version() == 3
    app.config["MPIM_CA_PASSPHRASE"] = passphrase
    app.config["MPIM_CA_PASSPHRASE_FILE"] = str(tmp_path / "nowhere") if not passphrase else ""
    app.extensions.pop("mpim_authority", None)  # as a process starting now, without the passphrase
    answer = pull(client, session, "?since=1")
    assert answer.status_code == 200, answer.data
    table = json.loads(answer.data)
    assert table["version"] == 3 and "nodes" in table and "since" not in table  # applied as a whole
    code = "ca_key_unreadable" if passphrase else "passphrase_missing"
    assert f"answered with the full table: this instance cannot sign ({code})" in caplog.text
    assert other.node_id not in [entry["node_id"] for entry in table["nodes"]]
    kept = json.loads(pull(client, session, "?since=2").data)  # the previous version's delta, signed when published
    assert kept["since"] == 2 and kept["removed"] == [other.node_id]


def test_a_folded_delta_a_revoked_route_signer_cannot_sign_is_the_full_table_instead(app, client, session, people,  # noqa: F811
                                                                                         runner, caplog):
    """The route signer in use revoked and not yet rotated (the CA directory restored from a backup taken before
    the revocation; the hourly job mends it): a delta to fold answered 503 route_signer_revoked, the operator's
    instructions to every node. It is the full table, stored signed, as for an instance that cannot sign."""
    from cryptography import x509

    minister, _ = people
    other, _ = admit_with_keys(people)
    nodes.suspend(other, "drill", by=minister)
    db.session.commit()
    assert service.head_version() == 3
    directory = Path(app.config["MPIM_CA_DIR"])
    backup = {name: (directory / name).read_bytes() for name in ("route-signer.pem", "route-signer.key")}
    serial = format(x509.load_pem_x509_certificate(backup["route-signer.pem"]).serial_number, "x")
    revoked = runner.invoke(args=["ca", "revoke", serial, "--reason", "key_compromise", "--user", "minister"])
    assert revoked.exit_code == 0, revoked.output
    for name, data in backup.items():
        (directory / name).write_bytes(data)
    app.extensions.pop("mpim_authority", None)  # as a process starting now, with the restored directory
    head = service.head_version()
    answer = pull(client, session, "?since=1")
    assert answer.status_code == 200, answer.data
    table = json.loads(answer.data)
    assert table["version"] == head and "nodes" in table and "since" not in table
    assert "answered with the full table: this instance cannot sign (route_signer_revoked)" in caplog.text


def await_served(app, version: int) -> None:
    """On PostgreSQL the server learns of a new version by NOTIFY, on a thread of its own."""
    cache = cache_for(app)
    deadline = time.monotonic() + 10
    while cache.current_version() < version and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_delta_removes_only_nodes_the_table_it_starts_from_listed(app, client, session, people):  # noqa: F811
    """A node added and removed again after `since` was named in `removed`: a client holding `since` never had
    it, refused the delta (delta_base_mismatch), and asked again for the same delta on every pull."""
    minister, _ = people
    root, chain = client.get("/ca/ca.pem").data, client.get("/ca/chain.pem").data
    signer = client.get("/ca/route-signer.pem").data
    route_client = RouteClient(root, intermediates=chain)

    def fetch(headers, since):
        response = pull(client, session, "" if since is None else f"?since={since}", **headers)
        return Answer(response.status_code, dict(response.headers), response.data)

    assert route_client.pull(fetch, signer).version == 1
    other, _ = admit_with_keys(people)
    nodes.suspend(other, "drill", by=minister)
    db.session.commit()
    await_served(app, 3)
    delta = json.loads(pull(client, session, "?since=1").data)
    assert (delta["since"], delta["changed"], delta["removed"]) == (1, [], [])
    assert route_client.pull(fetch, signer).version == 3
    # Past the kept bodies, the history decides: `other` was absent at 1, then added and removed.
    for _ in range(service.KEEP_BODIES):
        service.publish("re-sign", force=True)
    db.session.commit()
    await_served(app, 3 + service.KEEP_BODIES)
    assert service.find(1).body is None
    answer = json.loads(pull(client, session, "?since=1").data)
    assert other.node_id not in answer.get("removed", [])
    assert route_client.pull(fetch, signer).version == 3 + service.KEEP_BODIES


def test_nothing_visible_changed_means_no_new_version(app, session):
    assert service.publish("noop") is None
    assert service.publish("re-sign", force=True).version == 2


def test_cli_publish_reports_in_json(app, session, runner):
    result = runner.invoke(args=["routing", "publish", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == {"published": False, "version": 1, "changes": []}
    result = runner.invoke(args=["routing", "publish", "--force", "--json"])
    assert json.loads(result.output) == {"published": True, "version": 2, "changes": ["re-signed"]}


@pytest.mark.parametrize(("since", "code"), [("-1", "invalid_since"), ("abc", "invalid_since"),
                                             ("1.5", "invalid_since"), ("99", "since_in_future"),
                                             ("\uff10", "invalid_since"), ("\u0660", "invalid_since"),
                                             ("9999999999999", "since_in_future"),
                                             ("0000000000001", None)])
def test_bad_since_values(client, session, since, code):
    """A whole number of 13 digits or more was "not a non-negative whole number" (invalid_since): it is one, ahead
    of every version."""
    response = pull(client, session, f"?since={since}")
    if code is None:  # 1, written with 13 digits: not "ahead of the current version"
        assert response.status_code in (200, 304), response.data
        return
    assert response.status_code == 400 and response.get_json()["error"]["code"] == code


def test_routes_need_a_node_session(client, session):
    assert client.get("/api/v1/routes").get_json()["error"]["code"] == "missing_session"
    response = client.get("/api/v1/routes", headers={"Authorization": "Bearer forged-token"})
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "invalid_session"


def test_one_entry(client, session):
    node_id = session["node"].node_id
    body = client.get(f"/api/v1/routes/{node_id}", headers=session["headers"]).get_json()
    assert body["entry"]["node_id"] == node_id and body["version"] == 1
    missing = client.get("/api/v1/routes/36000000002025999999", headers=session["headers"])
    assert missing.status_code == 404
    assert missing.get_json()["error"]["message"] == "Node 36000000002025999999 is not in routing table version 1."


@pytest.mark.parametrize("path", ["x" * 3000, "%E2%80%AE%0Aevil"])
def test_an_entry_asked_for_by_no_node_id_is_not_named_back(client, session, path):
    """The path was put into the message as sent: 3,000 characters, or a right-to-left override and a line break
    that a CLI printing the message would show."""
    response = client.get(f"/api/v1/routes/{path}", headers=session["headers"])
    error = response.get_json()["error"]
    assert (response.status_code, error["code"]) == (404, "node_not_routed")
    assert error["message"] == \
        "This is no node id (node ids are 20 digits): routing table version 1 lists no such node."


def test_one_entry_is_revalidated_like_the_table(client, session):
    """The table says `no-cache`; one entry said nothing, so a cache on the way could reuse it without asking again
    (RFC 9111), a suspended node's entry after the table had dropped it."""
    response = client.get(f"/api/v1/routes/{session['node'].node_id}", headers=session["headers"])
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-cache"
    assert pull(client, session).headers["Cache-Control"] == "no-cache"


def test_console_history_downloads_and_cli_verify(app, session, runner, tmp_path):
    admin_console = Console(app.test_client())
    admin_console.login("minister")
    page = admin_console.client.get("/routes/").get_data(as_text=True)
    assert f"v1: {session['node'].node_id} 加入" in page and "节点接入" in page  # the stored lines, in words
    body = admin_console.client.get("/routes/v1.json").data
    signature = admin_console.client.get("/routes/v1.sig").data
    (tmp_path / "t.json").write_bytes(body)
    (tmp_path / "t.sig").write_bytes(signature)
    result = runner.invoke(args=["routing", "verify", str(tmp_path / "t.json"), str(tmp_path / "t.sig")])
    assert result.exit_code == 0 and "signature valid" in result.output
    # The X-Route-Signature header's base64, saved the way `echo "$SIGNATURE" > t.sig` saves it: with a newline.
    encoded = signature if not signature.startswith(b"0") else base64.b64encode(signature)
    (tmp_path / "t.b64").write_bytes(encoded + b"\n")
    result = runner.invoke(args=["routing", "verify", str(tmp_path / "t.json"), str(tmp_path / "t.b64")])
    assert result.exit_code == 0 and "signature valid" in result.output, result.output
    rotated = runner.invoke(args=["ca", "rotate-route-signer"])  # v1 stays authentic, by an earlier signer
    assert rotated.exit_code == 0, rotated.output
    earlier = runner.invoke(args=["routing", "verify", str(tmp_path / "t.json"), str(tmp_path / "t.sig")])
    assert earlier.exit_code == 1 and "signed by an earlier route signer" in earlier.output
    (tmp_path / "t.json").write_bytes(body.replace(b'"version":1', b'"version":9'))
    forged = runner.invoke(args=["routing", "verify", str(tmp_path / "t.json"), str(tmp_path / "t.sig")])
    assert forged.exit_code == 1 and "signature INVALID" in forged.output


@pytest.mark.parametrize("version", [0, 999, 2**31, 10**30])
def test_a_version_never_published_is_said_to_be_none_not_one_no_longer_kept(app, session, version):
    """2**31 is past PostgreSQL's integer and 10**30 past SQLite's: each download answered 500. Then every version
    not found read "is not kept any more (only the last 20)", v0 and v999 with v1 the newest among them."""
    admin_console = Console(app.test_client())
    admin_console.login("minister")
    for suffix in ("json", "sig"):
        response = admin_console.client.get(f"/routes/v{version}.{suffix}")
        page = response.get_data(as_text=True)
        assert response.status_code == 404 and f"没有第 {version} 版路由表（最新为第 1 版）" in page
        assert "不再保留" not in page


def test_a_version_whose_body_was_let_go_is_said_to_be_no_longer_kept(app, session):
    from app.routing.models import RouteVersion

    db.session.get(RouteVersion, 1).body = None  # as publishing the 21st version after it does
    db.session.commit()
    admin_console = Console(app.test_client())
    admin_console.login("minister")
    response = admin_console.client.get("/routes/v1.json")
    assert response.status_code == 404 and "不再保留" in response.get_data(as_text=True)


def test_the_console_verification_hint_runs_as_printed_on_the_downloads(app, session, tmp_path):
    """The routing page's openssl lines, run on the files its three links download (under their names)."""
    import html
    import re
    import shlex

    admin_console = Console(app.test_client())
    admin_console.login("minister")
    page = admin_console.client.get("/routes/").get_data(as_text=True)
    hint = html.unescape(re.search(r'id="verify-hint"><code>(.*?)</code>', page, re.S).group(1))
    for url in ("/routes/v1.json", "/routes/v1.sig", "/ca/route-signer.pem"):
        response = admin_console.client.get(url)
        disposition = re.search(r"filename=([^;]+)", response.headers.get("Content-Disposition", ""))
        (tmp_path / (disposition.group(1) if disposition else url.rsplit("/", 1)[1])).write_bytes(response.data)
    outputs = [subprocess.run(shlex.split(line), cwd=tmp_path, capture_output=True, text=True, timeout=60)
               for line in hint.strip().splitlines()]
    assert [done.returncode for done in outputs] == [0, 0] and "Verified OK" in outputs[-1].stdout


def test_provincial_admins_see_their_own_nodes_not_the_whole_routing_table(app, session):
    """The table lists every province's nodes, endpoints and fingerprints; a provincial admin is scoped to
    its divisions everywhere else in the console (its nodes' routing status is on their node pages)."""
    console = Console(app.test_client())
    console.login("jx-admin")
    assert "/routes/" not in console.client.get("/").get_data(as_text=True)  # not in the navigation
    for url in ("/routes/", "/routes/v1.json", "/routes/v1.sig"):
        assert console.client.get(url).status_code == 403, url
    ministry = Console(app.test_client())
    ministry.login("minister")
    assert ministry.client.get("/routes/").status_code == 200


def test_the_real_flask_executable_reaches_our_routing_group(app, session):
    """Through FlaskGroup, where a built-in of the same name would win (the group was once `routes`)."""
    env = {**os.environ, "FLASK_APP": "wsgi.py", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "MPIM_INSTANCE_PATH": app.config["MPIM_INSTANCE_PATH"], "SECRET_KEY": "test",
           "MPIM_CA_PASSPHRASE": app.config["MPIM_CA_PASSPHRASE"]}
    done = subprocess.run([str(Path(sys.executable).with_name("flask")), "routing", "show", "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = json.loads(done.stdout)
    assert table["version"] == 1 and [entry["node_id"] for entry in table["nodes"]] == [session["node"].node_id]



def test_on_postgresql_workers_learn_new_versions_by_notification(app, client, session, people):  # noqa: F811
    if db.engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite reads the version from the database")
    cache = cache_for(app)
    assert pull(client, session).status_code == 200

    def await_version(number):
        deadline = time.monotonic() + 10
        while cache.notified_version != number and time.monotonic() < deadline:
            time.sleep(0.02)
        return cache.notified_version

    assert await_version(1) == 1
    # A database lost without a reset would leave the listener waiting for good: libpq's TCP keepalives are on.
    assert {key: cache.listener_parameters.get(key) for key in cache.LISTENER_KEEPALIVES} == {
        key: str(value) for key, value in cache.LISTENER_KEEPALIVES.items()}
    admit_with_keys(people)
    assert await_version(2) == 2  # told by NOTIFY, without a query per request
    assert json.loads(pull(client, session).data)["version"] == 2


def test_routing_history_refuses_a_limit_no_database_takes(app, session, runner):
    """As `flask audit list`: 10**30 overflowed into a traceback, -1 listed everything on SQLite."""
    for limit in ("0", "-1", str(10**30), "１０"):  # fullwidth: click.IntRange read it as 10
        result = runner.invoke(args=["routing", "history", "--limit", limit])
        assert result.exit_code == 2 and "--limit" in result.output, limit
    listed = runner.invoke(args=["routing", "history", "--limit", "1", "--json"])
    assert listed.exit_code == 0 and len(listed.output.strip().splitlines()) == 1


def test_a_node_whose_certificate_expired_leaves_the_table_at_the_next_scheduled_check(app, session, people):  # noqa: F811
    """An expiry publishes nothing by itself, and a node already down changes nothing a health round publishes:
    the table went on listing the node with its dead certificate until the next re-signing, up to 12 hours."""
    from datetime import timedelta

    from sqlalchemy import select

    from app.database import utcnow
    from app.pki.models import Certificate

    other, _ = admit_with_keys(people)
    assert service.head_version() == 2
    row = db.session.scalars(select(Certificate).where(Certificate.node_id == other.node_id)).one()
    row.not_after = utcnow() - timedelta(seconds=1)
    db.session.commit()
    result = service.resign_job()
    head = service.head()
    assert head.version == 3 and other.node_id not in service.entries_of(head), result
    assert head.reason == "certificate expired" and head.changes == [f"{other.node_id} removed"]
    assert service.resign_job().startswith("v3 fresh until")  # nothing else to do: no new version


def test_a_suspended_node_outside_the_table_cannot_pull_with_a_session_this_worker_remembers(
        app, client, session, people):  # noqa: F811
    """Workers remember validated sessions until the version changes, and a suspension changed it only by taking
    the node out of the table: a node already out of it (its certificate expired) kept pulling after suspension."""
    from datetime import timedelta

    from sqlalchemy import select

    from app.database import utcnow
    from app.pki.models import Certificate

    minister, _ = people
    node = session["node"]
    row = db.session.scalars(select(Certificate).where(Certificate.node_id == node.node_id)).one()
    row.not_after = utcnow() - timedelta(seconds=1)  # a session opened before the expiry lives on
    db.session.commit()
    service.publish("certificate expired")
    db.session.commit()
    await_served(app, 2)
    assert pull(client, session).status_code == 200  # validated, and remembered by this worker
    nodes.suspend(db.session.merge(node), "drill", by=minister)
    db.session.commit()
    await_served(app, 3)
    refused = pull(client, session)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] in ("session_revoked", "node_suspended")


def test_a_session_validated_while_another_request_loaded_a_newer_version_is_not_cached(
        app, client, session, people):  # noqa: F811
    """Two threads of one worker: A reads version N and validates a node's session; meanwhile B loads N+1 (the
    node's suspension) and clears the cache; A then cached the session it validated, and the suspended node's
    token was served from the cache until the next version. The interleaving is driven by hand here."""
    from app.sessions import service as sessions

    minister, _ = people
    cache = cache_for(app)
    assert pull(client, session).status_code == 200
    seen = cache.current()  # request A: the version it serves, read before it validates
    token_hash = sessions.hash_token(session["headers"]["Authorization"].removeprefix("Bearer "))
    cache.sessions.clear()
    nodes.suspend(db.session.merge(session["node"]), "drill", by=minister)  # meanwhile: a new version...
    db.session.commit()
    await_served(app, seen.version + 1)
    assert cache.current().version == seen.version + 1  # ...which request B loaded, clearing the cache
    cache.remember_session(token_hash, session["node"].node_id, time.time() + 3600, seen_version=seen.version)
    assert cache.session_node(token_hash) is None  # request A's validation is not kept
    assert pull(client, session).status_code == 401  # the suspended node is refused, not served from memory


def test_a_worker_keeps_a_bounded_number_of_folded_deltas(app, client, session):
    """Each `?since=` from an older version folds and keeps a delta as large as the table may be: a node asking
    from every kept version (thousands after a week of health changes) grew a worker's memory without bound."""
    for _ in range(MAX_CACHED_DELTAS + 8):
        service.publish("re-sign", force=True)
    db.session.commit()
    head = service.head_version()
    await_served(app, head)
    first = pull(client, session, "?since=1").data
    for since in range(2, head - 1):
        assert json.loads(pull(client, session, f"?since={since}").data)["since"] == since
    assert len(cache_for(app).current().deltas) <= MAX_CACHED_DELTAS
    assert pull(client, session, "?since=1").data == first  # folded again once it is no longer kept


def test_admins_are_told_when_the_table_is_not_re_signed_on_time(app, session, admin_console):
    """Re-signing is the scheduler's job, and a stopped scheduler fails no request: the first sign of it was every
    node refusing the expired table and losing its peers."""
    assert "flask routing publish --force" not in admin_console.client.get("/").get_data(as_text=True)
    head = service.head()
    lifetime = head.expires_at - head.issued_at
    head.issued_at -= lifetime * 0.6  # past half its life (the job re-signs then) and the grace after it
    head.expires_at -= lifetime * 0.6
    db.session.commit()
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "路由表（版本 1）未按时重新签名" in page and "flask routing publish --force" in page
    head = service.head()
    head.issued_at -= lifetime
    head.expires_at -= lifetime
    db.session.commit()
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "The routing table (version 1) expired at" in page
    service.publish("re-sign", force=True)
    db.session.commit()
    assert "flask routing publish --force" not in admin_console.client.get("/").get_data(as_text=True)


def test_on_sqlite_publishing_holds_the_write_lock_from_reading_the_head_on(app, session):
    """The re-signing job and `flask routing publish` write nothing before publishing: SQLite took its write lock
    only at the insert, so a version another process published in between made theirs a duplicate key, and the
    job failed. Reading the head now takes the lock: the other writer waits instead."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL publishes under an advisory lock taken before the head is read")
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import make_url

    path = make_url(app.config["SQLALCHEMY_DATABASE_URI"]).database
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    refused = []

    def another_process_publishes(_connection, _cursor, statement, *_args):
        if statement.startswith("INSERT INTO route_versions") and not refused:
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("INSERT INTO route_versions (version, issued_at, expires_at, node_count, reason, "
                              "changes, signer_sha256) SELECT max(version) + 1, issued_at, expires_at, node_count, "
                              "'other', '[]', signer_sha256 FROM route_versions")
                other.execute("COMMIT")
                refused.append(False)
            except sqlite3.OperationalError:  # database is locked
                refused.append(True)

    event.listen(db.engine, "before_cursor_execute", another_process_publishes)
    try:
        version = service.publish("cli", force=True, actor="cli").version  # as `flask routing publish --force`
        db.session.commit()
    finally:
        event.remove(db.engine, "before_cursor_execute", another_process_publishes)
        other.close()
    assert refused == [True] and version == 2 == service.head_version()


def test_publishing_above_leaves_room_for_the_publications_after_it(app, session, runner):
    """`--above` near the last version a column holds published it, and then every later publication failed,
    a revocation's too (rolled back: the certificate stayed valid)."""
    result = runner.invoke(args=["routing", "publish", "--above", str(service.MAX_VERSION - 1)])
    assert result.exit_code != 0 and "--above" in result.output and service.head_version() == 1
    with pytest.raises(ValidationFailed) as refused:  # the service's rule, whoever calls it
        service.publish("restore", above=service.MAX_VERSION - 1)
    assert refused.value.code == "invalid_above" and service.head_version() == 1
    highest = service.HIGHEST_ABOVE
    assert service.MAX_VERSION - highest >= 1_000_000
    result = runner.invoke(args=["routing", "publish", "--above", str(highest)])
    assert result.exit_code == 0, result.output
    assert service.head_version() == highest + 1


def test_the_re_signing_job_publishes_nothing_before_the_first_node_is_approved(app):
    """On a fresh install the job published an empty v1 "re-sign", and the console's "published when the first
    node is approved" was then wrong."""
    assert service.head() is None
    assert service.resign_job() == "nothing to do: no table published yet"
    assert service.head() is None



def test_the_console_pages_and_the_re_signing_banner_read_no_table_body(app, session, admin_console):
    """A body and its delta are about 1 MB each with 3,000 nodes; the banner asks for the head on every page, and
    the history lists what changed. A body is read where it is used: a download, publishing."""
    from sqlalchemy import event

    statements: list[str] = []

    def record(connection, cursor, statement, *args):
        if not statement.startswith("SELECT count("):  # the history's count fetches no column
            statements.append(" ".join(statement.split()))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        for url in ("/", "/routes/", "/nodes/"):
            assert admin_console.client.get(url).status_code == 200
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    bodies = [s for s in statements if "route_versions.body" in s or "route_versions.delta_body" in s]
    assert not bodies and sum("FROM route_versions" in s for s in statements) >= 4, bodies
    assert admin_console.client.get("/routes/v1.json").data == service.head().body
