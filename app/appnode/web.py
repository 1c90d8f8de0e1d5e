"""The node's HTTPS surface: health, the four federation endpoints, and a small read-only page.

Thin views over `Node`. The caller's client certificate comes from the TLS socket the server hands to the
WSGI environ (gunicorn's `gunicorn.socket`, or werkzeug's `werkzeug.socket` in tests).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from flask import Flask, Response, abort, g, render_template, request, url_for
from flask_babel import Babel
from flask_babel import lazy_gettext as _l

from app.appnode import protocol
from app.appnode.node import Node, address
from app.appnode.request_deadline import deadline_socket
from app.errors import DomainError
from app.labels import CAPABILITIES
from app.readable import shown_controls

log = logging.getLogger("mpim.appnode.web")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = ("zh_CN", "en")
# The page's words for the node's stored codes (Node.history's delivery, A.15 statuses, A.9 message types).
LABELS = {
    "delivery": {"delivered": _l("Delivered"), "pending": _l("Waiting to be delivered"),
                 "failed": _l("Delivery failed"), "partial": _l("Not delivered to every node")},
    "presence": {"online": _l("Online"), "offline": _l("Offline"), "busy": _l("Busy"), "away": _l("Away")},
    "msg_type": {kind: CAPABILITIES[kind] for kind in ("text", "image", "voice", "file", "sticker")},
}
# The page's words for a refusal of what its address names; other refusals show the node's own message.
PAGE_REFUSALS = {"not_found": _l("This node has no such user, or no such conversation."),
                 "not_a_participant": _l("This user takes no part in that conversation.")}


def client_socket():
    return request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")


def peer_certificate() -> bytes | None:
    """The DER bytes of the caller's verified client certificate, or None."""
    getpeercert = getattr(client_socket(), "getpeercert", None)
    return getpeercert(binary_form=True) if getpeercert else None


def json_response(document: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(document, ensure_ascii=False), status=status, headers=headers,
                    mimetype="application/json")


MIN_OPERATOR_PASSWORD = 12  # characters; `init` writes 16 (secrets.token_urlsafe(12))
LOGIN_FAILURE_LOG_SECONDS = 60.0


def operator_password(path: Path) -> tuple[str, str]:
    """The operator password in `path`, and "" — or "" and why the page is off: "missing" (no file, or an empty
    one), "short" (under MIN_OPERATOR_PASSWORD characters), "exposed" (the file can be read by group or others)."""
    try:
        expected = path.read_text().strip()
        exposed = os.stat(path).st_mode & 0o077
    except (OSError, ValueError):
        return "", "missing"
    if not expected:
        return "", "missing"
    if len(expected) < MIN_OPERATOR_PASSWORD:
        return "", "short"
    if exposed:
        return "", "exposed"
    return expected, ""


def create_node_app(node: Node) -> Flask:
    app = Flask("app.appnode", template_folder=str(PROJECT_ROOT / "templates"),
                static_folder=str(PROJECT_ROOT / "static"))
    app.config.update(BABEL_TRANSLATION_DIRECTORIES=str(PROJECT_ROOT / "app" / "translations"),
                      BABEL_DEFAULT_LOCALE="zh_CN")
    Babel(app, locale_selector=lambda: g.get("lang", "zh_CN"))
    app.extensions["mpim_node"] = node
    zone = ZoneInfo(os.environ.get("MPIM_DISPLAY_TIMEZONE", "Asia/Shanghai"))

    @app.template_filter("shown_time")
    def shown_time(value: str) -> str:
        """Protocol times are RFC 3339 UTC; people read them in their own time zone, as in the console. A
        peer's time at either end of the calendar has no local time (9999-12-31T23:59:59Z is past year 9999
        in UTC+08:00): it is shown as sent."""
        try:
            return protocol.parse_timestamp(value).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        except OverflowError:
            return value

    # A peer's text (A.4 allows any character) with its direction controls shown, never obeyed.
    app.add_template_filter(shown_controls, "shown_controls")

    @app.context_processor
    def page_helpers():
        def with_language(lang: str) -> str:
            """This page in another language: its path and its query as given (a repeated name kept), `lang`
            replaced, never appended. The query is never handed to url_for, which took `endpoint` or `_method`
            in it for its own arguments (a 500) and `_external` for a link to another scheme and host."""
            query = [(name, value) for name, value in request.args.items(multi=True) if name != "lang"]
            return f"{url_for(request.endpoint)}?{urlencode([*query, ('lang', lang)])}"
        # The node's problems, for its operator only: not on the page that refuses a login.
        problems = node.problems() if g.get("operator") else None
        return {"with_language": with_language, "labels": LABELS, "problems": problems}

    @app.errorhandler(DomainError)
    def domain_error(error: DomainError):
        if request.path.startswith("/api/"):
            return json_response(error.to_dict(), error.status)
        # The operator's page, a user or conversation typed into its address: a page in the reader's language,
        # not the protocol's English JSON.
        return render_template("appnode/refused.html", node=node, lang=g.get("lang", "zh_CN"),
                               message=PAGE_REFUSALS.get(error.code, error.message)), error.status

    @app.errorhandler(404)
    def not_found(_error):
        return json_response(protocol.NotFound("unknown path").to_dict(), 404)

    @app.errorhandler(405)
    def not_allowed(error):
        # The Allow header Werkzeug built (RFC 9110 requires it on a 405); the body is the protocol's.
        allow = {name: value for name, value in error.get_headers() if name.lower() == "allow"}
        return json_response(protocol.MethodNotAllowed(f"{request.method} is not allowed here").to_dict(), 405,
                             allow)

    @app.errorhandler(500)
    def internal_error(error):
        """A fault of this node: peers get the protocol's error shape (and retry it, §6), people Flask's page."""
        if not request.path.startswith("/api/"):
            return error
        return json_response(protocol.InternalError("the node failed to handle the request").to_dict(), 500)

    @app.after_request
    def request_read(response: Response) -> Response:
        """The request's deadline ends as its answer begins, and the answer's deadline, for its length, starts."""
        if sock := deadline_socket(client_socket()):
            sock.request_read(response.content_length)
        return defended(response)

    def defended(response: Response) -> Response:
        """The operator's page shows a user's messages: no cache keeps them, no other site frames the page to
        trick a click. No answer is sniffed for another type. The federation API keeps its own headers: peers
        are no browsers, and its answers are not cached anyway."""
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.path.startswith("/api/"):
            return response
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        if not request.path.startswith("/static/"):  # the stylesheet holds nothing of anyone's
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/api/v1/health")
    def health():
        return json_response(node.health())

    @app.post("/api/v1/federation/<name>")
    def federation(name: str):
        kind = protocol.ENDPOINTS.get(f"/api/v1/federation/{name}")
        if kind is None:
            abort(404)
        if (request.content_length or 0) > protocol.MAX_BODY_BYTES:
            # Refused before a byte is read: waiting for them would hold a thread for whoever announces them.
            raise protocol.PayloadTooLarge(f"the body is over {protocol.MAX_BODY_BYTES} bytes")
        certificate = peer_certificate()
        if not certificate:
            # Refused before a byte is read too: the TLS layer lets callers without one through (for health),
            # and any of them could otherwise hold a thread for as long as it takes to send an announced MiB.
            raise protocol.CertificateMismatch("federation requests need a client certificate", field="from_node")
        if sock := deadline_socket(client_socket()):
            # Only now, for a body it is going to read: one without a length may still be the largest allowed.
            sock.allow_body(request.content_length if request.content_length is not None
                            else protocol.MAX_BODY_BYTES)
        body = request.stream.read(protocol.MAX_BODY_BYTES + 1)  # one byte more: receive() refuses 413
        if request.content_length is not None and len(body) < request.content_length:
            # The connection closed before the body it announced was whole (the caller went, or was cut off at
            # its deadline): what arrived is not the request, and is not taken as one.
            raise protocol.InvalidJSON("the body ended before its Content-Length")
        reply = node.receive(kind, body, request.content_type, certificate)
        if reply.body is not None:
            return Response(reply.body, status=reply.status, headers=reply.headers)
        return json_response(reply.document, reply.status, reply.headers)

    # --- the page: conversations per local user, for the node's operator (HTTP Basic, `operator`) ---------
    failures_logged: dict[str, float] = {}  # address -> when its last failed login was logged

    def require_operator():
        """None for the operator; otherwise the answer to give. Without a usable password in `ui_password`
        (`init` writes one) the page is off (503), saying why: an empty file let anyone in with an empty password,
        a missing one failed every request, and the page shares its port with the federation API, so a short
        password, or one other users of the machine can read, is no lock. A failed login is logged, once a
        minute for an address: a thousand guesses left no trace."""
        g.lang = request.args.get("lang") if request.args.get("lang") in LANGUAGES else "zh_CN"
        password_file = node.data_dir / "ui_password"
        expected, problem = operator_password(password_file)
        if problem:
            return render_template("appnode/disabled.html", node=node, lang=g.lang, problem=problem,
                                   file_name=password_file.name, minimum=MIN_OPERATOR_PASSWORD), 503
        given = request.authorization
        if not (given and given.username == "operator"
                and hmac.compare_digest((given.password or "").encode(), expected.encode())):
            address, now = request.remote_addr or "?", time.monotonic()
            if now - failures_logged.get(address, -LOGIN_FAILURE_LOG_SECONDS) >= LOGIN_FAILURE_LOG_SECONDS:
                if len(failures_logged) >= 1024:
                    failures_logged.clear()
                failures_logged[address] = now
                log.warning("operator login failed from %s (logged once a minute for an address)", address)
            return Response("operator login required", 401, {"WWW-Authenticate": 'Basic realm="mpim node"'})
        g.operator = True
        return None

    @app.get("/")
    def index():
        denied = require_operator()
        if denied:
            return denied
        users = node.users()
        chosen = request.args.get("user") or (users[0].user_id if users else None)
        # A page of the conversations with the newest messages, or of those older than `before` (the "older
        # conversations" link): a peer's thousands of them on one page took seconds and megabytes.
        before = request.args.get("before") or None
        conversations, older = node.conversations_page(chosen, before=before) if chosen else ([], None)
        return render_template("appnode/index.html", node=node, users=users, chosen=chosen,
                               conversations=conversations, before=before, older=older,
                               groups=node.groups(chosen) if chosen else [], lang=g.lang)

    @app.get("/conversation")
    def conversation():
        denied = require_operator()
        if denied:
            return denied
        user, conversation_id = request.args.get("user", ""), request.args.get("id", "")
        # A page of the newest messages, or of those before `before` (the "older messages" link): a whole large
        # conversation on one page took seconds to read and to show.
        before = request.args.get("before") or None
        me = address(user, node.node_id)
        entries, older = node.history_page(user, conversation_id, before=before)
        last = entries[-1]["message"] if entries else None  # none before a conversation's first message
        other = ((last.to if last.sender_address == me else last.sender_address)
                 if last is not None and last.chat_type == "single" else None)
        return render_template("appnode/conversation.html", node=node, user=user, me=me, other=other,
                               presence=node.presence_of(other) if other else None,
                               conversation_id=conversation_id, entries=entries, before=before, older=older,
                               lang=g.lang)

    return app
