"""A.1 node information: parsing and checking what an applicant sends (SPEC §4), its CSR included."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.serialization import Encoding
from flask_babel import lazy_gettext as _l

from app.admission.models import CAPABILITIES
from app.errors import Refusals, ValidationFailed
from app.i18n import lazy_list
from app.readable import misleading, shows_nothing

if TYPE_CHECKING:
    from cryptography import x509

LIMITS = {"org_name": 100, "system_name": 100, "vendor": 100, "endpoint": 255, "contact.name": 50,
          "contact.phone": 32, "contact.email": 254}
HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
BRACKETED_HOST = re.compile(r"\[[^\[\]]*\](?::[0-9]*)?")  # the whole netloc: "[address]", perhaps ":port"
PHONE = re.compile(r"^[0-9+()\- ]{5,32}$")
PORT_RANGE = _l("The endpoint's port must be between 1 and 65535.")
EMAIL = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,189}\.[A-Za-z]{2,24}$")


@dataclass(frozen=True)
class NodeInformation:
    division_code: str
    org_name: str
    system_name: str
    vendor: str
    endpoint: str
    contact_name: str
    contact_phone: str
    contact_email: str
    capabilities: tuple[str, ...]


# The A.1 fields a console form and a command hold flat, as `NodeInformation` names them.
FLAT_FIELDS = ("org_name", "system_name", "vendor", "endpoint", "contact_name", "contact_phone", "contact_email")


def document_from_fields(division_code: str, fields: Mapping[str, object], capabilities: list[str]) -> dict:
    """The A.1 document the API takes, built from `FLAT_FIELDS` as a form or a command holds them, so that the
    console and the CLI hand `parse` the shape a node sends and one parser checks every door."""
    return {"division_code": division_code,
            **{name: fields[name] for name in ("org_name", "system_name", "vendor", "endpoint")},
            "contact": {"name": fields["contact_name"], "phone": fields["contact_phone"],
                        "email": fields["contact_email"]},
            "capabilities": capabilities}


def invalid(message, field: str, code: str = "invalid_input") -> ValidationFailed:
    return ValidationFailed(message, code=code, field=field)


def text_field(value, field: str, required: bool = True, names: Mapping[str, str] | None = None) -> str:
    """`value` checked as the A.1 text `field`; a refusal names it as `names` has it (a console form's labels)."""
    name = (names or {}).get(field, field)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise invalid(_l("%(field)s must be text.", field=name), field)
    value = value.strip()
    if shows_nothing(value):  # "\u200b", "\ufeff\u3000": a name that shows as nothing is none
        value = ""
    if required and not value:
        raise invalid(_l("%(field)s is required.", field=name), field, "missing_field")
    if len(value) > LIMITS[field]:
        raise invalid(_l("%(field)s is longer than %(n)s characters.", field=name, n=LIMITS[field]), field,
                      "too_long")
    if misleading(value):
        raise invalid(_l("%(field)s contains control characters.", field=name), field)
    return value


def endpoint_host(endpoint: str) -> str:
    return urlsplit(endpoint).hostname or ""


def normalise_endpoint(value) -> str:
    """An https URL with a host, no user info, query or fragment; lower-case host, no default port."""
    raw = text_field(value, "endpoint")
    # A URL holds no whitespace (RFC 3986), and every route client refuses a table with such an endpoint
    # (app.routing.document): one node admitted with "/a b" or a no-break space in its path would stop the
    # whole network taking new tables. urlsplit takes them, so they are refused here, by name.
    if any(char.isspace() for char in raw):
        raise invalid(_l("The endpoint must not contain spaces."), "endpoint", "invalid_endpoint")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as error:
        if "out of range" in str(error):
            raise invalid(PORT_RANGE, "endpoint", "invalid_endpoint") from None
        raise invalid(_l("The endpoint is not a valid URL."), "endpoint", "invalid_endpoint") from error
    if port == 0:  # urlsplit accepts 0, but nothing can listen there
        raise invalid(PORT_RANGE, "endpoint", "invalid_endpoint")
    if parts.scheme.lower() != "https":
        raise invalid(_l("The endpoint must be an https:// URL."), "endpoint", "endpoint_not_https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise invalid(_l("The endpoint must not contain user information."), "endpoint", "invalid_endpoint")
    if parts.fragment or "#" in raw:
        raise invalid(_l("The endpoint must not have a fragment."), "endpoint", "invalid_endpoint")
    if parts.query:
        raise invalid(_l("The endpoint must not have a query string."), "endpoint", "invalid_endpoint")
    host = (parts.hostname or "").lower()
    if not host:
        raise invalid(_l("The endpoint has no host."), "endpoint", "invalid_endpoint")
    # urlsplit takes an RFC 3986 IPvFuture literal ("[v1.x]") and its hostname drops the brackets: "v1.x" then
    # passed as a DNS name, and the node was stored and certified under a name it never gave.
    bracketed = "[" in parts.netloc or "]" in parts.netloc  # user information was refused above
    # urlsplit finds the brackets' address wherever they stand, and drops what is around them: the node of
    # "https://[2001:db8::1]im.example.com/" or "https://im[2001:db8::1]/" was stored as https://[2001:db8::1].
    if bracketed and not BRACKETED_HOST.fullmatch(parts.netloc):
        raise invalid(_l("An IPv6 address in brackets is the whole host of an endpoint: only a port may follow it, "
                         "as in https://[2001:db8::1]:8443/."), "endpoint", "invalid_endpoint")
    try:
        ip = ipaddress.ip_address(host)
        shown_host = f"[{ip}]" if ip.version == 6 else str(ip)
        if bracketed and ip.version != 6:
            raise ValueError(host)
    except ValueError:
        if bracketed:
            raise invalid(_l("Only an IPv6 address goes in brackets in an endpoint's host."), "endpoint",
                          "invalid_endpoint") from None
        labels = host.rstrip(".").split(".")
        # An all-numeric last label is no DNS name (RFC 3696 §2): "1.2.3" reads as an IPv4 address to
        # resolvers and browsers (1.2.0.3), which the node's certificate would then not name.
        if not all(HOST_LABEL.match(label) for label in labels) or labels[-1].isdigit():
            raise invalid(_l("The endpoint's host is not a valid DNS name."), "endpoint", "invalid_endpoint") \
                from None
        # "0x0a0b0a07" and "10.11.10.0x7" pass as DNS names, and resolvers read them as 10.11.10.7 without asking
        # DNS (inet_aton's forms): one machine then held several node identities, as "[::ffff:…]" did.
        if (alias := ipv4_alias(host.rstrip("."))) is not None:
            raise invalid(_l("The endpoint's host is the IPv4 address %(address)s in another form: write it as "
                             "%(address)s.", address=alias), "endpoint", "invalid_endpoint") from None
        shown_host = host.rstrip(".")
    else:
        if ip.version == 6 and ip.scope_id:  # "%eth0" names an interface of one machine, not an address
            raise invalid(_l("The endpoint's IPv6 address must not name a network interface (a zone)."), "endpoint",
                          "invalid_endpoint")
        # "[::ffff:10.9.133.4]" reaches the IPv4 host under another spelling: it passed the check that one endpoint
        # is one node's (`endpoint_pending`, `endpoint_in_use` compare the text).
        if ip.version == 6 and ip.ipv4_mapped is not None:
            raise invalid(_l("An IPv4 address is written as itself in an endpoint, not inside IPv6: %(address)s.",
                             address=str(ip.ipv4_mapped)), "endpoint", "invalid_endpoint")
    netloc = shown_host if port in (None, 443) else f"{shown_host}:{port}"
    return f"https://{netloc}{_normal_path(parts.path)}"


def ipv4_alias(host: str) -> str | None:
    """The IPv4 address a host name that is no dotted quad stands for to a resolver (inet_aton: hexadecimal,
    octal, fewer than four parts), else None."""
    try:
        return str(ipaddress.IPv4Address(socket.inet_aton(host)))
    except (OSError, ValueError):
        return None


PERCENT_ENCODED = re.compile(r"%([0-9A-Fa-f]{2})")
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
PATH_CHARACTERS = UNRESERVED | frozenset("!$&'()*+,;=:@/%")  # RFC 3986 pchar, "/" and the escapes' "%"


def _normal_path(path: str) -> str:
    """The path as RFC 3986 §6.2.2 compares it, so that one endpoint has one spelling (one endpoint, one node):
    percent-encodings in upper case, those of unreserved characters decoded ("%7e" is "~"); no trailing "/".
    A "." or ".." segment is refused rather than resolved: "https://a/." is the server at "https://a", and no
    endpoint needs one. A path outside ASCII is no URI, and a node's HTTP client cannot send it."""
    if not path.isascii():
        raise invalid(_l("The endpoint's path must be in ASCII: percent-encode other characters."), "endpoint",
                      "invalid_endpoint")
    if path.count("%") != len(PERCENT_ENCODED.findall(path)):
        raise invalid(_l("The endpoint is not a valid URL."), "endpoint", "invalid_endpoint")
    # '"', '\\', '|' and the like are no URI characters: a server reads "/a\"b" as "/a%22b", which http.client
    # sends raw, so one endpoint had two spellings.
    if (raw := next((char for char in path if char not in PATH_CHARACTERS), None)) is not None:
        raise invalid(_l("The endpoint's path holds %(char)s, which a URL must percent-encode (%(encoded)s).",
                         char=raw, encoded=f"%{ord(raw):02X}"), "endpoint", "invalid_endpoint")
    path = PERCENT_ENCODED.sub(lambda m: chr(int(m[1], 16)) if chr(int(m[1], 16)) in UNRESERVED else m[0].upper(),
                               path)
    if any(segment in (".", "..") for segment in path.split("/")):
        raise invalid(_l("The endpoint's path must not hold . or .. segments."), "endpoint", "invalid_endpoint")
    return path.rstrip("/")


def capabilities(value) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise invalid(_l("capabilities must be a non-empty list."), "capabilities")
    unknown = [item for item in value if item not in CAPABILITIES]
    if unknown:
        raise invalid(_l("Unknown capability: %(names)s.", names=lazy_list(unknown, limit=100)),
                      "capabilities", "unknown_capability")
    return tuple(item for item in CAPABILITIES if item in value)


def parse(document, names: Mapping[str, str] | None = None) -> NodeInformation:
    """From the API's JSON or a console form (same keys); refuses every defective field at once (`Refusals`: the
    API names the first), naming a field by its key or, given `names` (key → a console form's label), by its
    label. A body, contact or division code of the wrong shape is refused alone, first."""
    if not isinstance(document, dict):
        raise invalid(_l("The body must be a JSON object."), "body", "invalid_body")
    contact = document.get("contact")
    if not isinstance(contact, dict):
        raise invalid(_l("contact must be an object with name, phone and email."), "contact", "missing_field")
    division_code = document.get("division_code")
    if division_code is None:
        raise invalid(_l("division_code is required."), "division_code", "missing_field")
    if not isinstance(division_code, str):  # 360000 as a number: a code is text (it may begin with 0)
        raise invalid(_l("%(field)s must be text.", field="division_code"), "division_code")
    named = (names or {}).get
    refusals, checked = Refusals(), {}

    def check(key: str, value) -> None:
        with refusals.check():
            checked[key] = value()

    def phone() -> str:
        value = text_field(contact.get("phone"), "contact.phone", names=names)
        if not PHONE.match(value):
            raise invalid(_l("%(field)s is not a phone number.", field=named("contact.phone", "contact.phone")),
                          "contact.phone")
        return value

    def email() -> str:
        value = text_field(contact.get("email"), "contact.email", names=names)
        if not EMAIL.match(value):
            raise invalid(_l("%(field)s is not an e-mail address.", field=named("contact.email", "contact.email")),
                          "contact.email")
        return value

    # Every field is checked, in the order the first refusal (the API's one error object) has always followed.
    check("contact_phone", phone)
    check("contact_email", email)
    for key in ("org_name", "system_name", "vendor"):
        check(key, lambda key=key: text_field(document.get(key), key, names=names))
    check("endpoint", lambda: normalise_endpoint(document.get("endpoint")))
    check("contact_name", lambda: text_field(contact.get("name"), "contact.name", names=names))
    check("capabilities", lambda: capabilities(document.get("capabilities")))
    refusals.raise_any()
    return NodeInformation(division_code=division_code.strip(), **checked)


def csr_text(value) -> str | None:
    """A document's `csr` as sent: text, or None without one; anything else (5, a list) is `invalid_csr`. Every
    door that takes a CSR in JSON (an application, a renewal) asks this, then `checked_csr`, so they refuse alike."""
    if value is not None and not isinstance(value, str):
        raise invalid(_l("csr must be a PEM string."), "csr", "invalid_csr")
    return value


def checked_csr(pem: str | None) -> x509.CertificateSigningRequest:
    """The CSR parsed, and passed by the CA's key policy (`app.pki.csr_policy`); `missing_csr` without one."""
    from app.pki import csr_policy

    if not pem or not pem.strip():
        raise ValidationFailed(_l("A PKCS#10 CSR (PEM) is required."), code="missing_csr", field="csr")
    csr = csr_policy.load_csr(pem)
    csr_policy.check_csr(csr)
    return csr


@dataclass(frozen=True)
class Submission:
    """An application or change request whose every part passed `check_submission`."""

    info: NodeInformation
    csr_pem: str | None  # the CSR's PEM block as the CA writes it (`checked_csr`), not the text as sent
    key_sha256: str | None  # of the CSR's public key; None without a CSR (a change request keeping its key)


def check_submission(document: dict, *, new: bool = True, names: Mapping[str, str] | None = None,
                     read_csr: Callable[[], object] | None = None,
                     admits: Callable[[str], None] | None = None) -> Submission:
    """Every door's checks of what an applicant sends, together, so that one console submit shows every field's
    refusal at once (`Refusals`) while the API answers the first, in its order: A.1 (`parse`), the CSR's type,
    the division code (`new`: an application; a change request keeps its node's), then `admits` (a door's own
    scope, asked only once those passed), then the CSR's policy. The CSR is parsed and checked here alone, once
    a submit. `read_csr` reads it when the document does not carry it (a console form's paste or upload)."""
    # Imported here: the application node imports this module for `normalise_endpoint`, and needs neither.
    from app.divisions import service as divisions
    from app.pki import service as pki

    refusals = Refusals()
    with refusals.check():
        info = parse(document, names)
    csr_pem, key_sha256, csr_read = None, None, False
    with refusals.check():
        csr_pem = csr_text(read_csr() if read_csr else document.get("csr"))
        csr_read = True
    division_code = document.get("division_code")
    if new and isinstance(division_code, str):
        with refusals.check():
            divisions.require_current(division_code.strip())
    if admits:
        refusals.raise_any()  # before the door's scope, as the API always answered
        admits(info.division_code)
    if csr_read and (csr_pem or new):  # a change request may keep its node's key
        with refusals.check():
            csr = checked_csr(csr_pem)
            key_sha256 = pki.key_fingerprint(csr.public_key())
            csr_pem = csr.public_bytes(Encoding.PEM).decode("ascii")  # stored as the CA writes it, not as sent
    refusals.raise_any()
    return Submission(info, csr_pem, key_sha256)
