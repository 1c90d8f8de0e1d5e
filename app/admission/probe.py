"""On-demand reachability probe of `{endpoint}/api/v1/health` for the review page.

Before approval a node holds no certificate of ours, so this checks reachability and the answer's
shape only: the TLS certificate is not trusted. Health polling after approval verifies the chain and
the node's identity. Otherwise the probe asks as health polling does, with the same client (aiohttp):
a redirect is an answer, never followed (or an applicant's endpoint could send the management node to
any address on its network and read back what answered there), and `timeout` bounds the whole probe,
not each read (a node trickling its answer would otherwise hold a console thread as long as it liked).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable

import aiohttp

from app import strict_json
from app.health import poller


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
    result.update(poller.run(_ask(url, context, timeout)))
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


async def _ask(url: str, context: ssl.SSLContext, timeout: float) -> dict:
    """What the probe learnt: reachable, the HTTP status and the answer's keys, or the failure in health
    polling's codes, so that the console names them in the reader's language."""
    try:
        async with asyncio.timeout(timeout), aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, force_close=True)) as client, \
                client.get(url, allow_redirects=False) as response:
            if response.status >= 300:  # a redirect included: its target is not the node's health endpoint
                return {"reachable": True, "http_status": response.status, "error": f"HTTP {response.status}",
                        "failure": "http_status"}
            body = await poller.read_body(response.content)
            found: dict = {"reachable": True, "http_status": response.status, "answer": None}
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as error:
        failure, detail = poller.connection_failure(error, timeout)
        return {"error": detail[:200], "failure": failure.value}
    if len(body) <= poller.MAX_BODY:
        try:
            # As strictly as health polling reads it: a repeated "status" shown as "ok" here would be refused there.
            document = strict_json.parse(body)
        except strict_json.NotStrictJSON:
            document = None
        if isinstance(document, dict):
            found["answer"] = {key: document.get(key) for key in ("status", "node_id", "version")}
    return found
