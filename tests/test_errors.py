"""Errors as HTTP says them: the JSON shape of SPEC §4 under /api/v1 and /ca, and the headers a status needs."""

from __future__ import annotations


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
