"""The CA's condition where operators look: /healthz, the console's banner, the start-up log.

A wrong CA passphrase used to show only when the first issuance failed. Every test here opens real key
files in the CA directory the `app` fixture made (`flask ca init`); "as a process starting now" means
the CA this process loaded is forgotten, as in a worker that has not loaded it yet."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy import delete

from app.extensions import db
from app.pki import authority, service
from app.pki.models import CRLState
from tests.appnode_processes import PYTHON, ROOT, eventually, free_port
from tests.conftest import PASSWORD, stop_process
from tests.test_scheduler import heartbeat_holders, start_scheduler, wait_for
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)

WRONG = "not-the-ca-passphrase"


def as_a_process_starting_now(app) -> None:
    app.extensions.pop("mpim_authority", None)


@pytest.fixture
def decryptions(monkeypatch) -> list[int]:
    """Counts private-key decryptions (cryptography's loader, which `FileSigningKey.load` calls)."""
    calls: list[int] = []
    load = serialization.load_pem_private_key

    def counting(*args, **kwargs):
        calls.append(1)
        return load(*args, **kwargs)

    monkeypatch.setattr(serialization, "load_pem_private_key", counting)
    return calls


def test_a_wrong_passphrase_is_a_503_naming_it_and_ministry_admins_are_warned(app, client, admin_console, make_user):
    as_a_process_starting_now(app)
    app.config["MPIM_CA_PASSPHRASE"] = WRONG
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert (body["status"], body["database"], body["ca"]) == ("error", "ok", "key_unreadable")
    assert "passphrase" not in response.get_data(as_text=True)  # the reason is for the log and the admins

    page = admin_console.client.get("/").get_data(as_text=True)
    assert "无法打开 CA 密钥" in page and "intermediate.key" in page
    # health.poll presents the management certificate, whose key the passphrase opens too: the health shown
    # stops changing, which the banner says, lest a green map be taken for nodes seen up a moment ago.
    assert "也不会巡检节点健康" in page
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "The CA key cannot be opened" in page and "/healthz answers 503" in page
    assert "no node&#39;s health polled" in page

    make_user("auditor1", "auditor")  # auditors see the CA's expiry warnings; this one is not theirs
    from tests.conftest import Console

    auditor = Console(app.test_client())
    auditor.login("auditor1", PASSWORD)
    answer = auditor.client.get("/")
    assert answer.status_code == 200 and "intermediate.key" not in answer.get_data(as_text=True)


def test_the_banners_reason_is_in_the_admins_language_and_the_logs_in_english(app, admin_console):
    """The reason names the file as it is; its words are the reader's. The failure is remembered with its reason
    (`readiness.condition`), so whoever asked first, each reader gets their own language, and the log English."""
    from app.pki import readiness

    as_a_process_starting_now(app)
    app.config["MPIM_CA_PASSPHRASE"] = WRONG
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "无法打开 CA 密钥文件 intermediate.key：口令错误，或该文件不是加密的 PKCS#8 密钥。" in page
    assert "could not be opened" not in page and "wrong passphrase" not in page
    assert readiness.health_check()[2] == ("The CA key file intermediate.key could not be opened: wrong passphrase "
                                           "or not an encrypted PKCS#8 key.")
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "Detail: The CA key file intermediate.key could not be opened: wrong passphrase" in page

    admin_console.client.get("/lang/zh_CN")
    app.config["MPIM_CA_PASSPHRASE"] = "test-ca-passphrase"
    key = Path(app.config["MPIM_CA_DIR"]) / "intermediate.key"
    key.unlink()
    assert "CA 密钥文件 intermediate.key 不存在。" in admin_console.client.get("/").get_data(as_text=True)
    assert readiness.health_check()[2] == "The CA key file intermediate.key is missing."


def test_the_systems_reason_a_key_file_cannot_be_read_is_in_the_admins_language_too(app, admin_console):
    """A directory where the key file belongs (as a bad mount or restore leaves it; chmod would not stop root):
    the system says "Is a directory" in English; the banner says it in the reader's language, the log in
    English."""
    from app.pki import readiness

    as_a_process_starting_now(app)
    key = Path(app.config["MPIM_CA_DIR"]) / "intermediate.key"
    key.unlink()
    key.mkdir()
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "无法读取 CA 密钥文件 intermediate.key：它是一个目录。" in page
    assert "Is a directory" not in page
    assert readiness.health_check()[2] == "The CA key file intermediate.key could not be read: it is a directory."
    admin_console.client.get("/lang/en")
    assert "Detail: The CA key file intermediate.key could not be read: it is a directory." in \
        admin_console.client.get("/").get_data(as_text=True)


def test_the_banner_says_in_chinese_that_the_ca_directory_is_missing_naming_it(app, admin_console, tmp_path):
    unmounted = tmp_path / "unmounted"
    app.config["MPIM_CA_DIR"] = str(unmounted)
    as_a_process_starting_now(app)
    page = admin_console.client.get("/").get_data(as_text=True)
    assert f"数据库中有本 CA 的 CRL，但 {unmounted} 中没有 intermediate.pem：请挂载 CA 目录" in page
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert f"The database holds this CA&#39;s CRL, but {unmounted} has no intermediate.pem" in page


@pytest.mark.parametrize(("url", "name"), [("/ca/ca.pem", "root.pem"), ("/ca/chain.pem", "intermediate.pem"),
                                         ("/ca/route-signer.pem", "route-signer.pem")])
def test_a_wrong_passphrase_still_publishes_the_certificates_without_opening_a_key(app, client, decryptions,
                                                                                   url, name):
    """They need no private key: a joining node failed at init fetching the trust anchor."""
    as_a_process_starting_now(app)
    app.config["MPIM_CA_PASSPHRASE"] = WRONG
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.data == (Path(app.config["MPIM_CA_DIR"]) / name).read_bytes()
    assert decryptions == []


@pytest.mark.parametrize(("url", "name"), [("/ca/ca.pem", "root.pem"), ("/ca/chain.pem", "intermediate.pem"),
                                         ("/ca/route-signer.pem", "route-signer.pem")])
def test_a_published_certificate_is_parsed_once_per_version_of_its_file(app, client, monkeypatch, tmp_path,
                                                                        url, name):
    """Parsed on every request before; now once until the file changes. A file replaced (a rename, as a rotation
    or a restore does) is served on the next request, without a restart; one cut short in place is a 503."""
    from app.pki import published

    parses: list[int] = []
    parse = published._parse

    def counting(data):
        parses.append(1)
        return parse(data)

    monkeypatch.setattr(published, "_parse", counting)
    path = Path(app.config["MPIM_CA_DIR"]) / name
    original = path.read_bytes()
    assert client.get(url).data == original and client.get(url).data == original
    assert len(parses) == 1

    # Another certificate in its place, by one atomic rename.
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "replacement")])
    now = datetime.now(UTC)
    other = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now)
             .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    staged = path.with_name("staged.pem")
    staged.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    os.replace(staged, path)
    assert client.get(url).data == path.read_bytes() != original
    assert client.get(url).data == path.read_bytes() and len(parses) == 2

    path.write_bytes(original[:200])  # cut short, in place
    response = client.get(url)
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "ca_unavailable"
    assert response.headers["Retry-After"] == str(published.RETRY_SECONDS)
    path.write_bytes(original)  # restored
    assert client.get(url).data == original


def test_a_wrong_passphrase_makes_ocsp_answer_try_later_without_saying_why(app, client, decryptions):
    """Anyone may ask OCSP: the reason (which file, the passphrase) is for the log and the admins' banner;
    the answer is RFC 6960's unsigned tryLater, which OCSP clients understand."""
    as_a_process_starting_now(app)
    app.config["MPIM_CA_PASSPHRASE"] = WRONG
    directory = Path(app.config["MPIM_CA_DIR"])
    node = x509.load_pem_x509_certificate((directory / "route-signer.pem").read_bytes())
    issuer = x509.load_pem_x509_certificate((directory / "intermediate.pem").read_bytes())
    request = ocsp.OCSPRequestBuilder().add_certificate(node, issuer, hashes.SHA256()).build()
    response = client.post("/ca/ocsp", data=request.public_bytes(serialization.Encoding.DER),
                           content_type="application/ocsp-request")
    assert response.status_code == 200 and response.headers["Retry-After"]
    assert response.mimetype == "application/ocsp-response"
    assert ocsp.load_der_ocsp_response(response.data).response_status == ocsp.OCSPResponseStatus.TRY_LATER
    assert b"passphrase" not in response.data and b".key" not in response.data
    assert decryptions  # it did try the key: OCSP needs it


def test_the_right_passphrase_with_the_root_key_offline_is_ok(app, client, admin_console, tmp_path):
    """The intermediate issues; the root key belongs offline."""
    authority.root_offline(Path(app.config["MPIM_CA_DIR"]), tmp_path / "root.key")
    as_a_process_starting_now(app)
    response = client.get("/healthz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["ca"] == "ok"
    assert "intermediate.key" not in admin_console.client.get("/").get_data(as_text=True)


def test_before_ca_init_the_ca_is_not_initialised_and_healthz_is_200(app, client, tmp_path):
    app.config["MPIM_CA_DIR"] = str(tmp_path / "no-ca-yet")
    db.session.execute(delete(CRLState))  # a registry that never ran `flask ca init`
    db.session.commit()
    as_a_process_starting_now(app)
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["ca"] == "not_initialised"


def test_before_ca_init_the_root_crl_address_names_ca_init_not_root_crl(app, client, runner, tmp_path):
    """It said "run `flask ca root-crl --root-key PATH`", which before `flask ca init` refuses too."""
    app.config["MPIM_CA_DIR"] = str(tmp_path / "no-ca-yet")
    db.session.execute(delete(CRLState))
    db.session.commit()
    as_a_process_starting_now(app)
    for path in ("/ca/root-crl.pem", "/ca/root-crl.crl", "/ca/crl.pem"):
        answer = client.get(path)
        assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "ca_not_initialised", path
        assert "run `flask ca init`" in answer.get_json()["error"]["message"], path


def test_a_ca_directory_without_the_ca_the_database_knows_is_a_503(app, client, admin_console, tmp_path):
    """An unmounted share looks like an empty directory; the database says a CA was made."""
    app.config["MPIM_CA_DIR"] = str(tmp_path / "unmounted")
    as_a_process_starting_now(app)
    response = client.get("/healthz")
    assert response.status_code == 503 and response.get_json()["ca"] == "files_missing"
    assert "本注册中心已有 CA" in admin_console.client.get("/").get_data(as_text=True)


def test_no_passphrase_at_all_is_a_503(app, client, tmp_path):
    app.config["MPIM_CA_PASSPHRASE"] = ""
    app.config["MPIM_CA_PASSPHRASE_FILE"] = str(tmp_path / "nowhere")
    as_a_process_starting_now(app)
    response = client.get("/healthz")
    assert response.status_code == 503 and response.get_json()["ca"] == "passphrase_missing"


def test_a_passphrase_file_set_but_missing_or_empty_is_named_with_what_is_wrong(app, runner, tmp_path):
    """A typo in MPIM_CA_PASSPHRASE_FILE or an unmounted secrets volume said only "No CA passphrase: set
    MPIM_CA_PASSPHRASE or MPIM_CA_PASSPHRASE_FILE", as if nothing had been set."""
    app.config["MPIM_CA_PASSPHRASE"] = ""
    missing = tmp_path / "mpim-ca-passphrase-typo"
    app.config["MPIM_CA_PASSPHRASE_FILE"] = str(missing)
    as_a_process_starting_now(app)
    result = runner.invoke(args=["ca", "crl", "--regenerate"])
    refused_in_one_line(result, "MPIM_CA_PASSPHRASE_FILE")
    assert f"{missing} does not exist" in result.output
    empty = tmp_path / "empty"
    empty.write_text("\n")
    app.config["MPIM_CA_PASSPHRASE_FILE"] = str(empty)
    with pytest.raises(service.CANotReady) as refused:
        service.passphrase()
    assert refused.value.code == "passphrase_missing" and f"{empty} is empty" in str(refused.value)

    default = Path(app.config["MPIM_INSTANCE_PATH"]) / "ca_passphrase"  # what `make run` writes when nothing is set
    assert not default.exists()
    app.config["MPIM_CA_PASSPHRASE_FILE"] = str(default)
    with pytest.raises(service.CANotReady) as refused:
        service.passphrase()
    assert str(refused.value) == "No CA passphrase: set MPIM_CA_PASSPHRASE or MPIM_CA_PASSPHRASE_FILE."


def test_healthz_decrypts_no_key_while_the_ca_is_loaded_and_once_per_change_while_it_fails(
        app, client, tmp_path, decryptions):
    """A load balancer probes every few seconds: the answer comes from the CA this process holds, or
    from the failure remembered until the passphrase or a CA file changes."""
    for _ in range(3):
        assert client.get("/healthz").get_json()["ca"] == "ok"
    assert decryptions == []

    passphrase_file = tmp_path / "ca_passphrase"
    passphrase_file.write_text(WRONG + "\n")
    app.config["MPIM_CA_PASSPHRASE"] = ""
    app.config["MPIM_CA_PASSPHRASE_FILE"] = str(passphrase_file)
    as_a_process_starting_now(app)
    for _ in range(3):
        assert client.get("/healthz").get_json()["ca"] == "key_unreadable"
    assert len(decryptions) == 1  # the intermediate key, once

    passphrase_file.write_text("test-ca-passphrase\n")  # the operator corrects it (as conftest has it)
    assert client.get("/healthz").status_code == 200
    loaded = len(decryptions)
    for _ in range(3):
        assert client.get("/healthz").get_json()["ca"] == "ok"
    assert len(decryptions) == loaded


def test_a_key_file_restored_is_seen_by_the_next_probe(app, client):
    key = Path(app.config["MPIM_CA_DIR"]) / "intermediate.key"
    kept = key.read_bytes()
    key.unlink()
    as_a_process_starting_now(app)
    assert client.get("/healthz").get_json()["ca"] == "key_unreadable"
    key.write_bytes(kept)
    os.chmod(key, 0o600)
    assert client.get("/healthz").get_json()["ca"] == "ok"


@pytest.mark.parametrize("name", ["intermediate.pem", "root.pem"])
def test_a_ca_certificate_file_cut_short_is_unreadable_not_a_console_failure(app, client, admin_console, name):
    """A certificate file half-restored from a backup raised cryptography's ValueError from the CA's load, past
    the readiness check: every ministry admin's and auditor's page failed on the banner, again on each page."""
    certificate = Path(app.config["MPIM_CA_DIR"]) / name
    certificate.write_bytes(certificate.read_bytes()[:200])
    as_a_process_starting_now(app)
    response = client.get("/healthz")
    assert response.status_code == 503 and response.get_json()["ca"] == "key_unreadable"
    page = admin_console.client.get("/")
    assert page.status_code == 200 and name in page.get_data(as_text=True)


def test_the_scheduler_logs_at_start_that_the_ca_key_cannot_be_opened(app, tmp_path):
    log_path = tmp_path / "scheduler.log"
    with open(log_path, "wb") as log_file:
        process = start_scheduler(app, stderr=log_file, env={"MPIM_CA_PASSPHRASE": WRONG})
        # Stopped once it has run jobs, as the other scheduler tests do: a SIGTERM while its first runs are in
        # flight was seen to keep it from exiting for over 10 s (the first runs: no CA change of ours).
        try:
            wait_for(lambda: len(heartbeat_holders()) >= 3)
        finally:
            stop_process(process)
    lines = [line for line in log_path.read_text().splitlines() if "starting with ca" in line]
    assert len(lines) == 1 and "WARNING" in lines[0], log_path.read_text()
    assert "scheduler starting with ca key_unreadable: The CA key file intermediate.key could not be opened" in lines[0]


def test_a_job_that_needs_the_ca_key_logs_one_line_per_run_while_it_cannot_be_opened(app, caplog):
    """health.poll needs the management key every 30 s, ca.crl_refresh the intermediate's: with a wrong
    passphrase each run was a traceback of some 30 lines, though the error's message says all there is (the
    start-up warning names it too). One line naming the job and the reason; the traceback with debug on."""
    from app.scheduler import registry
    from app.scheduler.runner import run_job

    as_a_process_starting_now(app)
    app.config["MPIM_CA_PASSPHRASE"] = WRONG
    job = next(job for job in registry.jobs if job.name == "ca.crl_refresh")
    caplog.set_level(logging.INFO, logger="mpim.scheduler")
    run = run_job(job, "test")
    assert not run.ok and run.message.startswith("CAKeyUnreadable: The CA key file intermediate.key")
    lines = [r for r in caplog.records if r.name == "mpim.scheduler"]
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.ERROR, None)]
    assert lines[0].getMessage() == f"job ca.crl_refresh failed: {run.message}"
    caplog.set_level(logging.DEBUG, logger="mpim.scheduler")
    caplog.clear()
    run_job(job, "test")
    assert [r.exc_info is not None for r in caplog.records if r.name == "mpim.scheduler"] == [True]


def test_each_web_worker_logs_at_start_that_the_ca_key_cannot_be_opened(app, tmp_path):
    log_path = tmp_path / "gunicorn.log"
    port = free_port()
    env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "MPIM_INSTANCE_PATH": app.config["MPIM_INSTANCE_PATH"], "MPIM_CA_PASSPHRASE": WRONG,
           "SECRET_KEY": "test", "MPIM_ACCESS_LOG": "/dev/null", "MPIM_BIND": f"127.0.0.1:{port}",
           "MPIM_WORKERS": "2"}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([str(Path(PYTHON).with_name("gunicorn")), "-c", "gunicorn.conf.py", "wsgi:app"],
                                   cwd=ROOT, env=env, stdout=log_file, stderr=log_file)
        try:
            eventually(lambda: log_path.read_text().count("starting with ca key_unreadable") == 2,
                       what="both workers' warning")
            # With time, logger and level, as the scheduler's lines and operations.md show them: the app's
            # loggers had no handler in a worker, and Python's last resort printed the bare message.
            lines = [line for line in log_path.read_text().splitlines() if "starting with ca" in line]
            assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} mpim\.health WARNING web worker \d+ "
                                    r"starting with ca key_unreadable: The CA key file intermediate\.key .*", line)
                       for line in lines), lines
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
            assert answer.value.code == 503
        finally:
            stop_process(process)


def test_ca_init_refuses_a_second_ca_when_the_directory_of_the_first_is_missing(app, runner, tmp_path):
    """The first CA's files are away (an unmounted share); a new CA would be one no admitted node trusts."""
    app.config["MPIM_CA_DIR"] = str(tmp_path / "unmounted")
    as_a_process_starting_now(app)
    result = runner.invoke(args=["ca", "init", "--if-missing"])
    assert result.exit_code == 1
    assert "holds this CA's CRL" in result.output and "no admitted node trusts" in result.output
    assert not (tmp_path / "unmounted" / "intermediate.pem").exists()
    assert "run `flask ca init`" not in service.missing_ca_message()  # what requests needing the CA now say


def test_ca_init_still_works_on_a_database_without_a_ca(app, runner, tmp_path):
    db.session.execute(delete(CRLState))
    db.session.commit()
    app.config["MPIM_CA_DIR"] = str(tmp_path / "fresh")
    as_a_process_starting_now(app)
    result = runner.invoke(args=["ca", "init"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fresh" / "intermediate.pem").exists()


def test_two_ca_inits_at_once_against_one_database_make_one_ca(app, tmp_path):
    """Two hosts run `flask ca init` together against one database, each with its own MPIM_CA_DIR (a share not
    mounted on one). Both passed the checks before either had stored its CA, so both succeeded: the database
    held both CAs' certificates and two ca.init records. Here the test holds init's lock until both have
    written their files; then one makes the CA, the other is refused and keeps none of the files it wrote."""
    import threading

    from sqlalchemy import func, select

    from app import create_app
    from app.audit.models import AuditRecord
    from app.database import serialise
    from app.pki import lifecycle
    from app.pki.models import INTERMEDIATE_CRL, Certificate

    def count(statement) -> int:
        return db.session.scalar(statement)

    inits = select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "ca.init")
    managements = select(func.count()).select_from(Certificate).where(Certificate.kind == "management")
    db.session.execute(delete(CRLState))  # the database of no CA
    db.session.commit()
    before = count(inits), count(managements)
    hosts = {name: create_app({**app.config, "MPIM_CA_DIR": str(tmp_path / name)}) for name in ("one", "two")}
    outcomes: dict[str, object] = {}

    def init(name: str) -> None:
        with hosts[name].app_context():
            try:
                lifecycle.initialise(key_type="ec", actor=name)
                db.session.commit()
                outcomes[name] = "created"
            except authority.CAAlreadyInitialised as error:
                outcomes[name] = error.code
            except BaseException as error:
                outcomes[name] = error
            finally:
                db.session.remove()
                db.engine.dispose()

    serialise(lifecycle.INIT_LOCK)
    threads = [threading.Thread(target=init, args=(name,)) for name in hosts]
    try:
        for thread in threads:
            thread.start()
        eventually(lambda: all((tmp_path / name / "management.pem").exists() or name in outcomes for name in hosts),
                   timeout=60, interval=0.05, what="both inits to have written their CA files")
    finally:
        db.session.commit()  # the lock goes: both go on
        for thread in threads:
            thread.join(60)
    assert sorted(map(str, outcomes.values())) == ["ca_exists", "created"], outcomes
    winner, loser = sorted(hosts, key=lambda name: outcomes[name] != "created")
    assert (tmp_path / winner / "intermediate.pem").exists()
    assert sorted(path.name for path in (tmp_path / loser).iterdir()) == []
    assert (count(inits), count(managements)) == (before[0] + 1, before[1] + 1)
    assert db.session.get(CRLState, INTERMEDIATE_CRL) is not None


@pytest.mark.parametrize("command", [["ca", "crl"], ["routing", "publish", "--force"],
                                     ["routing", "verify", "BODY", "SIGNATURE"], ["health", "poll", "--once"]])
def test_commands_needing_the_ca_say_so_on_a_database_without_one(app, runner, tmp_path, command):
    """`ca crl`, `routing publish`, `routing verify` and `health poll --once` (its polls present the management
    node's certificate) ended in a traceback there; their siblings printed the error line."""
    (tmp_path / "BODY").write_text('{"version": 1}')
    (tmp_path / "SIGNATURE").write_bytes(b"MEUCIQ==")
    db.session.execute(delete(CRLState))
    db.session.commit()
    app.config["MPIM_CA_DIR"] = str(tmp_path / "fresh")
    as_a_process_starting_now(app)
    result = runner.invoke(args=[str(tmp_path / part) if part.isupper() else part for part in command])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("error: ") and "flask ca init" in result.output


def test_routing_publish_with_a_ca_key_it_cannot_open_says_so(app, runner):
    app.extensions.pop("mpim_authority", None)  # as in a process that has not loaded the CA yet
    app.config["MPIM_CA_PASSPHRASE"] = "not-the-ca-passphrase"
    result = runner.invoke(args=["routing", "publish", "--force"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("error: The CA key file intermediate.key could not be opened")


def before_ca_init(app, tmp_path) -> Path:
    """A database without a CA and an empty place for one (as `test_ca_init_still_works_on_a_database_without_a_ca`
    has them); the CA directory `flask ca init` would make."""
    db.session.execute(delete(CRLState))
    db.session.commit()
    app.config["MPIM_CA_DIR"] = str(tmp_path / "fresh")
    as_a_process_starting_now(app)
    return tmp_path / "fresh"


def refused_in_one_line(result, setting: str) -> None:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith(f"error: {setting} ") and result.output.count("\n") == 1, result.output


def test_ca_init_with_names_declared_but_empty_takes_the_defaults(app, tmp_path, monkeypatch):
    """`MPIM_CA_ROOT_NAME=` (declared and left empty, as a compose file has it) ended `flask ca init` in
    cryptography's ValueError; an empty setting now means its default, as for MPIM_CA_DIR."""
    from app import create_app

    directory = before_ca_init(app, tmp_path)
    names = ("MPIM_CA_ROOT_NAME", "MPIM_CA_INTERMEDIATE_NAME", "MPIM_CA_ORGANISATION", "MPIM_CA_KEY_TYPE")
    for name in names:
        monkeypatch.setenv(name, "")
    from_environment = create_app({key: value for key, value in app.config.items() if key not in names})
    with from_environment.app_context():  # the command runs in the context it finds (the fixture's, else)
        try:
            result = from_environment.test_cli_runner().invoke(args=["ca", "init"])
        finally:
            db.session.remove()
            db.engine.dispose()
    assert result.exit_code == 0, result.output
    for name, common_name in (("root.pem", "MPIM Root CA"), ("intermediate.pem", "MPIM Issuing CA 1")):
        subject = x509.load_pem_x509_certificate((directory / name).read_bytes()).subject
        assert subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == common_name
        assert subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == "Ministry of Public Security"
    key = serialization.load_pem_private_key((directory / "root.key").read_bytes(), b"test-ca-passphrase")
    assert isinstance(key, ec.EllipticCurvePrivateKey)


@pytest.mark.parametrize("setting", ["MPIM_CA_ROOT_NAME", "MPIM_CA_INTERMEDIATE_NAME"])
def test_ca_init_refuses_a_name_no_certificate_holds_naming_the_setting(app, runner, tmp_path, setting):
    """A common name holds 64 bytes of UTF-8 (RFC 5280's ub-common-name, as cryptography counts it): 22 Chinese
    characters. A longer one was cryptography's ValueError; now a refusal before anything is written, so the
    retry with a shorter name goes through."""
    directory = before_ca_init(app, tmp_path)
    app.config[setting] = "公安部移动警务即时通信互联互通网络管理节点根证书认证中心"  # 27 characters, 81 bytes
    refused_in_one_line(runner.invoke(args=["ca", "init"]), setting)
    assert "64" in runner.invoke(args=["ca", "init"]).output
    assert not directory.exists()
    app.config[setting] = ""  # set so only by hand (the environment's empty value is the default)
    refused_in_one_line(runner.invoke(args=["ca", "init"]), setting)
    app.config[setting] = "公安部移动警务即时通信根证书"
    result = runner.invoke(args=["ca", "init"])
    assert result.exit_code == 0, result.output


def test_ca_init_names_the_setting_of_an_unknown_key_type_and_a_name_of_spaces(app, runner, tmp_path):
    """`MPIM_CA_KEY_TYPE=dsa` was refused as "Unknown CA key type 'dsa'", naming no setting to correct, and a name
    of only spaces was called "empty"."""
    directory = before_ca_init(app, tmp_path)
    app.config["MPIM_CA_KEY_TYPE"] = "dsa"
    result = runner.invoke(args=["ca", "init"])
    refused_in_one_line(result, "MPIM_CA_KEY_TYPE")
    assert "'dsa'" in result.output and "--key-type" in result.output
    assert not directory.exists()
    app.config["MPIM_CA_KEY_TYPE"] = "ec"
    app.config["MPIM_CA_ROOT_NAME"] = "   "
    result = runner.invoke(args=["ca", "init"])
    refused_in_one_line(result, "MPIM_CA_ROOT_NAME")
    assert "only spaces" in result.output
    assert not directory.exists()
    for name, refusal in (("\u200b\u3000", "only spaces"), ("根\u202e证书", "control or bidi character")):
        app.config["MPIM_CA_ROOT_NAME"] = name  # shows as nothing; reads as another name
        result = runner.invoke(args=["ca", "init"])
        refused_in_one_line(result, "MPIM_CA_ROOT_NAME")
        assert refusal in result.output
        assert not directory.exists()


@pytest.mark.parametrize("generate", [False, True])
def test_ca_init_with_a_passphrase_file_that_is_a_directory_says_so(app, runner, tmp_path, generate):
    """MPIM_CA_PASSPHRASE_FILE naming a directory ended `flask ca init` (with or without --generate-passphrase)
    in IsADirectoryError."""
    directory = before_ca_init(app, tmp_path)
    app.config["MPIM_CA_PASSPHRASE"] = ""
    app.config["MPIM_CA_PASSPHRASE_FILE"] = str(tmp_path)
    result = runner.invoke(args=["ca", "init", *(["--generate-passphrase"] if generate else [])])
    refused_in_one_line(result, "MPIM_CA_PASSPHRASE_FILE")
    assert str(tmp_path) in result.output and "it is a directory" in result.output
    assert not directory.exists()


def test_a_passphrase_file_that_is_a_directory_is_a_503_naming_it(app, client, admin_console, tmp_path):
    """Every page asking for the CA, /healthz among them, answered 500 (IsADirectoryError)."""
    app.config["MPIM_CA_PASSPHRASE"] = ""
    app.config["MPIM_CA_PASSPHRASE_FILE"] = str(tmp_path)
    as_a_process_starting_now(app)
    response = client.get("/healthz")
    assert response.status_code == 503 and response.get_json()["ca"] == "passphrase_missing"
    assert "MPIM_CA_PASSPHRASE_FILE" in admin_console.client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("place", ["a-file", "a-file/ca"])
def test_ca_init_with_a_ca_directory_that_is_no_directory_says_so(app, runner, tmp_path, place):
    """MPIM_CA_DIR naming a file (or a path through one) ended `flask ca init` in FileExistsError
    (NotADirectoryError)."""
    before_ca_init(app, tmp_path)
    (tmp_path / "a-file").write_text("kept\n")
    app.config["MPIM_CA_DIR"] = str(tmp_path / place)
    result = runner.invoke(args=["ca", "init"])
    refused_in_one_line(result, "MPIM_CA_DIR")
    assert str(tmp_path / place) in result.output
    assert (tmp_path / "a-file").read_text() == "kept\n"
    assert db.session.scalar(db.select(CRLState.id)) is None  # nothing recorded either


@pytest.mark.parametrize("failing", ["intermediate.pem", "management."])
def test_ca_init_that_cannot_write_its_files_keeps_none_of_them(app, runner, tmp_path, monkeypatch, failing):
    """A write failing part way (a full disk) left part of a CA: `intermediate.pem` written without the service pairs
    is a CA every later `flask ca init` refuses to overwrite, and which the database knows nothing of."""
    import errno

    from app.pki import keys

    directory = before_ca_init(app, tmp_path)
    write = keys.write_public_file

    def full_disk(path, data):
        if path.name.startswith(failing):
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(keys, "write_public_file", full_disk)
    result = runner.invoke(args=["ca", "init"])
    refused_in_one_line(result, "MPIM_CA_DIR")
    assert "No space left on device; nothing was kept" in result.output
    assert [path.name for path in directory.iterdir() if path.suffix in (".pem", ".key")] == []
    monkeypatch.setattr(keys, "write_public_file", write)
    again = runner.invoke(args=["ca", "init"])
    assert again.exit_code == 0, again.output


def test_routing_verify_needs_no_ca_key(app, runner, tmp_path):
    """Checking a signature takes certificates only, yet `flask routing verify` refused while the CA key could not
    be opened (a wrong MPIM_CA_PASSPHRASE), which is when an operator most wants to check a table."""
    from app.routing import service as routing

    assert runner.invoke(args=["routing", "publish", "--force"]).exit_code == 0
    head = routing.head()
    (tmp_path / "t.json").write_bytes(head.body)
    (tmp_path / "t.sig").write_text(head.signature)
    as_a_process_starting_now(app)
    app.config["MPIM_CA_PASSPHRASE"] = WRONG
    result = runner.invoke(args=["routing", "verify", str(tmp_path / "t.json"), str(tmp_path / "t.sig")])
    assert result.exit_code == 0, result.output
    assert f"signature valid: table version {head.version} by {head.signer_sha256}" in result.output
    (tmp_path / "t.json").write_bytes(head.body.replace(b'"version":', b'"version":9'))
    forged = runner.invoke(args=["routing", "verify", str(tmp_path / "t.json"), str(tmp_path / "t.sig")])
    assert forged.exit_code == 1 and "signature INVALID" in forged.output
    assert not service.authority_loaded()  # no key was opened


@pytest.mark.parametrize(("option", "value"), [("--lease-seconds", "inf"), ("--lease-seconds", "nan"),
                                               ("--lease-seconds", "0"), ("--lease-seconds", "-1"),
                                               ("--lease-seconds", "１０"), ("--stop-grace-seconds", "1e400")])
def test_scheduler_run_refuses_seconds_it_cannot_keep(app, runner, option, value):
    """inf was a traceback, nan ran forever never leading, and 0 or -1 wrote leases already lapsed, which a
    second scheduler could take while the first still ran a job."""
    result = runner.invoke(args=["scheduler", "run", option, value])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output


def test_certificate_pages_show_while_the_ca_key_cannot_be_opened(app, people, admin_console):  # noqa: F811
    """Showing or handing out a certificate opens no key: the route signer's and the management certificate's
    detail pages (which asked the loaded CA whether they are in service) and every certificate's .pem (whose
    chain came from the loaded CA) answered 503 with a wrong passphrase."""
    from app.pki.models import Certificate

    admit_with_keys(people)
    rows = {row.kind: row for row in db.session.scalars(db.select(Certificate))}
    app.extensions.pop("mpim_authority", None)  # as in a worker that has not loaded the CA yet
    app.config["MPIM_CA_PASSPHRASE"] = "not-the-ca-passphrase"
    client = admin_console.client
    for kind in ("route_signer", "management", "node"):
        page = client.get(f"/certificates/{rows[kind].serial}")
        assert page.status_code == 200, kind
        download = client.get(f"/certificates/{rows[kind].serial}.pem")
        assert download.status_code == 200 and download.data.count(b"BEGIN CERTIFICATE") == 3, kind
    assert "这是正在使用的路由签名证书" in client.get(f"/certificates/{rows['route_signer'].serial}").get_data(
        as_text=True)


def test_a_revoked_route_signer_put_back_in_use_signs_no_table_and_healthz_says_so(app, client, runner,
                                                                                  admin_console):
    """Revoking the signer in use replaces it at once; a CA directory then restored from a backup taken before
    (or a replacement committed whose files could not be put in place) has the management node sign with the
    revoked key again, and every node refuses what it signs. It refuses to sign instead, and says so."""
    from app.pki import own_keys
    from app.routing import service as routing

    directory = Path(app.config["MPIM_CA_DIR"])
    backup = {name: (directory / name).read_bytes() for name in ("route-signer.pem", "route-signer.key")}
    serial = format(x509.load_pem_x509_certificate(backup["route-signer.pem"]).serial_number, "x")
    revoked = runner.invoke(args=["ca", "revoke", serial, "--reason", "key_compromise", "--user", "minister"])
    assert revoked.exit_code == 0 and "it was in use: replaced by route_signer" in revoked.output, revoked.output
    assert client.get("/healthz").get_json()["route_signer"] == "ok"
    for name, data in backup.items():  # the CA directory restored from a backup taken before the revocation
        (directory / name).write_bytes(data)
    head = routing.head_version()

    published = runner.invoke(args=["routing", "publish", "--force"])
    assert published.exit_code == 1 and isinstance(published.exception, SystemExit), published.output
    assert published.output.startswith(f"error: The route signer in use (certificate {serial}) is revoked")
    assert "flask ca rotate-route-signer" in published.output
    assert routing.head_version() == head
    response = client.get("/healthz")
    assert response.status_code == 503
    assert (response.get_json()["ca"], response.get_json()["route_signer"]) == ("ok", "revoked")
    assert serial.encode() not in response.data  # the reason is for the log and the admins
    assert "路由签名证书" in admin_console.client.get("/").get_data(as_text=True)
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert f"The route signer in use (certificate {serial}) is revoked" in page

    assert own_keys.service_renewal_job() == "renewed route-signer"  # the scheduler's hourly job mends it
    assert routing.head_version() == head + 1  # the table re-signed by the new signer
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json()["route_signer"] == "ok"
    assert runner.invoke(args=["routing", "publish", "--force"]).exit_code == 0
    assert routing.head_version() == head + 2


def expired_route_signer_in_use() -> str:
    """Put in use a route signer whose certificate ended an hour ago, as when the scheduler (whose
    ca.service_renewal renews it) did not run; its serial."""
    from app.pki import keys
    from app.pki.authority import StagedServicePair

    loaded = service.authority()
    key = keys.generate("ec", "service")
    now = service.utcnow()
    certificate = loaded.issue_service_certificate("route-signer", key.public_key(), not_before=now - timedelta(days=2),
                                                   not_after=now - timedelta(hours=1))
    serial = format(certificate.serial_number, "x")
    staged = StagedServicePair("route-signer", certificate, keys.FileSigningKey(key),
                               loaded.directory / f"route-signer.{serial}.new.key",
                               loaded.directory / f"route-signer.{serial}.new.pem")
    keys.write_private_key(staged.key_path, key, service.passphrase())
    keys.write_public_file(staged.certificate_path, authority.pem(certificate))
    loaded.install_service_pair(staged)
    service.store(certificate, "route_signer", None, "tests")
    db.session.commit()
    return serial


def test_an_expired_route_signer_in_use_signs_no_table_and_healthz_says_so(app, client, runner, admin_console):
    """It looked healthy and kept signing tables every node refuses: only a revoked signer was refused."""
    from app.pki import own_keys
    from app.routing import service as routing

    serial = expired_route_signer_in_use()
    head = routing.head_version()
    published = runner.invoke(args=["routing", "publish", "--force"])
    assert published.exit_code == 1 and isinstance(published.exception, SystemExit), published.output
    assert published.output.startswith(f"error: The route signer in use (certificate {serial}) expired on")
    assert "flask ca rotate-route-signer" in published.output
    with pytest.raises(own_keys.RouteSignerExpired) as refused:
        routing.publish("tests", force=True)
    assert refused.value.code == "route_signer_expired"
    db.session.rollback()
    assert routing.head_version() == head
    response = client.get("/healthz")
    assert response.status_code == 503
    assert (response.get_json()["ca"], response.get_json()["route_signer"]) == ("ok", "expired")
    assert serial.encode() not in response.data
    assert "路由签名证书" in admin_console.client.get("/").get_data(as_text=True)
    admin_console.client.get("/lang/en")
    assert f"The route signer in use (certificate {serial}) expired on" in \
        admin_console.client.get("/").get_data(as_text=True)

    assert own_keys.service_renewal_job() == "renewed route-signer"  # signed by the new signer, not the expired one
    assert routing.head_version() == head + 1
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json()["route_signer"] == "ok"
    assert runner.invoke(args=["routing", "publish", "--force"]).exit_code == 0


def test_a_renewal_while_the_route_signer_in_use_is_revoked_is_put_off_without_the_operators_detail(
        app, client, runner, people):  # noqa: F811
    """A renewal publishes a route version, which the revoked signer refuses to sign: the node got 503
    route_signer_revoked naming the signer's serial and the operator's command, with no Retry-After, though the
    hourly job mends it. It is put off as while the CA key cannot be opened: ca_unavailable, Retry-After."""
    from sqlalchemy import update

    from app.database import utcnow
    from app.pki.models import Certificate
    from tests.factories import NodeKeys

    node, keys = admit_with_keys(people)
    db.session.execute(update(Certificate).where(Certificate.node_id == node.node_id).values(
        not_before=utcnow() - timedelta(days=80), not_after=utcnow() + timedelta(days=10)))  # in the window
    db.session.commit()
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    directory = Path(app.config["MPIM_CA_DIR"])
    backup = {name: (directory / name).read_bytes() for name in ("route-signer.pem", "route-signer.key")}
    serial = format(x509.load_pem_x509_certificate(backup["route-signer.pem"]).serial_number, "x")
    assert runner.invoke(args=["ca", "revoke", serial, "--reason", "key_compromise", "--user", "minister"]) \
        .exit_code == 0
    for name, data in backup.items():  # the CA directory restored from a backup taken before the revocation
        (directory / name).write_bytes(data)
    response = client.post("/api/v1/certificates/renew", json={"csr": NodeKeys().csr},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "ca_unavailable"
    assert response.headers["Retry-After"] and serial.encode() not in response.data
    assert db.session.scalar(db.select(db.func.count()).select_from(Certificate)
                             .where(Certificate.node_id == node.node_id)) == 1


def database_from_before_a_rotation(app, runner, command: str, name: str) -> tuple[str, str]:
    """Rotate a service pair, then forget its row, as a database restored from a backup taken before the rotation
    (beside the CA directory kept as it is) does. (serial before, serial in use now)."""
    from app.pki.models import Certificate

    directory = Path(app.config["MPIM_CA_DIR"])
    before = format(x509.load_pem_x509_certificate((directory / name).read_bytes()).serial_number, "x")
    rotated = runner.invoke(args=["ca", command])
    assert rotated.exit_code == 0, rotated.output
    in_use = format(x509.load_pem_x509_certificate((directory / name).read_bytes()).serial_number, "x")
    db.session.execute(delete(Certificate).where(Certificate.serial == in_use))
    db.session.commit()
    return before, in_use


@pytest.mark.parametrize(("command", "name"), [("rotate-route-signer", "route-signer.pem"),
                                               ("rotate-management-certificate", "management.pem")])
def test_a_database_from_before_a_service_pair_rotation_is_a_503_naming_the_certificate_and_the_command(
        app, client, runner, admin_console, command, name):
    """A database restored alone, the CA directory kept: the pair in use was unknown to the database, so `flask ca
    list` showed the one before as valid and `flask ca revoke` of the one in use (the documented answer to a leaked
    key) said "No certificate with serial"; /healthz said ok. It is a 503 naming the certificate; the rotation it
    names records the certificate in use before replacing it, which can then be revoked."""
    from app.pki import revocation

    before, in_use = database_from_before_a_rotation(app, runner, command, name)
    as_a_process_starting_now(app)
    response = client.get("/healthz")
    assert response.status_code == 503 and response.get_json()["ca"] == "database_mismatch"
    assert in_use.encode() not in response.data  # the reason is for the log and the admins
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert f"{name} (certificate {in_use}), is not in the database" in page
    assert f"flask ca {command}" in page

    recovered = runner.invoke(args=["ca", command])
    assert recovered.exit_code == 0, recovered.output
    assert f"recorded {in_use}" in recovered.output
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json()["ca"] == "ok"
    listed = runner.invoke(args=["ca", "list"]).output
    assert in_use in listed and before in listed
    revoked = runner.invoke(args=["ca", "revoke", in_use, "--reason", "key_compromise", "--user", "minister"])
    assert revoked.exit_code == 0, revoked.output
    crl = x509.load_der_x509_crl(revocation.current_crl().der)
    assert crl.get_revoked_certificate_by_serial_number(int(in_use, 16)) is not None


def test_an_empty_database_beside_a_ca_directory_is_a_503_and_every_command_says_restore(app, client, runner,
                                                                                         admin_console):
    """`flask db upgrade` on an empty database beside a CA directory: /healthz said ok while /ca/crl.crl answered
    503, `flask ca crl` said to run `flask ca init`, and `flask ca init` refused because a CA exists."""
    from app.pki.models import Certificate

    db.session.execute(delete(CRLState))
    db.session.execute(delete(Certificate))
    db.session.commit()
    as_a_process_starting_now(app)
    response = client.get("/healthz")
    assert response.status_code == 503 and response.get_json()["ca"] == "database_mismatch"
    assert "但数据库中没有它的任何记录" in admin_console.client.get("/").get_data(as_text=True)
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "the database holds no record of it" in page and "Restore the database backed up with" in page
    for args in (["ca", "crl"], ["ca", "init"]):
        result = runner.invoke(args=args)
        assert result.exit_code != 0 and "flask ca init" not in result.output.replace("`flask ca init` refuses", "")
        assert "Restore the database backed up with" in result.output, result.output
    answer = client.get("/ca/crl.crl")
    assert answer.status_code == 503 and "flask ca init" not in answer.get_json()["error"]["message"]


def test_a_ca_directory_of_another_registry_beside_the_database_is_a_503(app, client, admin_console, tmp_path):
    """The database's CRL was signed by another issuing CA than the one in MPIM_CA_DIR."""
    other = tmp_path / "other-ca"
    authority.init_ca(other, b"test-ca-passphrase", service.ca_config())
    app.config["MPIM_CA_DIR"] = str(other)
    as_a_process_starting_now(app)
    response = client.get("/healthz")
    assert response.status_code == 503 and response.get_json()["ca"] == "database_mismatch"
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "signed by another issuing CA" in page and str(other) in page


def test_a_mismatch_seen_while_ca_init_commits_is_not_kept_for_a_minute(app, client):
    """`flask ca init` writes the CA directory before it commits its CRL and rows: a running process probed in
    between found "no record of it" and kept that answer for the minute a match is kept, a 503 on an install
    that was fine. A mismatch is compared again at the next probe."""
    from app.pki.models import INTERMEDIATE_CRL

    kept = db.session.get(CRLState, INTERMEDIATE_CRL)
    row = {column.key: getattr(kept, column.key) for column in CRLState.__table__.columns}
    db.session.execute(delete(CRLState).where(CRLState.id == INTERMEDIATE_CRL))
    db.session.commit()
    as_a_process_starting_now(app)
    assert client.get("/healthz").get_json()["ca"] == "database_mismatch"  # probed before init's commit
    db.session.add(CRLState(**row))
    db.session.commit()  # init commits
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json()["ca"] == "ok"


@pytest.mark.parametrize("source", ["variable", "file"])
def test_ca_init_refuses_a_short_passphrase_and_writes_nothing(app, runner, tmp_path, source):
    """`MPIM_CA_PASSPHRASE=a flask ca init` made the CA: the key files are PBKDF2 with few rounds, so what
    protects them, the root's exported by root-offline included, is the passphrase's length. Under 16 characters
    it is refused, naming where it came from; the passphrase `make run` generates is far longer."""
    directory = before_ca_init(app, tmp_path)
    if source == "variable":
        app.config["MPIM_CA_PASSPHRASE"] = "short-phrase"
    else:
        app.config["MPIM_CA_PASSPHRASE"] = ""
        (tmp_path / "phrase").write_text("short-phrase\n")
        app.config["MPIM_CA_PASSPHRASE_FILE"] = str(tmp_path / "phrase")
    result = runner.invoke(args=["ca", "init"])
    setting = "MPIM_CA_PASSPHRASE" if source == "variable" else "MPIM_CA_PASSPHRASE_FILE"
    refused_in_one_line(result, setting)
    assert "12 characters" in result.output and "at least 16" in result.output
    if source == "file":  # `--generate-passphrase` keeps a file that exists: the way out names the file
        assert f"write a longer one to {tmp_path / 'phrase'}, or remove it" in result.output, result.output
    assert not directory.exists()
    app.config["MPIM_CA_PASSPHRASE"] = "a-passphrase-of-sixteen+"
    assert runner.invoke(args=["ca", "init"]).exit_code == 0
