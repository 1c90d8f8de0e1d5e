"""The management node puts a request off (503 or 429 with Retry-After): the reference node's CLI says which
request, why and how long to wait, and exits 75 (EX_TEMPFAIL), apart from a refusal that stands (2), so that an
operator or a script knows to run the command again then. Run as a process of its own (`python -m app.appnode`,
whose exit code a script sees) against a real management node on 127.0.0.1, with a proxy in front of it where a
proxy's answer is the case.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from app.appnode.cli_context import TRY_LATER
from app.appnode.config import trust_taken_in_the_clear
from app.pki import service as pki
from tests.appnode_harness import enroll
from tests.conftest import stop_serving
from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_outages import readable_again, unreadable
from tests.test_sessions import people  # noqa: F401 (fixture)

RENEWAL_PUT_OFF = ("error (ca_unavailable): the renewal was refused: the management node's CA cannot answer now; "
                   "try again in {seconds} s (Retry-After)")


def node_cli(data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.appnode", "--data", str(data), *args],
                          capture_output=True, text=True, timeout=60)


def ca_key_cannot_be_opened(app, monkeypatch) -> None:
    """As in a management node started with the wrong passphrase: renewals are 503 ca_unavailable, Retry-After 30."""
    app.extensions.pop("mpim_authority", None)
    monkeypatch.setitem(app.config, "MPIM_CA_PASSPHRASE", "not-the-ca-passphrase")


def in_the_renewal_window(monkeypatch) -> None:
    later = datetime.now(UTC) + timedelta(days=70)  # of 90: inside the last third, on the management node's clock
    monkeypatch.setattr(pki, "utcnow", lambda: later)


@contextmanager
def proxy(app, between: Callable) -> Iterator[str]:
    """A proxy in front of the management node on a port of its own: `between(app)` is what it serves."""
    server = make_server("127.0.0.1", 0, between(app), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        stop_serving(server, thread)


def dating_retry_after(upstream, wait: timedelta):
    """Passes everything on, with any Retry-After given as an HTTP-date `wait` from now (RFC 9110 §10.2.3)."""
    def serve(environ, start_response):
        def start(status, headers, exc_info=None):
            date = format_datetime(datetime.now(UTC) + wait, usegmt=True)
            return start_response(status, [(name, date if name.lower() == "retry-after" else value)
                                           for name, value in headers], exc_info)
        return upstream(environ, start)
    return serve


def limiting_route_pulls(upstream, retry_after: str = "120"):
    """Passes everything on but route pulls, which it answers 429 with Retry-After, as a rate limit in a proxy
    may (nginx's limit_req with limit_req_status 429): a page of its own, no JSON error."""
    def serve(environ, start_response):
        if environ["PATH_INFO"] == "/api/v1/routes":
            start_response("429 Too Many Requests", [("Content-Type", "text/html"), ("Retry-After", retry_after)])
            return [b"<html><body>429 Too Many Requests</body></html>"]
        return upstream(environ, start_response)
    return serve


def test_renew_while_the_ca_key_cannot_be_opened_says_how_long_to_wait_and_exits_75(network, app, monkeypatch):  # noqa: F811
    a = network["a"]
    old = a.node.identity.fingerprint()
    in_the_renewal_window(monkeypatch)
    ca_key_cannot_be_opened(app, monkeypatch)

    done = node_cli(a.dir, "renew", "--force")
    assert (done.returncode, done.stdout) == (TRY_LATER, "") and TRY_LATER == 75
    assert done.stderr == RENEWAL_PUT_OFF.format(seconds=30) + "\n"
    done = node_cli(a.dir, "--json", "renew", "--force")  # the same on one JSON line, the wait as a number
    assert (done.returncode, done.stdout) == (TRY_LATER, "")
    assert json.loads(done.stderr) == {"error": {"code": "ca_unavailable", "message": RENEWAL_PUT_OFF.format(
        seconds=30).removeprefix("error (ca_unavailable): "), "retry_after": 30}}
    assert a.node.identity.fingerprint() == old

    monkeypatch.undo()  # the operator mended the passphrase; the clock is back, so the refusal now stands
    done = node_cli(a.dir, "renew", "--force")
    assert done.returncode == 2 and done.stderr.startswith("error (renewal_too_early): the renewal was refused: ")


def test_renew_reads_a_retry_after_given_as_an_http_date_by_a_proxy(network, app, monkeypatch):  # noqa: F811
    a = network["a"]
    in_the_renewal_window(monkeypatch)
    ca_key_cannot_be_opened(app, monkeypatch)
    with proxy(app, lambda upstream: dating_retry_after(upstream, timedelta(minutes=20))) as url:
        monkeypatch.setenv("MPIM_NODE_REGISTRY_URL", url)
        done = node_cli(a.dir, "renew", "--force")
    assert done.returncode == TRY_LATER, done.stderr
    said = re.fullmatch(re.escape(RENEWAL_PUT_OFF).replace(r"\{seconds\}", "([0-9]+)") + "\n", done.stderr)
    assert said is not None, done.stderr
    assert 18 * 60 < int(said.group(1)) <= 20 * 60  # not 0, as a date read as no delay would say


def test_join_while_the_ca_files_cannot_be_read_says_how_long_to_wait(app, live_server, people, tmp_path):  # noqa: F811
    """The first thing `join` asks for is the trust anchor, which the management node publishes from its CA
    directory; a file it cannot read (an unmounted share) is a 503 ca_unavailable with Retry-After."""
    minister, _ = people
    data = tmp_path / "node"
    created = node_cli(data, "init", "--registry", live_server, "--division", "360000", "--endpoint",
                       "https://127.0.0.1:9")
    assert created.returncode == 0, created.stderr
    root = Path(app.config["MPIM_CA_DIR"]) / "root.pem"
    kept = unreadable(root)
    try:
        done = node_cli(data, "join", "--token", enroll("360000", minister), "--wait", "0")
    finally:
        readable_again(root, kept)
    assert (done.returncode, done.stdout) == (TRY_LATER, "")
    assert done.stderr == ("error (ca_unavailable): GET /ca/ca.pem: the management node's CA cannot answer now; "
                           "try again in 30 s (Retry-After)\n")


def test_routes_pull_limited_by_a_proxy_says_how_long_to_wait_and_status_shows_it(network, app, monkeypatch):  # noqa: F811
    """The route pull's own answer (not only its node session) is read for Retry-After: a 429 or 503 was
    `route_unavailable`, exit 2, with no word of when to pull again."""
    a = network["a"]
    with proxy(app, limiting_route_pulls) as url:
        monkeypatch.setenv("MPIM_NODE_REGISTRY_URL", url)
        done = node_cli(a.dir, "routes", "pull")
    assert (done.returncode, done.stdout) == (TRY_LATER, ""), done.stderr
    assert done.stderr == ("error (registry_error): the routing table is unavailable: too many requests to the "
                           "management node; try again in 120 s (Retry-After)\n")
    assert "problem: registry_error: the routing table is unavailable: HTTP 429" in node_cli(a.dir, "status").stdout
    monkeypatch.delenv("MPIM_NODE_REGISTRY_URL")
    done = node_cli(a.dir, "routes", "pull")  # straight to the management node: taken, and the problem gone
    assert done.returncode == 0 and done.stdout.startswith("routing table v"), done.stderr
    assert "problem" not in node_cli(a.dir, "status").stdout


def test_a_retry_after_that_is_neither_seconds_nor_a_date_says_later_not_now(network, app, monkeypatch):  # noqa: F811
    """A proxy's "soon" was read as no delay at all: "try again now", and a script that obeyed asked at once."""
    a = network["a"]
    with proxy(app, lambda upstream: limiting_route_pulls(upstream, "soon")) as url:
        monkeypatch.setenv("MPIM_NODE_REGISTRY_URL", url)
        done = node_cli(a.dir, "routes", "pull")
        as_json = node_cli(a.dir, "--json", "routes", "pull")
    assert (done.returncode, done.stdout) == (TRY_LATER, ""), done.stderr
    assert done.stderr == ("error (registry_error): the routing table is unavailable: too many requests to the "
                           "management node; try again later (its Retry-After is neither seconds nor a date)\n")
    assert as_json.returncode == TRY_LATER and json.loads(as_json.stderr)["error"]["retry_after"] is None


def test_join_over_plain_http_to_another_host_warns_that_the_root_is_taken_unchecked(tmp_path):
    """`join` takes the trust anchor from whatever answers at the registry address (docs/protocol.md §10): over
    plain http from another host, anyone on the path could give it. Said before anything is asked; loopback
    (the join above, `make appnode`) is not warned about."""
    data = tmp_path / "node"
    created = node_cli(data, "init", "--registry", "http://0.0.0.0:9", "--division", "360000", "--endpoint",
                       "https://127.0.0.1:9")  # 0.0.0.0: no loopback address, and refused at once
    assert created.returncode == 0, created.stderr
    done = node_cli(data, "join", "--token", "mpim_et_x", "--wait", "0")
    warning, refusal = done.stderr.splitlines()
    assert warning.startswith("warning: the management node is reached over plain http (http://0.0.0.0:9): the root "
                              "this node trusts from now on is whatever answers there"), done.stderr
    assert done.returncode == 2 and refusal.startswith("error (registry_unreachable): "), done.stderr


@pytest.mark.parametrize(("url", "warned"), [
    ("http://127.0.0.1:5000", False), ("http://[::1]:5000", False), ("http://localhost:5000", False),
    ("http://LOCALHOST.:5000", False), ("https://registry.example", False), ("http://registry.example", True),
    ("http://10.0.0.5:5000", True), ("http://[2001:db8::1]", True)])
def test_which_registry_addresses_are_warned_about(url, warned):
    assert trust_taken_in_the_clear(url) is warned
