"""SPEC §5: the signed routing table and the application node's route client."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.routing import document
from app.routing.client import AcceptResult, RouteClient
from app.routing.verification import RouteRejected

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ISSUER = "10000000002015000001"
JIANGXI = "36000000002025000001"
HUNAN = "43000000002025000001"
GUANGDONG = "44000000002025000001"


# --- a throwaway PKI -----------------------------------------------------------------------------

@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        return document.certificate_fingerprint(self.cert)


def issue(name: str, issuer: Issued | None = None, *, ca: bool = False, usages=(), days: int = 365,
          not_before: datetime = NOW - timedelta(days=1)) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_before + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    return Issued(key, builder.sign(issuer.key if issuer else key, hashes.SHA256()))


@dataclass
class PKI:
    root: Issued
    intermediate: Issued
    signer: Issued
    node: Issued
    foreign_signer: Issued


@pytest.fixture(scope="module")
def pki() -> PKI:
    root = issue("MPIM test root", ca=True, days=3650)
    intermediate = issue("MPIM test issuing CA", root, ca=True, days=1825)
    foreign_root = issue("Somebody else's root", ca=True)
    return PKI(root=root, intermediate=intermediate,
               signer=issue("route signer", intermediate, usages=[document.ROUTE_SIGNER_USAGE]),
               node=issue(JIANGXI, intermediate, usages=[ExtendedKeyUsageOID.CLIENT_AUTH]),
               foreign_signer=issue("route signer", foreign_root, usages=[document.ROUTE_SIGNER_USAGE]))


class Clock:
    def __init__(self, moment: datetime = NOW):
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def make_client(pki: PKI, **kwargs) -> RouteClient:
    kwargs.setdefault("now", Clock())
    return RouteClient(pki.root.pem, intermediates=pki.intermediate.pem, **kwargs)


def entry(node_id: str, **changes) -> dict:
    base = {"node_id": node_id, "division_code": node_id[:6], "org_name": f"Public Security {node_id[:2]}",
            "system_name": "PoliceChat", "endpoint": f"https://im{node_id[:2]}.example.gov.cn:8443/",
            "status": "up", "cert_sha256": node_id[:2] * 32, "capabilities": ["text", "image", "group"]}
    return {**base, **changes}


def table(version: int, *entries: dict, expires_in: timedelta = timedelta(hours=24)) -> dict:
    return document.full_table(version, entries or [entry(JIANGXI), entry(HUNAN)], issuer=ISSUER,
                               issued_at=NOW - timedelta(minutes=5), expires_at=NOW + expires_in)


def signed(pki: PKI, doc: dict, signer: Issued | None = None) -> dict:
    """The arguments of RouteClient.accept for `doc` signed the way the management node signs it."""
    signer = signer or pki.signer
    body = document.serialise(doc)
    headers = document.signature_headers(body, signer.key, signer.cert)
    return {"body": body, "signature_b64": headers["X-Route-Signature"],
            "signer_fingerprint": headers["X-Route-Signer"], "signer_cert_pem": signer.pem}


def rejected(client: RouteClient, **arguments) -> str:
    with pytest.raises(RouteRejected) as caught:
        client.accept(**arguments)
    return caught.value.code


# --- document.py ---------------------------------------------------------------------------------

def test_serialise_is_compact_sorted_and_keeps_chinese_as_utf8():
    body = document.serialise({"b": 1, "a": {"org_name": "江西省公安厅", "z": [1, 2]}})
    assert body == '{"a":{"org_name":"江西省公安厅","z":[1,2]},"b":1}'.encode()


def test_openssl_verifies_a_body_signed_by_document(pki, tmp_path):
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    body = document.serialise(table(7, entry(JIANGXI, org_name="江西省公安厅")))
    headers = document.signature_headers(body, pki.signer.key, pki.signer.cert)
    assert headers["X-Route-Signer"] == pki.signer.fingerprint
    (tmp_path / "body.json").write_bytes(body)
    (tmp_path / "sig.der").write_bytes(base64.b64decode(headers["X-Route-Signature"]))
    (tmp_path / "signer-pubkey.pem").write_bytes(
        pki.signer.cert.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    command = [openssl, "dgst", "-sha256", "-verify", "signer-pubkey.pem", "-signature", "sig.der"]

    good = subprocess.run([*command, "body.json"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    (tmp_path / "tampered.json").write_bytes(body.replace(b'"version":7', b'"version":8'))
    bad = subprocess.run([*command, "tampered.json"], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert good.returncode == 0 and "Verified OK" in good.stdout
    assert bad.returncode != 0


def test_compute_delta_lists_changed_and_added_entries_and_removed_ids():
    old = document.nodes_by_id([entry(JIANGXI), entry(HUNAN)])
    new = document.nodes_by_id([entry(JIANGXI), entry(HUNAN, status="down"), entry(GUANGDONG)])
    del new[JIANGXI]

    changed, removed = document.compute_delta(old, new)

    assert [item["node_id"] for item in changed] == [HUNAN, GUANGDONG]
    assert removed == [JIANGXI]


def test_describe_changes_says_what_changed_per_node():
    old = document.nodes_by_id([entry(JIANGXI), entry(HUNAN)])
    new = document.nodes_by_id([
        entry(JIANGXI, endpoint="https://new.example.gov.cn/", status="down", cert_sha256="ab" * 32),
        entry(GUANGDONG),
    ])

    assert document.describe_changes(old, new) == [
        f"{JIANGXI} status up→down",
        f"{JIANGXI} endpoint changed",
        f"{JIANGXI} certificate changed",
        f"{HUNAN} removed",
        f"{GUANGDONG} added",
    ]
    assert document.describe_changes(old, old) == []


# --- accepting a full table ----------------------------------------------------------------------

def test_good_table_is_accepted_stored_and_reloaded_by_a_new_client(pki, tmp_path):
    storage = tmp_path / "state" / "routes.json"
    client = make_client(pki, storage_path=storage)

    result = client.accept(**signed(pki, table(3)))

    assert result == AcceptResult("accepted", 3, None, (f"{JIANGXI} added", f"{HUNAN} added"))
    assert client.version == 3 and client.entry(HUNAN)["endpoint"] == "https://im43.example.gov.cn:8443/"
    assert client.entry_for_fingerprint("36" * 32)["node_id"] == JIANGXI
    assert client.is_trusted_peer(JIANGXI, "36" * 32) and not client.is_trusted_peer(JIANGXI, "43" * 32)
    # no temporary file left over; the lock file that serialises processes sharing the storage stays
    assert sorted(path.name for path in storage.parent.iterdir()) == [".routes.json.lock", "routes.json"]

    restarted = make_client(pki, storage_path=storage)
    assert restarted.table == client.table == table(3)
    assert rejected(restarted, **signed(pki, table(2))) == "rollback"


def test_intermediate_may_come_with_the_response_instead_of_the_constructor(pki):
    client = RouteClient(pki.root.pem, now=Clock())
    without_chain = signed(pki, table(1))

    assert rejected(client, **without_chain) == "bad_signer"
    assert client.accept(**without_chain, chain_pem=pki.intermediate.pem).outcome == "accepted"


def test_one_changed_byte_is_a_bad_signature(pki):
    client = make_client(pki)
    arguments = signed(pki, table(1))
    arguments["body"] = arguments["body"].replace(b"https://im36", b"https://im37")

    assert rejected(client, **arguments) == "bad_signature"
    assert client.table is None


def test_garbled_signature_is_a_bad_signature(pki):
    arguments = {**signed(pki, table(1)), "signature_b64": "not base64!"}
    assert rejected(make_client(pki), **arguments) == "bad_signature"


def test_signer_from_a_foreign_ca_is_a_bad_signer(pki):
    assert rejected(make_client(pki), **signed(pki, table(1), signer=pki.foreign_signer)) == "bad_signer"


def test_signer_certificate_not_matching_the_header_is_a_bad_signer(pki):
    other_signer = issue("second route signer", pki.intermediate, usages=[document.ROUTE_SIGNER_USAGE])
    arguments = signed(pki, table(1))
    # The body really is signed by pki.signer, but the certificate offered is another valid one.
    arguments["signer_cert_pem"] = other_signer.pem

    assert rejected(make_client(pki), **arguments) == "bad_signer"


def test_node_certificate_cannot_sign_a_table_although_it_chains_to_the_root(pki):
    assert rejected(make_client(pki), **signed(pki, table(1), signer=pki.node)) == "bad_signer"


def test_node_cannot_vouch_for_a_signer_certificate_it_issued_itself(pki):
    forged = issue("route signer", pki.node, usages=[document.ROUTE_SIGNER_USAGE])
    chain = pki.node.pem + pki.intermediate.pem

    assert rejected(make_client(pki), **signed(pki, table(1), signer=forged), chain_pem=chain) == "bad_signer"


def test_signer_certificate_past_its_validity_is_a_bad_signer(pki):
    client = make_client(pki, now=Clock(NOW + timedelta(days=400)))
    arguments = signed(pki, table(1, expires_in=timedelta(days=500)))

    assert rejected(client, **arguments) == "bad_signer"


def test_older_version_is_a_rollback_and_keeps_the_held_table(pki, tmp_path):
    storage = tmp_path / "routes.json"
    client = make_client(pki, storage_path=storage)
    client.accept(**signed(pki, table(5)))
    stored = storage.read_bytes()

    assert rejected(client, **signed(pki, table(4, entry(GUANGDONG)))) == "rollback"
    assert client.version == 5 and client.entry(GUANGDONG) is None
    assert storage.read_bytes() == stored


def test_same_version_again_is_unchanged(pki):
    client = make_client(pki)
    client.accept(**signed(pki, table(5)))

    assert client.accept(**signed(pki, table(5))) == AcceptResult("unchanged", 5, 5)


def test_expired_table_is_rejected_and_a_held_table_stops_being_used_past_its_expiry(pki):
    clock = Clock()
    client = make_client(pki, now=clock)
    assert rejected(client, **signed(pki, table(1, expires_in=timedelta(0)))) == "expired"

    client.accept(**signed(pki, table(2, expires_in=timedelta(hours=1))))
    assert client.is_trusted_peer(JIANGXI, "36" * 32)
    clock.moment = NOW + timedelta(hours=1)
    assert client.expired and not client.is_trusted_peer(JIANGXI, "36" * 32) and client.entry(JIANGXI) is None
    assert client.version == 2


def test_oversized_body_is_too_large_before_anything_is_parsed_or_verified(pki):
    client = make_client(pki, max_body_size=1024)
    garbage = {"body": b"{" * 1025, "signature_b64": "", "signer_fingerprint": "", "signer_cert_pem": b""}

    assert rejected(client, **garbage) == "too_large"
    assert rejected(client, **{**garbage, "body": b"{" * 1024}) == "bad_signer"


@pytest.mark.parametrize("broken", [
    {"node_id": "3600000000202500001"},
    {"endpoint": "http://im36.example.gov.cn/"},
    {"endpoint": "https:///no-host"},
    {"status": "sleeping"},
    {"cert_sha256": "36" * 31},
    {"capabilities": ["text", "telepathy"]},
    # `$` in Python's re also matches before a final newline: each field is matched whole
    {"node_id": JIANGXI + "\n"},
    {"division_code": "360000\n"},
    {"cert_sha256": "36" * 32 + "\n"},
])
def test_malformed_entry_is_rejected(pki, broken):
    client = make_client(pki)
    assert rejected(client, **signed(pki, table(1, {**entry(JIANGXI), **broken}))) == "malformed"
    assert client.table is None


def test_an_issuer_or_removed_node_id_ending_in_a_newline_is_malformed(pki):
    client = make_client(pki)
    assert rejected(client, **signed(pki, {**table(1), "issuer": ISSUER + "\n"})) == "malformed"
    delta = document.delta_document(2, 1, [], [HUNAN + "\n"], issuer=ISSUER, issued_at=NOW - timedelta(minutes=5),
                                    expires_at=NOW + timedelta(hours=24))
    with pytest.raises(document.MalformedDocument, match="removed"):
        document.check_delta(delta)


@pytest.mark.parametrize("body", [b'["not", "a", "table"]', b"[" * 5000])
def test_signed_body_that_is_not_a_table_is_malformed(pki, body):
    client = make_client(pki)
    arguments = {**signed(pki, table(1)), "body": body,
                 "signature_b64": base64.b64encode(document.sign_body(body, pki.signer.key)).decode()}

    assert rejected(client, **arguments) == "malformed"


def test_a_signed_table_naming_a_key_twice_is_malformed_not_read_as_its_last_value(pki):
    """docs/protocol.md §2.5: a node reads the management node's answers as strictly as a peer's envelope; a signed
    table giving an entry's endpoint twice was taken, the second one winning."""
    client = make_client(pki)
    body = document.serialise(table(1, entry(JIANGXI, endpoint="https://first.example"), entry(HUNAN)))
    body = body.replace(b'"endpoint":"https://first.example"',
                        b'"endpoint":"https://first.example","endpoint":"https://second.example"')
    arguments = {**signed(pki, table(1)), "body": body,
                 "signature_b64": base64.b64encode(document.sign_body(body, pki.signer.key)).decode()}
    with pytest.raises(RouteRejected) as refused:
        client.accept(**arguments)
    assert refused.value.code == "malformed" and "endpoint" in refused.value.message
    assert client.version is None


def test_own_entry_with_another_certificate_is_rejected(pki):
    client = make_client(pki, node_id=JIANGXI, own_fingerprint=pki.node.fingerprint)

    assert rejected(client, **signed(pki, table(1))) == "own_entry_mismatch"
    assert client.accept(**signed(pki, table(2, entry(JIANGXI, cert_sha256=pki.node.fingerprint)))).version == 2


# --- deltas --------------------------------------------------------------------------------------

def delta(version: int, since: int, changed=(), removed=()) -> dict:
    return document.delta_document(version, since, changed, removed, issuer=ISSUER,
                                   issued_at=NOW, expires_at=NOW + timedelta(hours=24))


def test_delta_is_applied_to_the_held_table(pki, tmp_path):
    client = make_client(pki, storage_path=tmp_path / "routes.json")
    client.accept(**signed(pki, table(1, entry(JIANGXI), entry(HUNAN), entry(GUANGDONG))))

    moved = entry(HUNAN, endpoint="https://im43-new.example.gov.cn/")
    result = client.accept(**signed(pki, delta(2, 1, changed=[moved], removed=[GUANGDONG])))

    assert result.changes == (f"{HUNAN} endpoint changed", f"{GUANGDONG} removed")
    held = client.table
    assert held["version"] == 2 and "since" not in held and "changed" not in held
    assert held["nodes"] == [entry(JIANGXI), moved]
    assert make_client(pki, storage_path=tmp_path / "routes.json").table == held


def test_delta_on_another_base_asks_for_the_full_table(pki):
    client = make_client(pki)
    assert rejected(client, **signed(pki, delta(3, 2, changed=[entry(GUANGDONG)]))) == "delta_base_mismatch"

    client.accept(**signed(pki, table(1)))
    assert rejected(client, **signed(pki, delta(3, 2, changed=[entry(GUANGDONG)]))) == "delta_base_mismatch"
    assert client.version == 1 and client.entry(GUANGDONG) is None


# --- pulling -------------------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: dict
    body: bytes = b""


def test_pull_sends_the_held_version_and_takes_304_as_unchanged(pki):
    client = make_client(pki)
    first = signed(pki, table(4))
    sent = []

    def fetch(headers, since):
        sent.append(headers)
        if headers.get("If-None-Match") == '"4"':
            return Response(304, {})
        return Response(200, {"x-route-signature": first["signature_b64"],
                              "X-Route-Signer": first["signer_fingerprint"]}, first["body"])

    assert client.pull(fetch, pki.signer.pem).outcome == "accepted"
    assert client.pull(fetch, pki.signer.pem) == AcceptResult("unchanged", 4, 4)
    assert "If-None-Match" not in sent[0] and sent[1]["If-None-Match"] == '"4"'


def test_stored_state_is_the_table_and_the_signed_documents_it_came_from(pki, tmp_path):
    storage = tmp_path / "routes.json"
    arguments = signed(pki, table(1))
    make_client(pki, storage_path=storage).accept(**arguments, chain_pem=pki.intermediate.pem)

    stored = json.loads(storage.read_text("utf-8"))
    assert stored["format"] == 2 and stored["table"] == table(1)
    [kept] = stored["documents"]
    assert base64.b64decode(kept["body"]) == arguments["body"] and kept["signature"] == arguments["signature_b64"]
    assert kept["signer_sha256"] == pki.signer.fingerprint
    assert base64.b64decode(kept["signer_certificate"]) == pki.signer.pem
    assert base64.b64decode(kept["chain"]) == pki.intermediate.pem


# --- a stored table is trusted only once it verifies as a pulled one would ---------------------------

def edit_stored(storage, change) -> None:
    """What someone who can write the data directory does: load the stored record, change it, save it."""
    record = json.loads(storage.read_text("utf-8"))
    change(record)
    storage.write_text(json.dumps(record), "utf-8")


def moved_endpoint_in_the_table(pki, record) -> None:
    record["table"]["nodes"][0]["endpoint"] = "https://attacker.example.net/"


def moved_endpoint_in_table_and_body(pki, record) -> None:
    moved_endpoint_in_the_table(pki, record)
    body = base64.b64decode(record["documents"][0]["body"]).replace(b"https://im36.example.gov.cn:8443/",
                                                                    b"https://attacker.example.net/")
    record["documents"][0]["body"] = base64.b64encode(body).decode()


def swapped_fingerprint_and_signature(pki, record) -> None:
    """The table lists another certificate for Jiangxi, its body says so, and a signature made for it by
    a key of the attacker's (anything but the route signer's) is stored beside it."""
    forged = table(9, entry(JIANGXI, cert_sha256="66" * 32), entry(HUNAN))
    body = document.serialise(forged)
    record["table"], record["documents"][0]["body"] = forged, base64.b64encode(body).decode()
    record["documents"][0]["signature"] = base64.b64encode(document.sign_body(body, pki.node.key)).decode()


def signed_by_a_foreign_key(pki, record) -> None:
    record["table"] = table(9, entry(JIANGXI, cert_sha256="66" * 32))
    forged = signed(pki, record["table"], signer=pki.foreign_signer)
    record["documents"] = [{"body": base64.b64encode(forged["body"]).decode(), "signature": forged["signature_b64"],
                            "signer_sha256": forged["signer_fingerprint"],
                            "signer_certificate": base64.b64encode(forged["signer_cert_pem"]).decode(),
                            "chain": None}]


def written_by_the_older_format(pki, record) -> None:
    """Format 1: the table, the body and its signature, but no signer certificate to check them by."""
    [kept] = record.pop("documents")
    record.update(format=1, body=kept["body"], signature=kept["signature"], signer_sha256=kept["signer_sha256"])


@pytest.mark.parametrize(("tamper", "reason"), [
    (moved_endpoint_in_the_table, "storage_unverified: its table is not the one its signed documents give"),
    (moved_endpoint_in_table_and_body, "bad_signature"),
    (swapped_fingerprint_and_signature, "bad_signature"),
    (signed_by_a_foreign_key, "bad_signer"),
    (written_by_the_older_format, "storage_unverified: it holds no signed documents"),
], ids=["endpoint_in_the_table", "endpoint_in_table_and_body", "fingerprint_and_signature", "foreign_key",
        "older_format"])
def test_a_stored_table_that_does_not_verify_is_not_used_and_the_next_pull_replaces_it(pki, tmp_path, caplog,
                                                                                     tamper, reason):
    storage = tmp_path / "routes.json"
    make_client(pki, storage_path=storage).accept(**signed(pki, table(5)))
    edit_stored(storage, lambda record: tamper(pki, record))

    restarted = make_client(pki, storage_path=storage)

    assert restarted.table is None and restarted.peek(JIANGXI) is None
    assert not restarted.is_trusted_peer(JIANGXI, "66" * 32)
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert f"not using the routing table stored in {storage}: {reason}" in caplog.text
    assert restarted.accept(**signed(pki, table(3))).outcome == "accepted"  # not a rollback from a forged 9
    assert make_client(pki, storage_path=storage).table == table(3)


def test_a_stored_table_built_from_deltas_verifies_and_a_changed_delta_does_not(pki, tmp_path, caplog):
    storage = tmp_path / "routes.json"
    client = make_client(pki, storage_path=storage)
    client.accept(**signed(pki, table(1)))
    client.accept(**signed(pki, delta(2, 1, changed=[entry(GUANGDONG)])))
    client.accept(**signed(pki, delta(3, 2, removed=[HUNAN])))
    assert len(json.loads(storage.read_text("utf-8"))["documents"]) == 3
    assert make_client(pki, storage_path=storage).table == client.table  # replayed from the documents

    def changed_delta(record):
        record["documents"][1]["signature"] = record["documents"][2]["signature"]
    edit_stored(storage, changed_delta)

    assert make_client(pki, storage_path=storage).table is None
    assert "bad_signature" in caplog.text
    client.accept(**signed(pki, table(4)))  # a full table starts the stored documents afresh
    assert len(json.loads(storage.read_text("utf-8"))["documents"]) == 1


UNREADABLE = {
    "garbage": b"\x00\x01 not json at all \xff",
    "truncated": b'{"format": 2, "table": {"version": 3, "nod',
    "not_utf8": '{"table": {"version": 3, "issuer": "公安部"}}'.encode("gb18030"),
    "not_a_table": b'{"nodes": []}',  # JSON, but not what a node stores
    "table_without_fields": b'{"table": {"version": 3}}',
}


@pytest.mark.parametrize("data", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_an_unreadable_stored_table_is_passed_over_as_one_that_does_not_verify(pki, tmp_path, caplog, data):
    """It raised storage_corrupt, so the node could not start, where one that fails verification (as easily
    made by anyone who can write the file) is logged and passed over: the next pull installs a fresh table."""
    storage = tmp_path / "routes.json"
    storage.write_bytes(data)

    restarted = make_client(pki, storage_path=storage)

    assert restarted.table is None and restarted.peek(JIANGXI) is None
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert f"not using the routing table stored in {storage}: storage_corrupt: it is unreadable: " in caplog.text
    assert restarted.accept(**signed(pki, table(3))).outcome == "accepted"
    assert make_client(pki, storage_path=storage).table == table(3)


# --- following the stored table (the node's server and its CLI share one data directory) ----------

def replace_file(storage, data: bytes) -> None:
    """What another process's write looks like: a new file renamed over the old one."""
    temporary = storage.with_name("incoming.json")
    temporary.write_bytes(data)
    temporary.replace(storage)


def stored_by_another_client(pki: PKI, tmp_path, doc: dict) -> bytes:
    """The bytes a route client stores after accepting `doc` (as a node restored from elsewhere would)."""
    elsewhere = tmp_path / "elsewhere" / "routes.json"
    make_client(pki, storage_path=elsewhere).accept(**signed(pki, doc))
    return elsewhere.read_bytes()


def test_a_newer_table_another_process_stored_is_used_for_the_next_lookups(pki, tmp_path):
    storage = tmp_path / "routes.json"
    server = make_client(pki, storage_path=storage, storage_check_interval=0)
    server.accept(**signed(pki, table(5)))
    cli = make_client(pki, storage_path=storage)

    cli.accept(**signed(pki, table(6, entry(JIANGXI), entry(GUANGDONG, cert_sha256="45" * 32))))

    assert server.peek(GUANGDONG)["cert_sha256"] == "45" * 32
    assert server.version == 6 and server.entry(HUNAN) is None
    assert server.is_trusted_peer(GUANGDONG, "45" * 32) and not server.is_trusted_peer(HUNAN, "43" * 32)
    assert server.entry_for_fingerprint("45" * 32)["node_id"] == GUANGDONG
    assert server.accept(**signed(pki, table(6))) == AcceptResult("unchanged", 6, 6)


def test_the_stored_file_is_looked_at_no_more_often_than_the_check_interval(pki, tmp_path):
    storage = tmp_path / "routes.json"
    server = make_client(pki, storage_path=storage, storage_check_interval=3600)
    server.accept(**signed(pki, table(5)))

    make_client(pki, storage_path=storage).accept(**signed(pki, table(6, entry(GUANGDONG))))

    assert server.version == 5 and server.peek(GUANGDONG) is None and server.peek(HUNAN) is not None


def test_accepting_after_another_process_stored_a_newer_table_never_writes_an_older_one(pki, tmp_path):
    storage = tmp_path / "routes.json"
    server = make_client(pki, storage_path=storage, storage_check_interval=3600)
    server.accept(**signed(pki, table(5)))
    make_client(pki, storage_path=storage).accept(**signed(pki, table(7)))
    stored = storage.read_bytes()

    assert rejected(server, **signed(pki, table(6))) == "rollback"
    assert server.version == 7 and storage.read_bytes() == stored


def test_accepting_waits_for_another_process_storing_and_then_never_writes_an_older_table(pki, tmp_path):
    """The CLI and the server pull at the same moment: whoever stores second sees the first one's file."""
    fcntl = pytest.importorskip("fcntl")
    storage = tmp_path / "routes.json"
    server = make_client(pki, storage_path=storage, storage_check_interval=3600)
    server.accept(**signed(pki, table(5)))
    newer = stored_by_another_client(pki, tmp_path, table(7))
    outcome: list = []

    def accept_six():
        try:
            outcome.append(server.accept(**signed(pki, table(6))))
        except RouteRejected as error:
            outcome.append(error.code)

    with open(storage.with_name(".routes.json.lock"), "a+b") as other_process:
        fcntl.flock(other_process.fileno(), fcntl.LOCK_EX)  # the CLI is between its look and its write
        accepting = threading.Thread(target=accept_six)
        accepting.start()
        accepting.join(0.5)
        assert accepting.is_alive() and server.version == 5  # waiting, not writing
        replace_file(storage, newer)
        fcntl.flock(other_process.fileno(), fcntl.LOCK_UN)
    accepting.join(10)

    assert outcome == ["rollback"]
    assert server.version == 7 and storage.read_bytes() == newer


@pytest.mark.parametrize("version", [4, 5])
def test_a_stored_table_no_newer_than_the_held_one_is_ignored(pki, tmp_path, version):
    storage = tmp_path / "routes.json"
    server = make_client(pki, storage_path=storage, storage_check_interval=0)
    server.accept(**signed(pki, table(5)))

    replace_file(storage, stored_by_another_client(pki, tmp_path, table(version, entry(GUANGDONG))))

    assert server.version == 5 and server.peek(GUANGDONG) is None and server.table == table(5)
    assert server.is_trusted_peer(HUNAN, "43" * 32)


def test_a_corrupt_stored_file_is_logged_and_the_held_table_kept(pki, tmp_path, caplog):
    storage = tmp_path / "routes.json"
    server = make_client(pki, storage_path=storage, storage_check_interval=0)
    server.accept(**signed(pki, table(5)))

    replace_file(storage, b'{"table": {"version": 9')

    assert server.is_trusted_peer(HUNAN, "43" * 32) and server.version == 5
    assert [record.levelname for record in caplog.records] == ["ERROR"]  # once, not on every lookup
    assert f"{storage}: it is unreadable" in caplog.text
    # A good table written over it later is taken as usual
    replace_file(storage, stored_by_another_client(pki, tmp_path, table(6, entry(GUANGDONG))))
    assert server.version == 6 and server.peek(GUANGDONG) is not None


def test_a_newer_stored_table_that_does_not_verify_is_logged_and_the_held_table_kept(pki, tmp_path, caplog):
    storage = tmp_path / "routes.json"
    server = make_client(pki, storage_path=storage, storage_check_interval=0)
    server.accept(**signed(pki, table(5)))
    genuine = stored_by_another_client(pki, tmp_path, table(6, entry(JIANGXI), entry(HUNAN)))
    replace_file(storage, genuine.replace(b"https://im43.example.gov.cn:8443/", b"https://attacker.example.net/"))

    assert server.version == 5 and server.peek(HUNAN)["endpoint"] == "https://im43.example.gov.cn:8443/"
    assert server.peek(HUNAN)["endpoint"] == "https://im43.example.gov.cn:8443/"  # logged once, not per lookup
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert f"not using the routing table stored in {storage}: storage_unverified" in caplog.text
    replace_file(storage, genuine)  # the same table as signed is taken as usual
    assert server.version == 6


def test_a_removed_stored_file_keeps_the_held_table(pki, tmp_path):
    storage = tmp_path / "routes.json"
    server = make_client(pki, storage_path=storage, storage_check_interval=0)
    server.accept(**signed(pki, table(5)))

    storage.unlink()

    assert server.version == 5 and server.peek(HUNAN) is not None


def test_a_stored_table_past_its_expiry_is_not_used(pki, tmp_path):
    storage = tmp_path / "routes.json"
    clock = Clock()
    server = make_client(pki, storage_path=storage, storage_check_interval=0, now=clock)
    server.accept(**signed(pki, table(5)))
    make_client(pki, storage_path=storage).accept(**signed(pki, table(6, entry(GUANGDONG),
                                                                     expires_in=timedelta(hours=1))))

    clock.moment = NOW + timedelta(hours=2)

    assert server.version == 5 and server.peek(GUANGDONG) is None and server.peek(HUNAN) is not None


def test_a_stored_table_listing_another_certificate_for_this_node_is_left_to_the_nodes_pull(pki, tmp_path):
    storage = tmp_path / "routes.json"
    server = make_client(pki, storage_path=storage, storage_check_interval=0, node_id=JIANGXI,
                         own_fingerprint=pki.node.fingerprint)
    server.accept(**signed(pki, table(5, entry(JIANGXI, cert_sha256=pki.node.fingerprint), entry(HUNAN))))

    make_client(pki, storage_path=storage).accept(**signed(pki, table(6, entry(JIANGXI), entry(GUANGDONG))))

    assert server.version == 5 and server.peek(GUANGDONG) is None
    # The node's own pull meets the mismatch, installs the listed certificate and pulls again
    assert rejected(server, **signed(pki, table(6, entry(JIANGXI), entry(GUANGDONG)))) == "own_entry_mismatch"
    server.set_identity(JIANGXI, "36" * 32)
    assert server.accept(**signed(pki, table(6, entry(JIANGXI), entry(GUANGDONG)))).outcome == "accepted"
    assert server.version == 6 and server.peek(GUANGDONG) is not None


# --- the route signer's revocation (the intermediate's CRL) --------------------------------------------

def crl_of(issuer: Issued, *revoked: Issued, number: int = 1, next_update: datetime = NOW + timedelta(days=7),
           this_update: datetime = NOW - timedelta(hours=1)) -> bytes:
    """A CRL in DER, as `/ca/crl.crl` serves it, signed by `issuer`'s key."""
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.cert.subject)
               .last_update(this_update).next_update(next_update)
               .add_extension(x509.CRLNumber(number), critical=False))
    for certificate in revoked:
        builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(
            certificate.cert.serial_number).revocation_date(NOW - timedelta(minutes=30)).build())
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(Encoding.DER)


def test_a_signer_on_the_crl_is_refused_and_a_table_it_signed_is_no_longer_held(pki, tmp_path, caplog):
    storage = tmp_path / "routes.json"
    client = make_client(pki, storage_path=storage)
    client.accept(**signed(pki, table(3)))
    assert client.use_revocation_list(crl_of(pki.intermediate, pki.signer, number=2)) is True
    assert client.version is None and client.entry(JIANGXI) is None
    assert f"version 3: the route signer certificate {pki.signer.cert.serial_number:x} is revoked" in caplog.text
    assert rejected(client, **signed(pki, table(4))) == "signer_revoked"
    restarted = make_client(pki, storage_path=storage, revocation_list=crl_of(pki.intermediate, pki.signer, number=2))
    assert restarted.version is None  # nor is the stored table trusted again
    successor = issue("route signer", pki.intermediate, usages=[document.ROUTE_SIGNER_USAGE])
    assert client.accept(**signed(pki, table(4), successor)).outcome == "accepted"


def test_a_crl_no_trusted_ca_signed_or_older_than_the_one_held_is_not_taken(pki):
    client = make_client(pki)
    impostor = issue("MPIM test issuing CA", ca=True)  # the intermediate's name, another key
    for data in (crl_of(impostor, pki.signer), b"not a CRL"):
        with pytest.raises(RouteRejected) as refused:
            client.use_revocation_list(data)
        assert refused.value.code == "bad_crl"
    assert client.use_revocation_list(crl_of(pki.intermediate, number=5)) is True
    replayed = crl_of(pki.intermediate, pki.signer, number=4, this_update=NOW - timedelta(days=2))
    assert client.use_revocation_list(replayed) is False  # older than the one held
    assert client.accept(**signed(pki, table(1))).outcome == "accepted"


def test_with_a_crl_required_a_new_table_needs_a_current_one_and_the_held_one_stays(pki, tmp_path):
    clock = Clock()
    storage = tmp_path / "routes.json"
    client = make_client(pki, now=clock, storage_path=storage, require_revocation_list=True)
    assert rejected(client, **signed(pki, table(1))) == "revocation_unknown"
    client.use_revocation_list(crl_of(pki.intermediate, next_update=NOW + timedelta(hours=1)))
    assert client.accept(**signed(pki, table(1))).outcome == "accepted"
    clock.moment = NOW + timedelta(hours=2)  # the CRL is past its nextUpdate, the table is not past its expiry
    assert rejected(client, **signed(pki, table(2))) == "revocation_unknown"
    assert client.version == 1 and client.entry(JIANGXI) is not None
    restarted = make_client(pki, now=clock, storage_path=storage, require_revocation_list=True)  # and no CRL
    assert restarted.version == 1 and restarted.entry(JIANGXI) is not None


def test_a_crl_replayed_from_the_same_second_as_the_one_held_is_not_taken(pki):
    """The management node writes thisUpdate in whole seconds, so CRLs it signs within one second tie, and only a
    strictly older thisUpdate was refused: the CRL from before a revocation, replayed after the one listing the
    signer, was taken, and the revoked signer's tables were accepted again. The CRL number decides."""
    client = make_client(pki)
    same_second = NOW - timedelta(minutes=5)
    assert client.use_revocation_list(crl_of(pki.intermediate, pki.signer, number=5, this_update=same_second))
    assert client.use_revocation_list(crl_of(pki.intermediate, number=4, this_update=same_second)) is False
    assert rejected(client, **signed(pki, table(1))) == "signer_revoked"


def test_a_signer_chaining_through_an_intermediate_the_root_crl_lists_is_refused(pki, tmp_path, caplog):
    """Whoever holds a revoked intermediate's key can mint a route signer and a CRL of that intermediate that does
    not list it: the root's CRL, which only the root key signs, is what says the intermediate is no longer good."""
    storage = tmp_path / "routes.json"
    client = make_client(pki, storage_path=storage, require_revocation_list=True,
                         revocation_list=crl_of(pki.intermediate))
    client.accept(**signed(pki, table(3)))
    root_crl = crl_of(pki.root, pki.intermediate, number=2)
    assert client.use_revocation_list(root_crl, of_root=True) is True
    assert client.version is None and client.entry(JIANGXI) is None  # what a forger may have had it take, dropped
    assert f"the intermediate CA certificate {pki.intermediate.cert.serial_number:x}" in caplog.text
    assert rejected(client, **signed(pki, table(4))) == "intermediate_revoked"
    restarted = make_client(pki, storage_path=storage, revocation_list=crl_of(pki.intermediate),
                            root_revocation_list=root_crl)
    assert restarted.version is None
    assert rejected(restarted, **signed(pki, table(5))) == "intermediate_revoked"


def test_a_root_crl_past_its_next_update_still_revokes_but_none_or_an_old_one_refuses_nothing(pki):
    """A revocation is final, so what a lapsed root CRL lists stays revoked; but a root whose key is offline signs
    its CRL rarely, so a missing or lapsed one does not stop new tables (the node's `status` warns instead)."""
    clock = Clock()
    client = make_client(pki, now=clock, require_revocation_list=True,
                         revocation_list=crl_of(pki.intermediate, next_update=NOW + timedelta(days=30)))
    assert client.accept(**signed(pki, table(1))).outcome == "accepted"  # no root CRL held
    client.use_revocation_list(crl_of(pki.root, next_update=NOW + timedelta(days=1)), of_root=True)
    clock.moment = NOW + timedelta(days=2)
    assert client.accept(**signed(pki, table(2, expires_in=timedelta(days=3)))).outcome == "accepted"  # lapsed
    assert client.root_revocation_list_next_update == NOW + timedelta(days=1)
    assert client.revocation_list_next_update == NOW + timedelta(days=30)  # the intermediate's, which is due first
    client.use_revocation_list(crl_of(pki.root, pki.intermediate, number=2, next_update=NOW + timedelta(days=1)),
                               of_root=True)
    assert rejected(client, **signed(pki, table(3, expires_in=timedelta(days=3)))) == "intermediate_revoked"


def test_a_root_crl_is_taken_only_when_the_trust_anchor_signed_it(pki):
    """The intermediate's key signs CRLs too: a CRL it signed, under its own name or the root's, is no root CRL."""
    client = make_client(pki)
    impostor = Issued(pki.intermediate.key, pki.root.cert)  # the root's name, the intermediate's key
    for data in (crl_of(pki.intermediate), crl_of(impostor, number=9)):
        with pytest.raises(RouteRejected) as refused:
            client.use_revocation_list(data, of_root=True)
        assert refused.value.code == "bad_crl"
    assert client.root_revocation_list_next_update is None
    assert client.use_revocation_list(crl_of(pki.root), of_root=True) is True
