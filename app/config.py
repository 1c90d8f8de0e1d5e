"""Configuration from the environment. Every variable is listed in the README."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import secrets
import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("mpim.health")  # what the start says of the health webhook, beside its other lines


def env_flag(name: str, default: bool) -> bool:
    """A switch; any other word stops the start naming it: "ture" read as off, and MPIM_COOKIE_SECURE=ture sent
    session cookies over plain HTTP with nothing said."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    word = value.strip().lower()
    if word in {"1", "true", "yes", "on"}:
        return True
    if word in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be 1, true, yes or on, or 0, false, no or off, not {value!r}")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    """The variable as a whole number; one that is not, or is below `minimum`, stops the start naming it."""
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be {minimum} or more, not {value!r}")
    return number


def env_secret(name: str) -> str:
    """The variable, else the text of the file `<name>_FILE` names (stripped), else "" (none set). A file that
    cannot be read, or is empty, stops the start naming the file; no message quotes what it holds."""
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return ""
    try:
        value = Path(path).read_text().strip()
    except OSError as error:
        raise ValueError(f"{name}_FILE {path} could not be read: {error.strerror}") from None
    except ValueError:  # UnicodeDecodeError, whose message quotes a byte of the file
        raise ValueError(f"{name}_FILE {path} is not text") from None
    if not value:
        raise ValueError(f"{name}_FILE {path} is empty")
    return value


def env_seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds; anything else stops the start naming the variable (float() reads
    "nan", "inf" and "1e400", and an interval of 0 made the scheduler refuse the job only once it started)."""
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {value!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return seconds


def env_choice(name: str, default: str, choices: tuple[str, ...], said: str) -> str:
    """One of `choices` (`said` names them for the operator), or the start stops naming the variable."""
    value = os.environ.get(name) or default
    if value not in choices:
        raise ValueError(f"{name} must be {said}, not {value!r}")
    return value


def url_origin(value: str) -> str:
    """scheme://host[:port] of an address, for a message or a log line: never its user information, path or query,
    where a webhook's token is often carried. "?" for what cannot be told."""
    try:
        parts = urlsplit(value)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port out of range, a malformed IPv6 host
        parts, host, port = urlsplit(""), None, None
    host = f"[{host}]" if host and ":" in host else host
    return f"{parts.scheme or '?'}://{host or '?'}" + (f":{port}" if port is not None else "")


def has_user_information(value: str) -> bool:
    """An address with a user name or password (`https://user:token@host/`)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return "@" in parts.netloc


def is_http_url(value: str) -> bool:
    """An http:// or https:// address with a host, a port in range, no user information and no space or control
    character: what the health webhook sends to as written (`env_http_url` refuses anything else at the start;
    `send_webhook` tries none). User information is refused: it is a credential written into the address, which
    a failure's message may quote (urllib read `user:token@host` as a host with a port named "token@host", and
    logged that on every attempt); a token belongs in the path or the query, which no log line shows."""
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
        if parts.hostname:
            parts.hostname.encode("idna")  # as it is sent: an empty label or one past 63 characters fails
            if parts.hostname.replace(".", "").isdigit():
                # All digits and dots is an IPv4 address to aiohttp, which refuses every form but the dotted
                # quad (127.1, 2130706433, 0177.0.0.1): each alert failed on it, after a start that took it.
                ipaddress.IPv4Address(parts.hostname)
        # The rest is sent as written, in ASCII: a path or query in other characters never goes.
        rest_ascii = all(part.isascii() for part in (parts.path, parts.query, parts.fragment))
    except ValueError:  # a port out of range, a malformed IPv6 host, a host name IDNA cannot encode
        return False
    return (port_ok and rest_ascii and parts.scheme in ("http", "https") and bool(parts.hostname)
            and not has_user_information(value)
            and not any(character.isspace() or not character.isprintable() for character in value))


def env_http_url(name: str) -> str:
    """An http:// or https:// address with a host, or "" (none); anything else stops the start naming the
    variable. The health webhook is sent after the round commits: a URL it cannot open surfaced only then, at the
    first alert, as a round recorded failed (no scheme) or as every alert lost (another scheme, no host).
    The refusal names the address's scheme and host only: its user information, path or query may be a token."""
    value = os.environ.get(name, "").strip()
    if value and has_user_information(value):
        raise ValueError(f"{name} must carry no user name or password (user:password@ before the host), as "
                         f"{url_origin(value)} does: give the receiver's token in the path or the query instead")
    if value and not is_http_url(value):
        raise ValueError(f"{name} must be an http:// or https:// address with a host, in ASCII but for the host "
                         f"name (percent-encode the rest), not {url_origin(value)} (path and query not shown)")
    return value


def is_link_local(value: str) -> bool:
    """An address whose host is written as a link-local IP address (169.254.0.0/16, fe80::/10; an IPv4-mapped one
    too, and one in a form the resolver reads as IPv4, such as 0xa9fea9fe). A host name is not looked up: the start
    must not wait on DNS."""
    host = urlsplit(value).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # what getaddrinfo reads as an IPv4 address without asking DNS (inet_aton's forms)
            address = ipaddress.IPv4Address(socket.inet_aton(host)) if ":" not in host else None
        except OSError:
            return False
        if address is None:
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_link_local


def warn_of_a_link_local_webhook(config: dict) -> None:
    """A link-local webhook address is accepted (the operator chooses where alerts go) but said at the start: on a
    cloud host 169.254.169.254 is the metadata service, which no alert is meant for. Loopback is not: tests and a
    receiver on the same host use it."""
    url = config.get("MPIM_HEALTH_WEBHOOK_URL") or ""
    if url and is_link_local(url):
        log.warning("MPIM_HEALTH_WEBHOOK_URL points at a link-local address (%s), such as a cloud host's metadata "
                    "service: every health alert is sent there", url_origin(url))


def env_ca_file(name: str) -> str:
    """The path of a PEM file of CA certificates, or "" (none set). A file that cannot be read, or holds no PEM
    certificate OpenSSL can load, stops the start naming the variable and the file: found only at the first alert,
    it would have cost every alert."""
    path = os.environ.get(name, "").strip()
    if not path:
        return ""
    try:
        context = ssl.create_default_context(cafile=path)  # only this file's CAs, as the webhook trusts them
    except ssl.SSLError:  # an OSError too: before the file's other errors
        raise ValueError(f"{name} {path} holds no PEM certificate, or one that is malformed") from None
    except OSError as error:
        raise ValueError(f"{name} {path} could not be read: {error.strerror}") from None
    if not context.cert_store_stats()["x509"]:  # a file of CRLs only loads without error
        raise ValueError(f"{name} {path} holds no PEM certificate")
    return path


def instance_path() -> Path:
    return Path(os.environ.get("MPIM_INSTANCE_PATH") or PROJECT_ROOT / "instance")


def base_url_from_bind(bind: str) -> str:
    """Without MPIM_BASE_URL, the embedded default's address follows gunicorn's MPIM_BIND, so the CRL
    and OCSP addresses written into certificates reach this console (a wildcard host means loopback)."""
    host, _, port = bind.rpartition(":")
    if not bind or bind.startswith(("unix:", "fd://")) or not port.isdigit():
        return "http://127.0.0.1:5000"
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def database_url(instance: Path) -> str:
    """DATABASE_URL, with plain postgresql:// URLs routed to the psycopg 3 driver."""
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{instance / 'mpim.db'}"
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """A secret kept in instance/ so restarts keep sessions and the CA passphrase stable."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def refuse_a_health_timeout_outlasting_its_interval(config: dict) -> None:
    """A round waits for its slowest poll: with the timeout at or past the interval, any node timing out makes
    the round outlast its interval, and the scheduler skips the next one, every round a node is down."""
    timeout, interval = config["MPIM_HEALTH_TIMEOUT"], config["MPIM_HEALTH_INTERVAL"]
    if timeout >= interval:
        raise ValueError(f"MPIM_HEALTH_TIMEOUT ({timeout:g} s) must be shorter than MPIM_HEALTH_INTERVAL "
                         f"({interval:g} s): a round with a node timing out would outlast its interval, and the "
                         "next round would be skipped")


def load_config(overrides: dict | None = None) -> dict:
    """Build the Flask config mapping; `overrides` (tests) win over the environment."""
    instance = instance_path()
    overrides = overrides or {}
    if "MPIM_INSTANCE_PATH" in overrides:
        instance = Path(overrides["MPIM_INSTANCE_PATH"])
    # 0700: it holds the session secret, the CA and, on SQLite, the database (created 0644 by umask).
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = {
        "MPIM_INSTANCE_PATH": str(instance),
        "SECRET_KEY": os.environ.get("SECRET_KEY") or read_or_create_secret(instance / "secret_key"),
        "SQLALCHEMY_DATABASE_URI": database_url(instance),
        "SESSION_COOKIE_SECURE": env_flag("MPIM_COOKIE_SECURE", True),
        "REMEMBER_COOKIE_SECURE": env_flag("MPIM_COOKIE_SECURE", True),
        "SESSION_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "PERMANENT_SESSION_LIFETIME": env_int("MPIM_SESSION_MINUTES", 480, minimum=1) * 60,
        "MPIM_IDLE_SECONDS": env_int("MPIM_IDLE_MINUTES", 30, minimum=0) * 60,
        "MPIM_PASSWORD_MAX_DAYS": env_int("MPIM_PASSWORD_MAX_DAYS", 90, minimum=0),
        "WTF_CSRF_TIME_LIMIT": None,
        "MAX_CONTENT_LENGTH": env_int("MPIM_MAX_REQUEST_BYTES", 1024 * 1024, minimum=65536),
        "BABEL_DEFAULT_LOCALE": env_choice("MPIM_DEFAULT_LOCALE", "zh_CN", ("zh_CN", "en"), "zh_CN or en"),
        "BABEL_DEFAULT_TIMEZONE": "Asia/Shanghai",
        "BABEL_TRANSLATION_DIRECTORIES": str(PROJECT_ROOT / "app" / "translations"),
        "MPIM_LANGUAGES": ["zh_CN", "en"],
        "MPIM_DISPLAY_TIMEZONE": "Asia/Shanghai",
        "MPIM_LOGIN_MAX_FAILURES": env_int("MPIM_LOGIN_MAX_FAILURES", 5, minimum=1),
        "MPIM_LOGIN_MAX_ADDRESS_FAILURES": env_int("MPIM_LOGIN_MAX_ADDRESS_FAILURES", 20, minimum=1),
        "MPIM_LOGIN_LOCK_MINUTES": env_int("MPIM_LOGIN_LOCK_MINUTES", 15, minimum=1),
        "MPIM_TRUSTED_PROXIES": env_int("MPIM_TRUSTED_PROXIES", 0, minimum=0),
        "MPIM_PAGE_SIZE": env_int("MPIM_PAGE_SIZE", 50, minimum=1),
        # The console's CSV export streams from one request, which a sync gunicorn worker must finish within its
        # timeout; past this many records the console points to `flask audit export` instead.
        "MPIM_AUDIT_EXPORT_MAX_ROWS": env_int("MPIM_AUDIT_EXPORT_MAX_ROWS", 50_000, minimum=1),
        "MPIM_BASE_URL": os.environ.get("MPIM_BASE_URL") or base_url_from_bind(os.environ.get("MPIM_BIND", "")),
        # SPEC §2: the node id's network flag is one digit; "12" made the management node's id 21 digits long.
        "MPIM_NETWORK_FLAG": env_choice("MPIM_NETWORK_FLAG", "5", tuple("0123456789"), "one digit"),
        "MPIM_EXPOSE_WORKER_PID": env_flag("MPIM_EXPOSE_WORKER_PID", False),
        "MPIM_NODE_SESSION_SECONDS": env_int("MPIM_NODE_SESSION_SECONDS", 3600, minimum=60),
        "MPIM_NODE_SESSIONS_MAX": env_int("MPIM_NODE_SESSIONS_MAX", 100, minimum=1),
        "REDIS_URL": os.environ.get("REDIS_URL", ""),
        "MPIM_CA_DIR": os.environ.get("MPIM_CA_DIR") or str(instance / "ca"),
        "MPIM_CA_PASSPHRASE": os.environ.get("MPIM_CA_PASSPHRASE", ""),
        "MPIM_CA_PASSPHRASE_FILE": os.environ.get("MPIM_CA_PASSPHRASE_FILE") or str(instance / "ca_passphrase"),
        # Declared but left empty (`MPIM_CA_ROOT_NAME=` in a compose file) means the default, as for MPIM_CA_DIR:
        # an empty name is no certificate name.
        "MPIM_CA_KEY_TYPE": os.environ.get("MPIM_CA_KEY_TYPE") or "ec",
        "MPIM_CA_ORGANISATION": os.environ.get("MPIM_CA_ORGANISATION") or "Ministry of Public Security",
        "MPIM_CA_ROOT_NAME": os.environ.get("MPIM_CA_ROOT_NAME") or "MPIM Root CA",
        "MPIM_CA_INTERMEDIATE_NAME": os.environ.get("MPIM_CA_INTERMEDIATE_NAME") or "MPIM Issuing CA 1",
        "MPIM_CERT_DAYS": env_int("MPIM_CERT_DAYS", 90, minimum=1),
        "MPIM_CRL_DAYS": env_int("MPIM_CRL_DAYS", 7, minimum=1),
        "MPIM_ROOT_CRL_DAYS": env_int("MPIM_ROOT_CRL_DAYS", 365, minimum=1),
        "MPIM_ROUTE_TTL_HOURS": env_int("MPIM_ROUTE_TTL_HOURS", 24, minimum=1),
        "MPIM_HEALTH_INTERVAL": env_seconds("MPIM_HEALTH_INTERVAL", 30),
        "MPIM_HEALTH_TIMEOUT": env_seconds("MPIM_HEALTH_TIMEOUT", 5),
        "MPIM_HEALTH_CONCURRENCY": env_int("MPIM_HEALTH_CONCURRENCY", 500, minimum=1),
        "MPIM_HEALTH_FAILURES_BEFORE_DOWN": env_int("MPIM_HEALTH_FAILURES_BEFORE_DOWN", 3, minimum=1),
        "MPIM_HEALTH_SUCCESSES_BEFORE_UP": env_int("MPIM_HEALTH_SUCCESSES_BEFORE_UP", 2, minimum=1),
        "MPIM_HEALTH_FLAP_CHANGES": env_int("MPIM_HEALTH_FLAP_CHANGES", 4, minimum=0),
        "MPIM_HEALTH_EVENT_DAYS": env_int("MPIM_HEALTH_EVENT_DAYS", 365, minimum=1),
        "MPIM_HEALTH_WEBHOOK_URL": env_http_url("MPIM_HEALTH_WEBHOOK_URL"),
        "MPIM_HEALTH_WEBHOOK_SECONDS": env_seconds("MPIM_HEALTH_WEBHOOK_SECONDS", 15),
        "MPIM_HEALTH_WEBHOOK_SECRET": env_secret("MPIM_HEALTH_WEBHOOK_SECRET"),
        "MPIM_HEALTH_WEBHOOK_CA": env_ca_file("MPIM_HEALTH_WEBHOOK_CA"),
        "MPIM_HEARTBEAT_SECONDS": env_seconds("MPIM_HEARTBEAT_SECONDS", 15),
        "MPIM_JOB_RUNS_KEEP_DAYS": env_int("MPIM_JOB_RUNS_KEEP_DAYS", 30, minimum=1),
    }
    config.update(overrides)
    refuse_a_health_timeout_outlasting_its_interval(config)
    warn_of_a_link_local_webhook(config)
    # A ping before each checkout finds connections a database server dropped; a SQLite file has no
    # server, and the ping cost a tenth of a certificate issuance there.
    config.setdefault("SQLALCHEMY_ENGINE_OPTIONS",
                      {} if config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite") else {"pool_pre_ping": True})
    return config
