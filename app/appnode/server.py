"""Serving a node: gunicorn over HTTPS with mutual TLS, and the loop that keeps the node current.

One worker process with threads: the node's SQLite file has one writer at a time anyway, and the loop
(route pulls, outbox retries, ephemeral batches, renewal) must run exactly once per node.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
import time

from gunicorn.app.base import BaseApplication
from gunicorn.workers import gthread
from gunicorn.workers.gthread import ThreadWorker

from app.appnode.caller_limit import DEFAULT_THREADS, CallerLimit, per_caller_limit, refuse, shut, shut_after_linger
from app.appnode.node import Node
from app.appnode.renewal import RENEWAL_CHECK_EVERY
from app.appnode.request_deadline import bound_requests, certificate_name, deadline_socket
from app.appnode.store import checkpoint
from app.appnode.web import create_node_app

log = logging.getLogger("mpim.appnode")
EPHEMERAL_EVERY = 2.0
PRESENCE_EVERY = 300.0
CHECKPOINT_EVERY = 1.0
# `join --again` beside the server is looked for this often, between route pulls and deliveries
# (`Node.notice_joined_again`): taken up within seconds.
IDENTITY_CHECK_EVERY = 2.0
HOUSEKEEPING_EVERY = 6 * 3600.0


class NodeLoop(threading.Thread):
    """Everything a node does on its own: take up a `join --again` run beside it, pull routes (installing a
    certificate an admin issued for this node's key, docs/protocol.md §4), retry the outbox, flush read states
    and presence (and repeat presence every 5 minutes), renew its certificate in the last third of its validity,
    forget delivered envelopes and dedup records after the 7 days a repeat is recognised."""

    def __init__(self, node: Node):
        super().__init__(name="node-loop", daemon=True)
        self.node = node
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.node.wake.set()

    def run(self) -> None:
        next_routes = next_flush = next_renewal = next_checkpoint = next_identity_check = 0.0
        next_presence = next_housekeeping = time.monotonic() + PRESENCE_EVERY
        while not self.stopping.is_set():
            self.node.wake.clear()  # before the work: a wake-up during it makes the wait below return at once
            now = time.monotonic()
            if now >= next_identity_check:
                next_identity_check = now + IDENTITY_CHECK_EVERY
                self._guard("identity check", self.node.notice_joined_again)
            if now >= next_routes:
                next_routes = now + self.node.config.route_interval
                self._guard("route pull", self.node.sync_routes)
            self._guard("outbox", self.node.deliver)
            if now >= next_checkpoint:
                next_checkpoint = now + CHECKPOINT_EVERY
                self._guard("checkpoint", lambda: checkpoint(self.node.db))
            if now >= next_flush:
                next_flush = now + EPHEMERAL_EVERY
                self._guard("ephemeral", self.node.flush_ephemeral)
            if now >= next_presence:
                next_presence = now + PRESENCE_EVERY
                self._guard("presence", self.node.rebroadcast_presence)
            if now >= next_housekeeping:
                next_housekeeping = now + HOUSEKEEPING_EVERY
                self._guard("housekeeping", self.node.forget_delivered)
            if now >= next_renewal:  # sooner after a refusal with Retry-After (`renew_if_due`)
                next_renewal = now + (self._guard("renewal", self.node.renew_if_due) or RENEWAL_CHECK_EVERY)
            wait = min(1.0, max(0.05, next_routes - time.monotonic()))
            self.node.wake.wait(timeout=wait)

    @staticmethod
    def _guard(what: str, action):
        """`action()`'s result, or None when it failed (logged)."""
        try:
            return action()
        except Exception as error:  # the loop must outlive any one failure; the next round tries again
            log.warning("%s failed: %s", what, error)
            return None


class NodeWorker(ThreadWorker):
    """gthread, each request read against the node's deadline (`request_deadline.py`) and each caller holding at
    most `connection_limit` threads (`caller_limit.py`). A new connection's deadline starts with its TLS
    handshake; a kept-alive connection comes back here when its next request begins to arrive.

    Relies on gthread's `handle` (27.0.1) skipping its wait for data and its `conn.init()` for a connection
    already initialised, which the worker does here itself so as to count the caller by its certificate before
    a request is read; tests/test_appnode_connection_limits.py fails if that changes."""

    connection_limit = 1  # set per server (`NodeServer.load_config`)

    def init_process(self):
        self.callers = CallerLimit(self.connection_limit, self.cfg.threads)
        super().init_process()

    def handle(self, conn):
        if conn.initialized and (sock := deadline_socket(conn.sock)):
            sock.start_request()  # before a refusal too: it is written outside the last answer's deadline
        caller = getattr(conn, "caller", None) or conn.client[0]  # a kept-alive connection's node, if it has one
        if not self.callers.take(caller):
            return self._refuse(conn, caller)
        try:
            if not conn.initialized:
                if not (conn.data_ready or conn.wait_for_data(gthread.DEFAULT_WORKER_DATA_TIMEOUT)):
                    return gthread._DEFER  # back to the poller without a thread, as gthread does
                if not self._handshake(conn):
                    shut(conn.sock)  # nothing was sent on it, so there is nothing to linger for
                    return False
                if node := certificate_name(conn.sock):
                    conn.caller = node
                    if not self.callers.move(caller, node):
                        caller = None  # released by `move`
                        return self._refuse(conn, node)
                    caller = node
            kept = super().handle(conn)
            if kept is False:  # gunicorn's main loop would wait for the caller to close (`shut_after_linger`)
                shut_after_linger(conn.sock)
            return kept
        finally:
            if caller is not None:
                self.callers.release(caller)

    def _handshake(self, conn) -> bool:
        """The TLS handshake of a new connection (against its deadline), as gthread's `handle` would do it."""
        try:
            conn.sock.setblocking(True)
            conn.init()
        except ssl.SSLError as error:
            if error.args[0] != ssl.SSL_ERROR_EOF:
                self.handle_error(None, conn.sock, conn.client, error)  # gthread's warning naming the address
            return False
        except OSError as error:  # the caller went, or was cut off at its deadline
            self.log.debug("TLS handshake ended: %s", error)
            return False
        return True

    def _refuse(self, conn, caller: str) -> bool:
        """Refuse a connection of a caller at its limit without serving it: answered with a 503 once its TLS
        handshake is done, unless the caller has another refusal being answered or no thread would be left
        idle (`CallerLimit.take_refusal`); else closed at once."""
        if self.callers.first_refusal(caller):
            host, port = conn.client[:2]
            who = caller if caller == host else f"{caller} at {host}"
            log.warning("refused a connection from %s (port %s): it already has %d connections being served, "
                        "the most one caller may have (of %d threads); its further refusals are not logged until "
                        "it has fewer", who, port, self.callers.limit, self.cfg.threads)
        if not (conn.initialized and self.callers.take_refusal(caller)):
            shut(conn.sock)
            return False
        try:
            refuse(conn.sock, self.callers.limit)
        finally:
            self.callers.release_refusal(caller)
        return False


class NodeServer(BaseApplication):
    def __init__(self, data_dir, *, threads: int = DEFAULT_THREADS):
        self.data_dir = data_dir
        self.threads = threads
        self.running: tuple[Node, NodeLoop] | None = None  # in the worker, once `load` ran
        super().__init__()

    def load_config(self) -> None:
        node = Node(self.data_dir)
        identity, deadline = node.identity, node.config.request_deadline
        limit = per_caller_limit(node.config.max_connections_per_caller, self.threads)
        log.info("each caller may have %d of the %d threads serving it at once", limit, self.threads)
        settings = {
            "bind": node.config.listen, "workers": 1, "threads": self.threads,
            "certfile": str(identity.cert_file), "keyfile": str(identity.key_file),
            "ca_certs": str(identity.bundle_file), "cert_reqs": ssl.CERT_OPTIONAL, "keepalive": 75,
            "timeout": 60, "graceful_timeout": 10, "accesslog": os.environ.get("MPIM_NODE_ACCESS_LOG"),
            "errorlog": "-", "loglevel": os.environ.get("MPIM_NODE_LOG_LEVEL", "info"),
            "proc_name": f"mpim-node-{node.node_id}", "control_socket_disable": True,
            "worker_exit": self._worker_exit,
            "worker_class": type("NodeWorker", (NodeWorker,), {"connection_limit": limit}),
            # gunicorn builds a context per connection (so a renewed certificate is served at once): each one's
            # sockets read against the deadline.
            "ssl_context": lambda _config, default: bound_requests(default(), deadline),
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        node = Node(self.data_dir)
        if swept := node.sweep_part_files():
            log.info("removed %d part files that ended downloads or sends left", len(swept))
        # New connections already get a context loaded from the files (gthread); a graceful reload (SIGHUP to
        # the gunicorn master) also ends the kept-alive ones still presenting the old certificate.
        node.certificate_changed.append(lambda: os.kill(os.getppid(), signal.SIGHUP))
        loop = NodeLoop(node)
        loop.start()
        self.running = (node, loop)
        return create_node_app(node)

    def _worker_exit(self, _arbiter, _worker) -> None:
        """In the worker, after it stopped serving: stop the loop and the deliveries it started."""
        if self.running is not None:
            node, loop = self.running
            loop.stop()
            node.close()
