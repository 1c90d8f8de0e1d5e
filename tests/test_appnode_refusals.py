"""The reference node refuses what it cannot take in the protocol's own terms (docs/protocol.md §5.3), and its
CLI says when a message or a request did not get through instead of claiming success."""

from __future__ import annotations

import json

from app.appnode import protocol
from app.appnode.web import create_node_app
from tests.appnode_harness import raw_post
from tests.test_appnode import network, text_envelope  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)


def test_a_body_nested_deeper_than_the_parser_goes_is_invalid_json_not_a_server_error(network):  # noqa: F811
    a, b = network["a"], network["b"]
    for path in protocol.ENDPOINTS.values():
        status, body = raw_post(a.node, b, path, b"[" * 5000)
        assert status == 400 and body["error"]["code"] == "invalid_json"
        protocol.validate("error", body)
    nested = json.dumps(text_envelope(a, b)).replace('"text": "', '"text": ' + "[" * 5000 + '"', 1).encode()
    status, body = raw_post(a.node, b, "message", nested)
    assert status == 400 and body["error"]["code"] == "invalid_json"


def test_a_wrong_method_is_method_not_allowed_and_a_fault_is_a_json_500(network):  # noqa: F811
    a, b = network["a"], network["b"]
    entry = a.node.routes.entry(b.id)
    answered = a.node.peers.post(entry["endpoint"], "/api/v1/health", b"{}", pin=entry["cert_sha256"])
    assert answered.status == 405 and json.loads(answered.body)["error"]["code"] == "method_not_allowed"

    app = create_node_app(b.node)  # the node's own app, with one path that fails as a bug would

    @app.get("/api/v1/broken")
    def broken():
        raise RuntimeError("a fault of this node")
    answered = app.test_client().get("/api/v1/broken")
    assert answered.status_code == 500 and answered.json["error"]["code"] == "internal_error"
    protocol.validate("error", answered.json)
