"""Errors as HTTP says them: the JSON shape of SPEC §4 under /api/v1 and /ca, and the headers a status needs."""

from __future__ import annotations

import http.client
import json

import pytest

from app.errors import size_text
from tests.appnode_processes import ManagementNode


def test_a_405_names_the_allowed_methods_under_the_api_and_in_the_console(client):
    """RFC 9110 §15.5.6: a 405 must carry Allow; the JSON body replaced Werkzeug's response and dropped it."""
    api = client.put("/api/v1/session")
    assert api.status_code == 405 and api.get_json()["error"]["code"] == "method_not_allowed"
    assert set(api.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    assert api.headers["Content-Type"] == "application/json"
    ca = client.post("/ca/crl.pem")
    assert ca.status_code == 405 and set(ca.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    page = client.put("/healthz")
    assert page.status_code == 405 and "GET" in page.headers["Allow"]


def test_options_answers_the_allowed_methods_with_no_content(client):
    """OPTIONS got Flask's default: 200 with an empty body called text/html, under the JSON API too. It is now
    204 No Content with Allow, which says the same and claims no type for a body it does not have."""
    for path, allowed in (("/api/v1/session", {"POST", "OPTIONS"}), ("/ca/crl.pem", {"GET", "HEAD", "OPTIONS"})):
        answer = client.open(path, method="OPTIONS")
        assert answer.status_code == 204 and answer.data == b"", path
        assert set(answer.headers["Allow"].split(", ")) == allowed and "Content-Type" not in answer.headers, path


def post_chunked(url: str, path: str, body: bytes) -> tuple[int, dict]:
    """POST `body` with Transfer-Encoding: chunked (no Content-Length), as a streaming client sends it."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", path, body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                           headers={"Content-Type": "application/json"}, encode_chunked=True)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_chunked_body_over_the_limit_is_a_413_not_its_first_megabyte(app):
    """Werkzeug enforces MAX_CONTENT_LENGTH on a Content-Length, but reads a chunked body only up to the
    limit and hands over the truncated bytes as the whole body: a JSON object filling the first 1 MiB was
    taken, whatever followed it."""
    limit = app.config["MAX_CONTENT_LENGTH"]
    head = b'{"pad": "'
    exactly = head + b"x" * (limit - len(head) - 2) + b'"}'
    assert len(exactly) == limit
    server = ManagementNode(app.config["SQLALCHEMY_DATABASE_URI"], app.config["MPIM_INSTANCE_PATH"])
    try:
        status, body = post_chunked(server.url, "/api/v1/session", exactly + b" and more")
        assert (status, body["error"]["code"]) == (413, "request_entity_too_large")
        status, body = post_chunked(server.url, "/api/v1/session", exactly)  # at the limit: read and judged
        assert (status, body["error"]["code"], body["error"]["field"]) == (400, "invalid_request", "node_id")
    finally:
        server.stop()



@pytest.mark.parametrize(("size", "binary", "text"), [
    (1048576, True, "1 MiB"), (65536, True, "64 KiB"), (1048576, False, "1 MB"), (512, True, "512 B"),
    # No whole unit: "1500000 B" read as a typo for a round figure; grouped, the count reads at a glance.
    (1_500_000, True, "1,500,000 B"), (1_500_000, False, "1,500,000 B"),
])
def test_a_size_limit_is_stated_in_whole_units_or_as_a_grouped_byte_count(size, binary, text):
    assert size_text(size, binary_units=binary) == text


def test_a_413_under_a_limit_of_no_whole_unit_states_the_byte_count_once(app, client):
    """It read "larger than 1500000 B (1,500,000 bytes)": the same figure twice, once ungrouped."""
    app.config["MAX_CONTENT_LENGTH"] = 1_500_000
    response = client.post("/api/v1/session", data=b"0" * 1_500_001, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"]["message"] == "The body is larger than 1,500,000 bytes."

def test_a_401_carries_a_bearer_challenge(client):
    """RFC 9110 §11.6.1: a 401 must say how to authenticate (RFC 6750: Bearer)."""
    for response in (client.get("/api/v1/routes"), client.get("/api/v1/applications/x"),
                     client.post("/api/v1/session", json={"node_id": "36000000002025999999",
                                                          "timestamp": "2026-01-01T00:00:00Z",
                                                          "nonce": "abcdefgh", "signature": "A" * 32})):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")


NUL_ADDRESSES = ["/nodes/?q=a%00b", "/audit/?actor=%00", "/audit/export.csv?target=%00", "/applications/?division=%00",
                 "/certificates/?node=%00", "/health/events?node=%00", "/divisions/?q=%00", "/users/a%00b",
                 "/applications/%00", "/certificates/%00.pem", "/nodes/?status=active&status=%00"]


@pytest.mark.parametrize("address", NUL_ADDRESSES)
def test_a_nul_in_a_console_address_is_a_400_that_says_so(admin_console, address):
    """PostgreSQL refuses NUL in any text, so each of these filters and look-ups answered 500 there (the CSV
    export broke off mid-stream)."""
    response = admin_console.client.get(address)
    assert response.status_code == 400
    assert "地址中含有 NUL 字符（%00）" in response.get_data(as_text=True)
