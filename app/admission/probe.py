"""On-demand reachability probe of `{endpoint}/api/v1/health` for the review page.

Before approval a node holds no certificate of ours, so this checks reachability and the answer's
shape only: the TLS certificate is reported, not trusted. Health polling after approval verifies
the chain and the node's identity.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from app import strict_json


def probe_health(endpoint: str, timeout: float = 3.0,
                 present_identity: Callable[[ssl.SSLContext], None] | None = None) -> dict:
    """`present_identity` loads the management node's certificate into the client context, for nodes
    that already demand a client certificate on their health endpoint."""
    url = endpoint.rstrip("/") + "/api/v1/health"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if present_identity:
        present_identity(context)
    started = time.perf_counter()
    result: dict = {"url": url, "reachable": False}
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310 (https only)
            body = response.read(65536)
            result.update(reachable=True, http_status=response.status)
            try:
                # As strictly as health polling reads it: a repeated "status" shown as "ok" here would be refused there.
                document = strict_json.parse(body)
                result["answer"] = {k: document.get(k) for k in ("status", "node_id", "version")} \
                    if isinstance(document, dict) else None
            except strict_json.NotStrictJSON:
                result["answer"] = None
    except urllib.error.HTTPError as error:
        result.update(reachable=True, http_status=error.code, error=f"HTTP {error.code}", failure="http_status")
    except TimeoutError:
        result.update(error=f"no answer within {timeout:g} s", failure="timeout")
    except urllib.error.URLError as error:
        reason = error.reason
        result["error"] = ("timeout" if isinstance(reason, TimeoutError | socket.timeout) else
                           reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)[:200])
        # The health poller's failure codes, so the console can name them in the reader's language.
        result["failure"] = ("timeout" if isinstance(reason, TimeoutError | socket.timeout) else
                             "refused" if isinstance(reason, ConnectionRefusedError) else
                             "tls" if isinstance(reason, ssl.SSLError) else "error")
    except (OSError, ValueError) as error:
        result.update(error=str(error)[:200], failure="tls" if isinstance(error, ssl.SSLError) else "error")
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result
