"""Console application upload, the probe, list filters, signer rotation, CA warnings, Redis nonces,
history older than the kept deltas, and admin renewal from the CLI."""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask_babel import force_locale

from app.admission.models import Application, Node
from app.extensions import db
from app.pki import own_keys
from app.pki import service as pki
from app.routing import service as routing
from app.routing.models import RouteChange
from tests.conftest import Console
from tests.factories import NodeKeys, application_form, csr_with_unreadable_extensions
from tests.health_servers import HealthServer
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def test_console_application_with_an_uploaded_der_csr(app, make_user):
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    der = x509.load_pem_x509_csr(NodeKeys().csr.encode()).public_bytes(serialization.Encoding.DER)
    response = console.post_form("/applications/new", {**application_form(), "csr_file": (io.BytesIO(der), "n.csr")})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    application = db.session.scalars(db.select(Application)).one()
    assert application.capabilities == ["text", "group"] and "BEGIN CERTIFICATE REQUEST" in application.csr_pem


def test_console_application_errors_stay_in_the_form(app, make_user):
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    html = console.post_form("/applications/new", {**application_form(endpoint="http://insecure.example"),
                                                   "csr": NodeKeys().csr}).get_data(as_text=True)
    assert "接入地址必须是 https:// URL" in html and 'value="江西省公安厅"' in html  # nothing typed is lost
    html = console.post_form("/applications/new", {**application_form(), "csr": "-----BEGIN CERTIFICATE REQUEST-----"
                                                   }).get_data(as_text=True)
    assert "无法解析该 CSR" in html or "这不是 PEM 格式的证书请求" in html  # the console speaks Chinese
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


@pytest.mark.parametrize("how", ["duplicate", "x400"])
def test_console_application_with_a_csr_whose_extensions_cannot_be_read_says_why(app, make_user, how):
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    response = console.post_form("/applications/new", {**application_form(),
                                                       "csr": csr_with_unreadable_extensions(how)})
    assert response.status_code == 422 and "CSR 的扩展无法读取" in response.get_data(as_text=True)
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


@pytest.mark.parametrize(("language", "typed", "refusal"), [
    ("zh_CN", {"org_name": "江西\u202e省公安厅"}, "单位 含有控制字符。"),
    ("zh_CN", {"vendor": "a\x07b"}, "厂商 含有控制字符。"),
    ("en", {"contact_phone": "call me"}, "Contact phone is not a phone number."),
    ("en", {"contact_email": "nobody"}, "Contact e-mail is not an e-mail address."),
    ("en", {"system_name": "a\x07b"}, "System name contains control characters."),
])
def test_console_application_refusals_name_the_field_as_the_form_does(app, make_user, language, typed, refusal):
    """The API's keys (org_name, contact.phone) stood in the form's refusals, beside fields labelled otherwise."""
    import html as entities
    import re

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    console.client.get(f"/lang/{language}")
    page = console.post_form("/applications/new", {**application_form(**typed), "csr": NodeKeys().csr})
    html = page.get_data(as_text=True)
    errors = [entities.unescape(text) for text in re.findall(r'class="error"[^>]*>([^<]*)<', html)]
    assert errors == [refusal]
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


@contextmanager
def probed_node(app, admins, behaviour: str):
    """An admitted node whose application endpoint is a health server answering with `behaviour`, and the
    probe URL as a signed-in provincial admin calls it, and the server; it stops when the block ends."""
    from tests.test_health_poll import node_server_context

    node, keys = admit_with_keys(admins)
    server = HealthServer(node.node_id, behaviour, ssl_context=node_server_context(app, node, keys))
    try:
        console = Console(app.test_client())
        console.login("jx-admin")
        application = db.session.get(Application, node.application_id)
        application.endpoint = server.url
        db.session.commit()
        yield node, console.client, f"/applications/{application.id}/probe", server
    finally:
        server.close()


def test_probe_reports_reachability_without_blocking_the_page(app, people):  # noqa: F811
    with probed_node(app, people, "ok") as (node, client, probe_url, _server):
        result = client.get(probe_url).get_json()
        assert result["reachable"] and result["http_status"] == 200 and result["answer"]["node_id"] == node.node_id
    result = client.get(probe_url).get_json()  # the server has stopped
    assert not result["reachable"] and result["error"] == "Connection refused"  # not "[Errno 111] ..."
    assert result["failure"] == "refused" and result["message"] == "连接被拒绝"  # what the page shows
    assert "hint" not in result  # approved: the node should be serving


def test_probe_refused_before_approval_says_that_is_expected(app, people):  # noqa: F811
    """The reference node serves only once approved and holding its certificate: "connection refused" alone read
    as a broken endpoint to an admin reviewing the application."""
    import socket

    from app.admission import applications
    from tests.factories import node_document

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    keys = NodeKeys()
    application = applications.submit_by_user(
        node_document("360000", csr=keys.csr, endpoint=f"https://127.0.0.1:{port}"), by=people[1])
    db.session.commit()
    console = Console(app.test_client())
    console.login("jx-admin")
    result = console.client.get(f"/applications/{application.id}/probe").get_json()
    assert result["failure"] == "refused" and result["message"] == "连接被拒绝"
    assert result["hint"] == "应用节点通常在获批并取得证书后才开始提供服务，因此批准前连接被拒绝属正常现象。"
    console.client.get("/lang/en")
    result = console.client.get(f"/applications/{application.id}/probe").get_json()
    assert result["message"] == "connection refused" and result["hint"] == (
        "An application node usually starts serving only once it is approved and holds its certificate, "
        "so a refused connection before approval is expected.")


@pytest.mark.parametrize("behaviour", ["nested_json", "duplicate_key", "nan"])
def test_probe_of_an_answer_that_is_not_strict_json_reports_no_answer(app, people, behaviour):  # noqa: F811
    """Nested deeper than the parser goes; or a repeated "status" (the last, "ok", was shown) or a NaN, which
    health polling refuses once the node is approved."""
    with probed_node(app, people, behaviour) as (_node, client, probe_url, _server):
        response = client.get(probe_url)
    assert response.status_code == 200
    assert response.get_json()["reachable"] and response.get_json()["answer"] is None


def test_probe_does_not_follow_a_redirect(app, people):  # noqa: F811
    """An applicant's endpoint answering 302 would otherwise send the management node to any address on its
    network and show the reviewer what answered there, as if it were the node."""
    with probed_node(app, people, "redirect") as (_node, client, probe_url, server):
        result = client.get(probe_url).get_json()
        assert server.elsewhere_requests == 0
    assert result["reachable"] and result["http_status"] == 302 and result["failure"] == "http_status"
    assert "answer" not in result and result["message"] == "异常 HTTP 状态码"


def test_probe_timeout_bounds_the_whole_answer_not_each_read(app, people):  # noqa: F811
    """A node trickling a good answer a byte at a time never lets one read wait out the timeout; it held a
    console thread for as long as it kept trickling."""
    app.config["MPIM_PROBE_TIMEOUT"] = 1.0
    with probed_node(app, people, "trickle") as (_node, client, probe_url, _server):
        result = client.get(probe_url).get_json()
    assert not result["reachable"] and result["failure"] == "timeout" and result["error"] == "no answer within 1 s"


def test_nodes_list_filters_search_and_sort(people, admin_console):  # noqa: F811
    from app.admission import nodes

    first, _ = admit_with_keys(people)
    second, _ = admit_with_keys(people)
    second.vendor, second.capabilities, second.org_name = "Vendor B", ["text"], "南昌市公安局"
    nodes.suspend(first, "drill", by=people[0])
    db.session.commit()
    client = admin_console.client

    def ids(query):
        html = client.get(f"/nodes/{query}").get_data(as_text=True)
        return [n for n in (first.node_id, second.node_id) if f">{n}<" in html]

    assert ids("?status=suspended") == [first.node_id]
    assert ids("?vendor=Vendor+B") == [second.node_id]
    assert ids("?capability=presence") == [first.node_id]
    assert ids("?q=南昌") == [second.node_id]
    assert ids("?province=440000") == []
    html = client.get("/nodes/?sort=node_id&desc=1").get_data(as_text=True)
    assert html.index(second.node_id) < html.index(first.node_id)


def test_route_signer_rotation_republishes_and_clients_follow(app, client, runner, people, tmp_path):  # noqa: F811
    from app.routing.client import RouteClient

    node, keys = admit_with_keys(people)
    old_signer = client.get("/ca/route-signer.pem").data
    result = runner.invoke(args=["ca", "rotate-route-signer"])
    assert result.exit_code == 0, result.output
    new_signer = client.get("/ca/route-signer.pem").data
    assert new_signer != old_signer
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    response = client.get("/api/v1/routes", headers={"Authorization": f"Bearer {token}"})
    route_client = RouteClient(client.get("/ca/ca.pem").data, intermediates=client.get("/ca/chain.pem").data)
    accepted = route_client.accept(response.data, response.headers["X-Route-Signature"],
                                   response.headers["X-Route-Signer"], new_signer)
    assert accepted.outcome == "accepted" and accepted.version == 2


def test_ca_expiry_is_warned_long_before(app, admin_console):
    assert own_keys.expiry_warnings() == []
    loaded = pki.authority()
    soon = loaded.intermediate_certificate.not_valid_after_utc - timedelta(days=100)
    warnings = [str(w) for w in own_keys.expiry_warnings(now=soon)]
    assert any("intermediate CA certificate" in w for w in warnings)
    assert not any("root CA certificate" in w for w in warnings)
    assert any("root CRL ran out on" in w and "--root-key FILE" in w for w in warnings)  # a root CRL never renewed


def test_a_ca_certificate_past_its_end_is_warned_as_expired_not_as_expiring_in_0_days(app, admin_console):
    """Past the intermediate's end, the banner read "The intermediate CA certificate expires in 0 days", and the
    root CRL's "runs out in 0 days", for ever after: it never said what had happened. The date was UTC's, where
    every other time in the console is the display zone's."""
    loaded = pki.authority()
    end = loaded.intermediate_certificate.not_valid_after_utc
    warnings = [str(w) for w in own_keys.expiry_warnings(now=end + timedelta(days=5))]
    shown_end = end.astimezone(ZoneInfo(app.config["MPIM_DISPLAY_TIMEZONE"])).strftime("%Y-%m-%d %H:%M")
    assert f"The intermediate CA certificate expired on {shown_end}." in warnings
    assert not any("in 0 days" in w for w in warnings)
    assert any(w.startswith("The root CRL ran out on ") for w in warnings)
    with force_locale("zh_Hans_CN"):
        shown = [str(w) for w in own_keys.expiry_warnings(now=end + timedelta(days=5))]
    assert f"中间 CA 证书已于 {shown_end} 到期。" in shown


def test_nonces_in_redis_when_configured(app, client, people):  # noqa: F811
    import redis

    try:
        redis.Redis.from_url("redis://127.0.0.1:6379/0").ping()
    except redis.ConnectionError:
        pytest.fail("Redis at 127.0.0.1:6379 is part of this machine; it must be running")
    app.config["REDIS_URL"] = "redis://127.0.0.1:6379/0"
    from app.sessions.nonces import SINCE_KEY

    # A Redis that has remembered every nonce for long (a fresh one refuses sessions for 5 minutes).
    redis.Redis.from_url(app.config["REDIS_URL"]).set(SINCE_KEY, "0")
    node, keys = admit_with_keys(people)
    request = keys.session_request(node.node_id)
    assert client.post("/api/v1/session", json=request).status_code == 201
    replay = client.post("/api/v1/session", json=request)
    assert replay.status_code == 401 and replay.get_json()["error"]["code"] == "replayed_nonce"
    from app.sessions.models import UsedNonce

    assert db.session.scalar(db.select(db.func.count()).select_from(UsedNonce)) == 0  # kept in Redis, not SQL
    stored = redis.Redis.from_url(app.config["REDIS_URL"]).exists(f"mpim:nonce:{node.node_id}:{request['nonce']}")
    assert stored == 1


def test_since_older_than_the_kept_history_gets_the_full_table(client, people):  # noqa: F811
    node, keys = admit_with_keys(people)
    admit_with_keys(people)
    admit_with_keys(people)
    db.session.execute(db.delete(RouteChange).where(RouteChange.version <= 2))  # as if pruned
    db.session.commit()
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    body = json.loads(client.get("/api/v1/routes?since=1", headers={"Authorization": f"Bearer {token}"}).data)
    assert "nodes" in body and len(body["nodes"]) == 3 and body["version"] == 3
    delta = json.loads(client.get("/api/v1/routes?since=2", headers={"Authorization": f"Bearer {token}"}).data)
    assert delta["since"] == 2 and len(delta["changed"]) == 1


def test_admin_renewal_from_the_cli(app, runner, people, tmp_path):  # noqa: F811
    node, _ = admit_with_keys(people)
    before = pki.current_certificate(node.node_id).serial
    (tmp_path / "new.csr").write_text(NodeKeys().csr)
    result = runner.invoke(args=["ca", "renew", node.node_id, "--csr", str(tmp_path / "new.csr"), "--user",
                                 "minister", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["serial"] != before and pki.current_certificate(node.node_id).serial != before
    current = pki.current_certificate(node.node_id)
    assert routing.entries_of(routing.head())[node.node_id]["cert_sha256"] == current.sha256
    assert db.session.get(Node, node.node_id).status == "active"


def test_api_renewal_without_a_csr_does_not_speak_of_pasting_or_uploading(client, people):  # noqa: F811
    """The API caller sends JSON: console wording (paste, upload a file) must not leak into its errors."""
    from tests.test_sessions import open_session

    node, keys = admit_with_keys(people)
    session = open_session(client, keys.session_request(node.node_id)).get_json()["token"]
    response = client.post("/api/v1/certificates/renew", json={"csr": ""},
                           headers={"Authorization": f"Bearer {session}"})
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["code"] == "missing_csr"  # as an application's empty csr
    assert "paste" not in error["message"] and "upload" not in error["message"] and "CSR" in error["message"]


def test_probe_of_a_host_name_that_does_not_resolve_says_so(app, people):  # noqa: F811
    """The probe showed only "✗ 错误" for an endpoint whose host name does not resolve: the cause was in the
    answer's `error`, in aiohttp's English, and the page shows `message` first."""
    from app.admission import applications
    from tests.factories import node_document

    keys = NodeKeys()
    application = applications.submit_by_user(
        node_document("360000", csr=keys.csr, endpoint="https://no-such-node.invalid:8443"), by=people[1])
    db.session.commit()
    console = Console(app.test_client())
    console.login("jx-admin")
    result = console.client.get(f"/applications/{application.id}/probe").get_json()
    assert result["failure"] == "error" and result["message"] == "错误：主机名 no-such-node.invalid 无法解析", result
