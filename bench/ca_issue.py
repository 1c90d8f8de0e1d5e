"""Certificate issuance per second against a bare cryptography signing loop, measured in the same run.

`issue_once` is the CA core's path for one node certificate: parse the CSR, apply the key policy and
check its self-signature, sign with the intermediate (EC P-256), serialise to PEM, fingerprint it.
`service_issue_once` adds what the service layer does around it (store the row, audit, commit, on
SQLite), each issuance for a new key as a renewal is (one key, one node: the service looks up every key it
certifies, and a thousand certificates of one key would make that lookup cost what no real key's does).
Baseline: `CertificateBuilder.sign` with a fixed subject and an EC P-256 key, nothing else.

Two more loops bound what any implementation could reach, measured in the same rounds: `profile`
signs the certificate the CA must issue (SPEC §3.4: subject, SANs, usages, AKI/SKI, CRL and OCSP
addresses) with `cryptography` directly, and `csr_check` verifies a CSR's self-signature, which the
issue's own policy requires. An issuance does both, so `ceiling` = 1 / (1/profile + 1/csr_check)
against the baseline is the best ratio with no parsing, policy, storage or audit at all.
Rounds of the two paths alternate and the median round counts, so a neighbour's load on the shared
cores hits both alike. Goal (issue 4): ratio ≥ 0.5 through the service (parse, policy, sign, store,
audit), which is the issue's own definition of `ca_issue`.

Prints the core figure (`ca_issue_core`) first and ends with the service figure (`ca_issue`).
`--core-only` skips the app and its database (and then prints only the core figure).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report  # noqa: E402 (adds the repository root to sys.path)
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from app.pki import authority, csr_policy, profiles  # noqa: E402

ROUNDS, PER_ROUND, WARM_UP = 5, 200, 50
NODE_ID = "36000000002025000001"
BENCH_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])


def node_csr() -> bytes:
    """A node's CSR is the node's work, made before the clock starts."""
    key = ec.generate_private_key(ec.SECP256R1())
    return x509.CertificateSigningRequestBuilder().subject_name(BENCH_NAME).sign(key, hashes.SHA256()) \
        .public_bytes(serialization.Encoding.PEM)


def issue_once(ca: authority.Authority, csr_pem: bytes, *, check: bool = True) -> str:
    """One node certificate through the CA core; returns its SHA-256 fingerprint. `check=False`
    leaves out the CSR's self-signature check, to show what that one ECDSA verification costs."""
    csr = csr_policy.load_csr(csr_pem)
    if check:
        csr_policy.check_csr(csr)
    certificate = ca.issue_node_certificate(csr, node_id=NODE_ID, org_name="江西省公安厅",
                                            endpoint_host="im.jx.example")
    certificate.public_bytes(serialization.Encoding.PEM)
    return certificate.fingerprint(hashes.SHA256()).hex()


def baseline_issuer() -> Callable[[], object]:
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    subject_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)

    def sign_once():
        return (x509.CertificateBuilder().subject_name(BENCH_NAME).issuer_name(BENCH_NAME)
                .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + timedelta(days=90)).sign(issuer_key, hashes.SHA256()))

    return sign_once


def profile_issuer(ca: authority.Authority, csr_pem: bytes) -> Callable[[], object]:
    """The CA's node certificate (same template, key and names), signed by `cryptography` directly."""
    public_key = csr_policy.load_csr(csr_pem).public_key()
    template = profiles.leaf_template(ca.intermediate_certificate, usages=profiles.TLS_USAGES, rsa_key=False,
                                      crl_url=ca.config.crl_url, ocsp_url=ca.config.ocsp_url)
    subject = profiles.subject_name("CN", "江西省公安厅", NODE_ID)
    names = profiles.node_names(NODE_ID, "im.jx.example")
    signer, now = ca.intermediate_key.signer(), datetime.now(UTC)

    def sign_once():
        return profiles.leaf_certificate(template, subject, public_key, names=names, not_before=now,
                                         not_after=now + timedelta(days=90)).sign(signer, hashes.SHA256())

    return sign_once


def per_second(once: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        once()
    return count / (time.perf_counter() - started)


def alternate(paths: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median rate of each path over interleaved rounds."""
    for once in paths.values():
        per_second(once, WARM_UP)
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, once in paths.items():
            rates[name].append(per_second(once, PER_ROUND))
    return {name: statistics.median(values) for name, values in rates.items()}


@contextmanager
def service_issuer(csr_pem: bytes, count: int) -> Iterator[Callable[[], object]]:
    """Issuance through `app.pki.service` on a migrated SQLite database, one session per issuance
    (as a request has), inside the app context the callable needs; good for `count` calls, each with
    its own CSR, all made before the clock starts."""
    from common import fresh_app

    app = fresh_app("ca", MPIM_CA_PASSPHRASE="bench-passphrase")
    with app.app_context():
        from app.admission import applications
        from app.admission.models import Node
        from app.auth import service as users
        from app.extensions import db
        from app.pki import lifecycle
        from app.pki import service as pki
        lifecycle.initialise(actor="bench")
        minister = users.create_user(users.UserDraft("minister", "Bench-Password-1", "ministry_admin"))
        document = {"division_code": "360000", "org_name": "江西省公安厅", "system_name": "bench", "vendor": "v",
                    "endpoint": "https://bench.example", "capabilities": ["text"],
                    "contact": {"name": "n", "phone": "0791-1234567", "email": "a@b.cn"}, "csr": csr_pem.decode()}
        node = applications.approve(applications.submit_by_user(document, by=minister), by=minister)
        db.session.commit()
        node_id = node.node_id
        db.session.remove()
        renewal_csrs = iter([node_csr().decode() for _ in range(count)])

        def service_issue_once():
            pki.issue_for_node(db.session.get(Node, node_id), next(renewal_csrs), actor="bench")
            db.session.commit()
            db.session.remove()

        yield service_issue_once


def main() -> None:
    csr_pem = node_csr()
    with_service = "--core-only" not in sys.argv
    with tempfile.TemporaryDirectory(prefix="mpim-bench-ca-") as directory, \
            (service_issuer(csr_pem, WARM_UP + ROUNDS * PER_ROUND) if with_service else nullcontext()) as service_once:
        ca = authority.init_ca(Path(directory) / "ca", b"bench-passphrase", authority.CAConfig())
        paths = {"core": lambda: issue_once(ca, csr_pem), "baseline": baseline_issuer(),
                 "unchecked": lambda: issue_once(ca, csr_pem, check=False), "profile": profile_issuer(ca, csr_pem),
                 "csr_check": lambda: x509.load_pem_x509_csr(csr_pem).is_signature_valid}
        if with_service:
            paths["service"] = service_once
        rates = alternate(paths)
    value, baseline = rates["core"], rates["baseline"]
    ceiling = 1 / (1 / rates["profile"] + 1 / rates["csr_check"])
    print(f"CA core {value:.0f} certificates/s ({rates['unchecked']:.0f}/s without the CSR signature check), "
          f"bare signing {baseline:.0f}/s; the CA's profile signed bare {rates['profile']:.0f}/s, a CSR "
          f"signature check {rates['csr_check']:.0f}/s: no issuance can beat {ceiling:.0f}/s "
          f"(ratio {ceiling / baseline:.2f})")
    bounds = {"profile_signing": round(rates["profile"], 1), "csr_check": round(rates["csr_check"], 1),
              "ceiling": round(ceiling, 1), "ceiling_ratio": round(ceiling / baseline, 3)}
    report("ca_issue_core", value, baseline, 0.5, without_csr_check=round(rates["unchecked"], 1), **bounds,
           unit="certificates per second (CA core: CSR, policy, sign, PEM, fingerprint)")
    if with_service:
        print(f"service (store + audit + commit, SQLite) {rates['service']:.0f} certificates/s")
        report("ca_issue", rates["service"], baseline, 0.5, **bounds, unit="certificates per second through the "
               "service (parse, policy, sign, store, audit, commit; SQLite, one process)")


if __name__ == "__main__":
    main()
