"""What a peer or the management node answers is read without trusting its shape: an error body nested
deeper than Python's JSON parser goes reads as 'no usable error', never as an exception in the sender."""

from __future__ import annotations

from types import SimpleNamespace

from app.appnode.node import Node
from app.appnode.registry import HTTPResult, RegistryClient

NESTED = b"[" * 5000


def test_a_peers_error_body_nested_too_deep_is_a_plain_peer_error():
    error = Node._peer_error(SimpleNamespace(body=NESTED, status=500))
    assert error.code == "peer_error" and "HTTP 500" in error.message
    assert Node._error_code(NESTED) is None


def test_a_registry_error_body_nested_too_deep_names_the_http_status():
    error = RegistryClient.fail(HTTPResult(502, {}, NESTED), "apply")
    assert error.message == "apply: HTTP 502"
