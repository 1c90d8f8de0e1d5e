"""A reference node's configuration: written by `init` into its data directory, overridable from the environment.

One data directory is one node: `config.json`, the SQLite database, the TLS material under `tls/`, the held
routing table and the files its users sent or downloaded.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from app.admission.information import normalise_endpoint
from app.appnode import filetypes
from app.appnode.caller_limit import MAX_PER_CALLER
from app.appnode.request_deadline import RequestDeadline
from app.divisions.codes import CODE_PATTERN
from app.errors import ValidationFailed

CAPABILITIES = ("text", "image", "voice", "file", "download", "single_chat", "group", "read_count", "sticker",
                "presence")
SOFTWARE_VERSION = "mpim-reference-node 1.0"


# A peer's ephemeral state kept here: beyond a billion rows the node's SQLite file would fill its disk first.
MAX_PER_PEER = 1_000_000_000
# Pulling the routing table more often than this asks the management node for nothing new (it is re-signed
# hourly and changes only by an admin's decision); 0 pulled it up to 20 times a second.
MIN_ROUTE_INTERVAL = 1.0


def _whole(value, least: int, most: float) -> bool:
    return type(value) is int and least <= value <= most


def check_listen(listen, name: str, place: str = "") -> None:
    """`listen` must be host:port, the port a whole number from 1 to 65535 in ASCII digits: gunicorn took
    "nonsense" for a host, and a port past 65535 failed `run` with an OverflowError. Refused naming `name`
    (the setting, option or variable it came from) and `place` (" in config.json")."""
    host, _, port = listen.rpartition(":") if isinstance(listen, str) else ("", "", "")
    if not (host and host == host.strip() and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValidationFailed(f"{name} ({listen!r}){place} must be host:port, the port a whole number from 1 to "
                               "65535", code="invalid_config")


def check_division(code, name: str) -> None:
    """`code` must have the shape the management node requires of a division code (app.divisions.codes): six
    ASCII digits. Only the shape: which codes are current GB/T 2260 divisions is in the management node's
    database, and it says so at `join`. Refused naming `name`, where `abc` was refused only at `join`."""
    if not (isinstance(code, str) and CODE_PATTERN.fullmatch(code)):
        raise ValidationFailed(f"{name} ({code!r}) must be six digits, a GB/T 2260 division code such as 360000",
                               code="invalid_config")


def check_endpoint(endpoint, name: str) -> None:
    """`endpoint` must be a URL the management node takes (its own rule, normalise_endpoint: https, a host, no
    user information, query or fragment); refused naming `name`, where `x` was refused only at `join`."""
    try:
        normalise_endpoint(endpoint)
    except ValidationFailed as error:
        raise ValidationFailed(f"{name} ({endpoint!r}) is no endpoint the management node takes: {error.message}",
                               code="invalid_config") from None


def check_registry_url(url, name: str, place: str = "") -> None:
    """`url` must be an http:// or https:// address of the management node: a host, a port from 1 to 65535, a
    path at most (requests go to the path joined after it), no user information, query, fragment, whitespace or
    control character. Checked at `init` and whenever the node reads its configuration: "http://a b" or
    "http://user:pw@host/" ended `join` in a traceback, and "localhost:5000" was called unreachable."""
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        port_ok = parts is not None and (parts.port is None or parts.port > 0)
    except ValueError:  # a port that is no number or past 65535, a malformed IPv6 host
        parts, port_ok = None, False
    if (parts is None or not port_ok or parts.scheme not in ("http", "https") or not parts.hostname
            or "@" in parts.netloc or parts.query or parts.fragment or "?" in url or "#" in url
            or any(character.isspace() or not character.isprintable() for character in url)):
        raise ValidationFailed(f"{name} ({url!r}){place} must be the management node's http:// or https:// address: "
                               "a host and port, no user, query or fragment, e.g. https://registry.example:8443",
                               code="invalid_config")


def trust_taken_in_the_clear(url: str) -> bool:
    """Whether `join` takes the trust anchor over plain http from a host other than this machine: whoever
    answers for that address (on the path, or a proxy) could give the node their own root (docs/protocol.md
    §10). Loopback (the README's `make run` and `make appnode` on one machine) is this machine's own."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = (parts.hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: resolved by whatever DNS answers

def _from_environment(name: str, kind: type, least: float):
    try:
        value = kind(os.environ[name])
    except ValueError:
        value = None
    if value is None or not least <= value < math.inf:
        raise ValidationFailed(f"{name} ({os.environ[name]!r}) must be a number, at least {least:g}",
                               code="invalid_config")
    return value


@dataclass
class NodeConfig:
    registry_url: str
    division_code: str
    endpoint: str
    listen: str = "127.0.0.1:8443"
    org_name: str = "Reference node"
    org_code: str = "000000000000"
    system_name: str = "MPIM reference node"
    vendor: str = "MPIM Registry"
    contact: dict = field(default_factory=lambda: {"name": "Operator", "phone": "010-00000000",
                                                   "email": "ops@node.invalid"})
    capabilities: list = field(default_factory=lambda: list(CAPABILITIES))
    # Largest file of each kind this node accepts, in bytes (never above the protocol's own limits).
    limits: dict = field(default_factory=lambda: dict(filetypes.LIMITS))
    route_interval: float = 60.0
    # What one peer node may keep here of its users' ephemeral state (docs/protocol.md §6): read states past the
    # cap are refused (quota_exceeded), presence past it evicts that peer's oldest. Generous for honest peers: a
    # home node relays the read states of every member of its groups (up to 3000 each).
    max_read_states_per_peer: int = 500_000
    max_presence_per_peer: int = 50_000
    # How many groups created hidden here (new, listing no user of this node: kept for their seq after a kick,
    # quit or dismiss, §8.9) one home node may have this node keep: past it a new one is refused
    # (quota_exceeded). Groups this node's users were in and left are hidden too, and not counted.
    max_hidden_groups_per_peer: int = 10_000
    # How long a caller may take to send one request (docs/protocol.md §10, app/appnode/request_deadline.py):
    # the TLS handshake (on a new connection), the request line, headers and body together get
    # `request_read_seconds`, and a body `1 / request_min_bytes_per_second` seconds more per byte it declares.
    # The same two bound taking an answer: each write within `request_read_seconds`, the whole answer within that
    # plus the time its length takes at `request_min_bytes_per_second`.
    request_read_seconds: float = 30.0
    request_min_bytes_per_second: int = 16 * 1024
    # How many connections of one caller (a peer node by its certificate, else an IP address) are served at once
    # (docs/protocol.md §10, app/appnode/caller_limit.py): 1 to 64, at most the threads; null is 6 (the reference
    # sender's 4 deliveries at once, and 2 more for the peer's other traffic), and never more than half the
    # threads, so the other peers keep the rest. Past it a connection gets 503 too_many_connections.
    max_connections_per_caller: int | None = None
    # Whether a user who is not a member may `join` a group homed here (docs/protocol.md §8.9, "if the home
    # node's policy allows"). False: groups are joined by invitation only, and a kicked user stays out. True:
    # anyone who knows a group's address may join it, a user kicked from it too (no one is barred).
    open_groups: bool = False
    registry_ca_file: str | None = None

    FILE = "config.json"

    @classmethod
    def load(cls, data_dir: Path) -> NodeConfig:
        values = json.loads((data_dir / cls.FILE).read_text("utf-8"))
        config = cls(**values)
        # The environment wins over the file, so one data directory can be moved between hosts and ports.
        for name, attribute in (("MPIM_NODE_REGISTRY_URL", "registry_url"), ("MPIM_NODE_LISTEN", "listen")):
            if os.environ.get(name):
                setattr(config, attribute, os.environ[name])
        if os.environ.get("MPIM_NODE_REGISTRY_URL"):
            check_registry_url(config.registry_url, "MPIM_NODE_REGISTRY_URL")
        else:
            check_registry_url(config.registry_url, "registry_url", f" in {cls.FILE}")
        if os.environ.get("MPIM_NODE_LISTEN"):
            check_listen(config.listen, "MPIM_NODE_LISTEN")
        else:
            check_listen(config.listen, "listen", f" in {cls.FILE}")
        if os.environ.get("MPIM_NODE_ROUTE_INTERVAL"):
            config.route_interval = _from_environment("MPIM_NODE_ROUTE_INTERVAL", float, MIN_ROUTE_INTERVAL)
        config.check_numbers()
        if os.environ.get("MPIM_NODE_MAX_FILE_BYTES"):
            cap = _from_environment("MPIM_NODE_MAX_FILE_BYTES", int, 0)
            config.limits = {kind: min(limit, cap) for kind, limit in config.limits.items()}
        config.request_deadline  # noqa: B018 (a deadline that is not a positive time is refused here, at start)
        return config

    def save(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / self.FILE).write_text(json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n", "utf-8")

    @property
    def request_deadline(self) -> RequestDeadline:
        try:
            return RequestDeadline(float(self.request_read_seconds), float(self.request_min_bytes_per_second))
        except (TypeError, ValueError):
            raise ValidationFailed(
                f"request_read_seconds ({self.request_read_seconds!r}) and request_min_bytes_per_second "
                f"({self.request_min_bytes_per_second!r}) in {self.FILE} must be positive numbers",
                code="invalid_config") from None

    def check_numbers(self) -> None:
        """Refuse, at start and by name, a count, time or switch the node could not work with: a cap of "many" (or
        a file limit that is not a whole number) failed every batch it applied to as an internal error, retried by
        the peer for 48 h; a cap of 0 refused every read state; a route interval of 0 pulled the table from the
        management node up to 20 times a second."""
        value = self.max_connections_per_caller
        if value is not None and not _whole(value, 1, MAX_PER_CALLER):
            raise ValidationFailed(f"max_connections_per_caller ({value!r}) in {self.FILE} must be a whole number "
                                   f"from 1 to {MAX_PER_CALLER}, or null for the default", code="invalid_config")
        for name in ("max_read_states_per_peer", "max_presence_per_peer", "max_hidden_groups_per_peer"):
            if not _whole(value := getattr(self, name), 1, MAX_PER_PEER):
                raise ValidationFailed(f"{name} ({value!r}) in {self.FILE} must be a whole number from 1 to "
                                       f"{MAX_PER_PEER}", code="invalid_config")
        if not isinstance(self.limits, dict) or not all(
                kind in filetypes.LIMITS and _whole(limit, 0, math.inf) for kind, limit in self.limits.items()):
            raise ValidationFailed(f"limits ({self.limits!r}) in {self.FILE} must give, for kinds among "
                                   f"{', '.join(filetypes.LIMITS)}, a whole number of bytes (at least 0; above the "
                                   "protocol's own limit counts as that)", code="invalid_config")
        if type(self.open_groups) is not bool:  # "false" in the file would have opened every group
            raise ValidationFailed(f"open_groups ({self.open_groups!r}) in {self.FILE} must be true or false",
                                   code="invalid_config")
        interval = self.route_interval
        if type(interval) not in (int, float) or not MIN_ROUTE_INTERVAL <= interval < math.inf:
            raise ValidationFailed(f"route_interval ({interval!r}) in {self.FILE} must be a number of seconds, "
                                   f"at least {MIN_ROUTE_INTERVAL:g}", code="invalid_config")

    def limit(self, kind: str) -> int:
        return min(int(self.limits.get(kind, filetypes.LIMITS[kind])), filetypes.LIMITS[kind])

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)
