"""Real health endpoints on 127.0.0.1 for the poller tests: aiohttp servers in a thread."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiohttp import web


class HealthServer:
    """Serves /api/v1/health with a behaviour chosen per test; HTTP or HTTPS (mutual TLS)."""

    def __init__(self, node_id: str, behaviour: str = "ok", ssl_context: ssl.SSLContext | None = None):
        self.node_id, self.behaviour, self.ssl_context = node_id, behaviour, ssl_context
        self.loop = asyncio.new_event_loop()
        self.never = None
        self.port = 0
        self.requests = 0
        self.elsewhere_requests = 0  # what a followed redirect would reach
        self.gather = 0  # when set: no request is answered before this many have arrived (`arrived`)
        self.arrived = None
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def health(self, request):
        self.requests += 1
        if self.gather:  # two pollers' requests in flight at once, neither answered before the other came
            if self.requests >= self.gather:
                self.arrived.set()
            await self.arrived.wait()
        if self.behaviour == "slow":
            await self.never.wait()  # an answer that never comes; the poller's timeout must fire
        if self.behaviour == "two_parts":  # a good answer in two chunks, the second a moment later
            body = json.dumps({"status": "ok", "node_id": self.node_id, "version": "test",
                               "time": "2026-01-01T00:00:00Z"}).encode()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(body[:20])
            await asyncio.sleep(0.2)  # the peer's network, not the test, is slow here
            try:
                await response.write(body[20:])
                await response.write_eof()
            except ConnectionError:  # a poller that stopped at the first part went away
                pass
            return response
        if self.behaviour == "trickle":  # a good answer, one byte every 0.25 s: about 20 s in all
            body = json.dumps({"status": "ok", "node_id": self.node_id}).encode()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            try:
                for index in range(len(body)):
                    await response.write(body[index:index + 1])
                    await asyncio.sleep(0.25)
                await response.write_eof()
            except ConnectionError:  # the caller gave up, as it should
                pass
            return response
        if self.behaviour == "huge":  # a well-formed answer, far past what the poller reads
            return web.Response(text=json.dumps({"status": "ok", "node_id": self.node_id, "pad": "x" * 10_000_000}),
                                content_type="application/json")
        if self.behaviour == "redirect":  # to somewhere that would answer well: not followed
            raise web.HTTPFound("/elsewhere")
        if self.behaviour == "error":
            return web.Response(status=500, text="boom")
        if self.behaviour == "invalid_json":
            return web.Response(text="{not json", content_type="application/json")
        if self.behaviour == "nested_json":  # 5 KB, deeper than Python's JSON parser goes
            return web.Response(text="[" * 5000, content_type="application/json")
        if self.behaviour == "duplicate_key":  # Python's json keeps the last "status" silently
            return web.Response(text=f'{{"status": "down", "status": "ok", "node_id": "{self.node_id}"}}',
                                content_type="application/json")
        if self.behaviour == "nan":
            return web.Response(text=f'{{"status": "ok", "node_id": "{self.node_id}", "load": NaN}}',
                                content_type="application/json")
        if self.behaviour == "infinite_number":  # Python's json reads it as inf
            return web.Response(text=f'{{"status": "ok", "node_id": "{self.node_id}", "load": 1e999}}',
                                content_type="application/json")
        if self.behaviour == "busy_close":  # the reference node's answer when too many connections are open
            response = web.Response(status=503, text="busy", headers={"Retry-After": "1"})
            response.force_close()
            return response
        body = {"status": "ok" if self.behaviour != "not_ok" else "degraded",
                "node_id": self.node_id if self.behaviour != "wrong_node" else "44000000002025000001",
                "version": "test", "time": "2026-01-01T00:00:00Z"}
        if self.behaviour == "without_version":
            del body["version"]
        if self.behaviour == "long_version":
            body["version"] = "v" * 65
        if self.behaviour == "local_time":  # not UTC as the schema's timestamp is
            body["time"] = "2026-01-01T08:00:00+08:00"
        response = web.Response(text=json.dumps(body), content_type="application/json")
        if self.behaviour == "close":  # as a server that keeps no connection alive (gunicorn's sync worker)
            response.force_close()
        return response

    async def elsewhere(self, request):
        self.elsewhere_requests += 1
        return web.Response(text=json.dumps({"status": "ok", "node_id": "internal-service"}),
                            content_type="application/json")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.never = asyncio.Event()
        self.arrived = asyncio.Event()
        app = web.Application()
        app.router.add_get("/api/v1/health", self.health)
        app.router.add_get("/elsewhere", self.elsewhere)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def stop():
            self.never.set()
            self.arrived.set()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def stop_listening(listener: socket.socket) -> None:
    """Close a listening socket, waking the thread blocked in its accept() (a bare close does not, on Linux)."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()


@contextmanager
def raw_receiver(answer: Callable[[socket.socket, threading.Event], None], *, path: str = "/hook",
                 query: str = "") -> Iterator[str]:
    """A server below HTTP: after reading each request, `answer` writes what it likes to the connection (or
    nothing: it is closed unanswered), until the event is set (the test is over). Yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept_each() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with connection:
                connection.recv(65536)
                answer(connection, stop)

    thread = threading.Thread(target=accept_each, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}{path}{query}"
    finally:
        stop.set()
        stop_listening(listener)
        thread.join(30)
