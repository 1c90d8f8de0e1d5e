"""Real keys, CSRs and A.1 documents for tests (nothing here is a mock)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

_counter = itertools.count(1)


def self_signed_certificate(key, common_name: str, extension: x509.ExtensionType, *,
                            critical: bool) -> x509.Certificate:
    """A certificate of `key` signed by itself, valid from a minute ago for a day, with one extension: a stand-in
    CA file or a TLS server outside the network."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1)).add_extension(extension, critical=critical)
            .sign(key, hashes.SHA256()))


def make_key(kind: str = "ec256"):
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    raise ValueError(kind)


def make_csr(key=None, common_name: str = "node.example", *, extensions=()) -> str:
    key = key or make_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def csr_with_unreadable_subject(how: str = "integer", key=None) -> str:
    """A correctly self-signed CSR whose subject CN is an INTEGER (no X.520 string type) or a UTF8String that is
    not UTF-8: cryptography loads it and verifies its signature, and raises only when the subject is read.
    Made by patching the DER of a good CSR and signing the patched request again."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    der = x509.load_pem_x509_csr(make_csr(key, "ZZZZ").encode()).public_bytes(serialization.Encoding.DER)

    def header(at: int) -> tuple[int, int]:  # (where the contents start, their length) of the TLV at `at`
        first = der[at + 1]
        if first < 0x80:
            return at + 2, first
        count = first & 0x7F
        return at + 2 + count, int.from_bytes(der[at + 2:at + 2 + count], "big")

    outer_start, _ = header(0)
    info_start, info_length = header(outer_start)
    info = bytearray(der[outer_start:info_start + info_length])
    at = info.find(b"\x0c\x04ZZZZ")
    if how == "integer":
        info[at], info[at + 2:at + 6] = 0x02, b"\x01\x02\x03\x04"
    else:
        info[at + 2:at + 6] = b"\xff\xfe\xfd\xfc"
    signature = key.sign(bytes(info), ec.ECDSA(hashes.SHA256()))

    def tlv(tag: int, body: bytes) -> bytes:
        length = len(body)
        encoded = bytes([length]) if length < 0x80 else \
            bytes([0x80 | ((length.bit_length() + 7) // 8)]) + length.to_bytes((length.bit_length() + 7) // 8, "big")
        return bytes([tag]) + encoded + body

    ecdsa_with_sha256 = tlv(0x30, tlv(0x06, bytes.fromhex("2a8648ce3d040302")))
    request = tlv(0x30, bytes(info) + ecdsa_with_sha256 + tlv(0x03, b"\x00" + signature))
    return x509.load_der_x509_csr(request).public_bytes(serialization.Encoding.PEM).decode()


UNREADABLE_EXTENSIONS = {
    # the same extension twice (X.509 allows each once): a subjectAltName, then one written as raw DER
    "duplicate": "subjectAltName = DNS:a.example\n2.5.29.17 = DER:300b8209622e6578616d706c65\n",
    # a subjectAltName holding one empty x400Address ([3] in GeneralName), a name type cryptography cannot read
    "x400": "2.5.29.17 = DER:3002a300\n",
}


def csr_with_unreadable_extensions(how: str = "duplicate", key=None) -> str:
    """A correctly self-signed CSR, made by the system `openssl req`, that cryptography loads and verifies and
    whose extensions raise (not ValueError) only when read: see `UNREADABLE_EXTENSIONS`."""
    import subprocess
    import tempfile
    from pathlib import Path

    key = key or ec.generate_private_key(ec.SECP256R1())
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        (folder / "node.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
        (folder / "req.cnf").write_text("[req]\ndistinguished_name = dn\nreq_extensions = ext\nprompt = no\n"
                                        "[dn]\nCN = node\n[ext]\n" + UNREADABLE_EXTENSIONS[how])
        result = subprocess.run(["openssl", "req", "-new", "-sha256", "-key", "node.key", "-config", "req.cnf"],
                                cwd=folder, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def csr_of_version(version: int = 1, key=None, *, form: str = "pem") -> str | bytes:
    """A CSR whose CertificationRequestInfo version is `version` (PKCS#10 knows 0, v1, only), self-signed
    correctly over that info (`openssl req -verify` says OK): cryptography refuses it on load with
    InvalidVersion, which is no ValueError."""
    import base64

    def tlv(tag: int, body: bytes) -> bytes:
        size = len(body)
        length = bytes([size]) if size < 0x80 else bytes([0x81, size]) if size < 0x100 else \
            bytes([0x82]) + size.to_bytes(2, "big")
        return bytes([tag]) + length + body

    def body_at(der: bytes, at: int) -> tuple[int, int]:
        """(start, end) of the body of the TLV at `at`."""
        first = der[at + 1]
        if first < 0x80:
            return at + 2, at + 2 + first
        count = first & 0x7F
        return at + 2 + count, at + 2 + count + int.from_bytes(der[at + 2:at + 2 + count], "big")

    key = key or ec.generate_private_key(ec.SECP256R1())
    der = x509.load_pem_x509_csr(make_csr(key).encode()).public_bytes(serialization.Encoding.DER)
    outer_body, _ = body_at(der, 0)
    info_start, info_end = body_at(der, outer_body)  # the outer SEQUENCE's first element
    info = der[info_start:info_end]
    assert info.startswith(b"\x02\x01\x00")  # INTEGER 0, the version
    info = tlv(0x30, b"\x02\x01" + bytes([version]) + info[3:])
    algorithm = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    request = tlv(0x30, info + algorithm + tlv(0x03, b"\x00" + key.sign(info, ec.ECDSA(hashes.SHA256()))))
    if form == "der":
        return request
    return ("-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(request).decode("ascii")
            + "-----END CERTIFICATE REQUEST-----\n")


def node_document(division_code: str = "360000", *, endpoint: str | None = None, csr: str | None = None,
                  **overrides) -> dict:
    n = next(_counter)
    document = {
        "division_code": division_code,
        "org_name": "江西省公安厅",
        "system_name": "赣警通",
        "vendor": "Vendor A",
        "endpoint": endpoint or f"https://im{n}.jx.example:8443",
        "contact": {"name": "张三", "phone": "0791-12345678", "email": "ops@jx.example"},
        "capabilities": ["text", "image", "voice", "file", "download", "single_chat", "group", "read_count",
                         "sticker", "presence"],
        "csr": csr if csr is not None else make_csr(),
    }
    document.update(overrides)
    return document


def application_form(division: str = "360000", endpoint: str = "https://im.jx.example", **overrides) -> dict:
    """The console's application form fields (`/applications/new`), without a CSR."""
    return {"division_code": division, "org_name": "江西省公安厅", "system_name": "赣警通", "vendor": "Vendor A",
            "endpoint": endpoint, "contact_name": "张三", "contact_phone": "0791-1234567",
            "contact_email": "ops@jx.example", "capabilities": ["text", "group"], **overrides}


class NodeKeys:
    """A node's real key pair and CSR, kept so tests can sign A.2 session requests with it."""

    def __init__(self, kind: str = "ec256"):
        self.key = make_key(kind)
        self.csr = make_csr(self.key)

    def session_request(self, node_id: str, *, timestamp: str | None = None, nonce: str | None = None) -> dict:
        import base64
        import secrets
        from datetime import UTC, datetime

        from cryptography.hazmat.primitives.asymmetric import padding

        timestamp = timestamp or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        nonce = nonce or secrets.token_urlsafe(16)
        message = f"{node_id}\n{timestamp}\n{nonce}".encode()
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            signature = self.key.sign(message, ec.ECDSA(hashes.SHA256()))
        else:
            signature = self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return {"node_id": node_id, "timestamp": timestamp, "nonce": nonce,
                "signature": base64.b64encode(signature).decode()}


def not_strict_bodies(document: dict, *, duplicate: str, nested: str) -> dict[str, tuple[bytes, str]]:
    """`document` written in each way a strict JSON reader refuses (app.strict_json), each with a fragment of the
    reason it must give: its top-level member `duplicate` named twice (the first copy holding "A"), a member
    of its inner object `nested` named twice, a UTF-8 byte-order mark, UTF-16 (with and without its BOM),
    UTF-32, and a number past a double's range in `nested` (Python reads 1e999 as inf, which json.dumps then
    writes as Infinity, no JSON). Every one of these parsed with Python's json as it stands."""
    import codecs
    import json

    text = json.dumps(document, ensure_ascii=False)
    inner = next(iter(document[nested]))
    return {
        "duplicate_top_level_key": (f'{{"{duplicate}": "A", {text[1:]}'.encode(),
                                    f"key '{duplicate}' appears twice"),
        "duplicate_nested_key": (text.replace(f'"{nested}": {{', f'"{nested}": {{"{inner}": "A", ', 1).encode(),
                                 f"key '{inner}' appears twice"),
        "utf8_bom": (codecs.BOM_UTF8 + text.encode(), "UTF-8 without a byte-order mark"),
        "utf16_bom": (text.encode("utf-16"), "UTF-8 without a byte-order mark"),
        "utf16_le": (text.encode("utf-16-le"), "UTF-8 without a byte-order mark"),
        "utf32": (text.encode("utf-32"), "UTF-8 without a byte-order mark"),
        "infinite_number": (text.replace(f'"{nested}": {{', f'"{nested}": {{"n": -1E400, ', 1).encode(),
                            "-1E400 is beyond"),
    }


def loopback_tls_server(handler, directory):
    """A threading HTTPS server on 127.0.0.1 answering with `handler`, under a self-signed certificate written to
    `directory`/peer.pem (the CA file a client trusts it by). Returns (server, its serving thread, that file);
    the caller stops it with tests.conftest.stop_serving."""
    import ipaddress
    import ssl
    import threading
    from http.server import ThreadingHTTPServer

    key = ec.generate_private_key(ec.SECP256R1())
    certificate = self_signed_certificate(
        key, "peer", x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    certificate_file, key_file = directory / "peer.pem", directory / "peer.key"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread, certificate_file


def count_csr_reads(monkeypatch) -> dict[str, int]:
    """Spy on the CSR policy, calling through: how many times a request parsed a CSR (`load_csr`) and checked
    it (`check_csr`)."""
    from app.pki import csr_policy

    counts = {"load_csr": 0, "check_csr": 0}

    def spy(name: str):
        real = getattr(csr_policy, name)

        def counted(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)
        return counted

    for name in counts:
        monkeypatch.setattr(csr_policy, name, spy(name))
    return counts


def change_document(division_code: str = "360000", **overrides) -> dict:
    """A change request's A.1 document without a CSR: the node keeps its key."""
    return {**node_document(division_code, csr="", **overrides), "csr": None}
