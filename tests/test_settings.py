"""Settings from the environment: a value out of its range stops the start, naming the variable."""

from __future__ import annotations

import pytest

from app.config import load_config


@pytest.mark.parametrize(("name", "value", "minimum"), [
    ("MPIM_HEALTH_CONCURRENCY", "0", 1), ("MPIM_HEALTH_FAILURES_BEFORE_DOWN", "0", 1),
    ("MPIM_HEALTH_SUCCESSES_BEFORE_UP", "-1", 1), ("MPIM_HEALTH_FLAP_CHANGES", "-1", 0),
    ("MPIM_CERT_DAYS", "0", 1), ("MPIM_CRL_DAYS", "0", 1), ("MPIM_ROOT_CRL_DAYS", "-3", 1),
    ("MPIM_ROUTE_TTL_HOURS", "0", 1), ("MPIM_PAGE_SIZE", "0", 1), ("MPIM_SESSION_MINUTES", "0", 1),
    ("MPIM_IDLE_MINUTES", "-1", 0), ("MPIM_PASSWORD_MAX_DAYS", "-1", 0), ("MPIM_LOGIN_MAX_FAILURES", "0", 1),
    ("MPIM_LOGIN_MAX_ADDRESS_FAILURES", "0", 1), ("MPIM_LOGIN_LOCK_MINUTES", "0", 1),
    ("MPIM_TRUSTED_PROXIES", "-1", 0), ("MPIM_NODE_SESSION_SECONDS", "0", 60),
    ("MPIM_NODE_SESSIONS_MAX", "0", 1), ("MPIM_HEALTH_EVENT_DAYS", "0", 1),
    ("MPIM_MAX_REQUEST_BYTES", "100", 65536)])
def test_settings_out_of_their_range_stop_the_start_naming_them(monkeypatch, tmp_path, name, value, minimum):
    """MPIM_HEALTH_CONCURRENCY=0 started, and every round then waited for good on a semaphore of none; a CRL
    valid 0 days, a page of 0 rows or a lock of 0 minutes started as quietly."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{name} must be {minimum} or more, not '{value}'$"):
        load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    monkeypatch.setenv(name, str(minimum))
    load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})


@pytest.mark.parametrize("value", ["hooks.example/alert", "ftp://hooks.example/alert", "http:///alert",
                                   "https://", "http://hooks example/alert", "http://hooks.example:99999/",
                                   "http://hooks..example/alert", "http://" + "a" * 64 + ".example/alert",
                                   "http://hooks.example/告警", "http://hooks.example/alert?token=S3CRET\x01",
                                   # aiohttp refuses every all-numeric IPv4 form but the dotted quad
                                   "http://127.1/alert", "http://2130706433/alert", "http://0177.0.0.1/alert"])
def test_a_webhook_url_that_is_no_http_address_stops_the_start_naming_it(monkeypatch, tmp_path, value):
    """A URL without a scheme started, and every round that had an alert to send then raised out of the webhook
    (ValueError: unknown url type) after its commit; one with another scheme or no host failed every attempt.
    The refusal quoted the whole value, a token in its query included, into the start's log."""
    monkeypatch.setenv("MPIM_HEALTH_WEBHOOK_URL", value)
    with pytest.raises(ValueError, match="^MPIM_HEALTH_WEBHOOK_URL must be an http:// or https:// address") as refused:
        load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    assert "alert" not in str(refused.value) and "S3CRET" not in str(refused.value)


@pytest.mark.parametrize(("value", "origin"), [
    ("https://alerts:S3CRET-TOKEN@hooks.example/notify", "https://hooks.example"),
    ("http://S3CRET@10.1.2.3:8080/hook", "http://10.1.2.3:8080"), ("http://user:pä@hooks.example/", "http://hooks.example"),
    ("https://:S3CRET@[fd00::1]/hook", "https://[fd00::1]")])
def test_a_webhook_url_with_user_information_stops_the_start_naming_only_its_scheme_and_host(monkeypatch, tmp_path,
                                                                                               value, origin):
    """`https://user:token@host/` started; urllib could not open it (InvalidURL: nonnumeric port: 'token@host'),
    and logged that, token and all, three times per alert. The refusal names the scheme and the host, not the rest."""
    monkeypatch.setenv("MPIM_HEALTH_WEBHOOK_URL", value)
    with pytest.raises(ValueError, match="^MPIM_HEALTH_WEBHOOK_URL must carry no user name or password") as refused:
        load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    assert f"as {origin} does:" in str(refused.value)
    assert "S3CRET" not in str(refused.value) and "hook" not in str(refused.value).replace("hooks.example", "")


@pytest.mark.parametrize("value", ["", "http://10.1.2.3:8080/hook", "https://alerts.example.gov.cn/mpim?x=1",
                                   "http://[fd00::1]/hook", "http://告警.公安.中国/hook"])
def test_an_http_webhook_url_or_none_starts(monkeypatch, tmp_path, value):
    monkeypatch.setenv("MPIM_HEALTH_WEBHOOK_URL", value)
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_HEALTH_WEBHOOK_URL"] == value


@pytest.mark.parametrize(("name", "value", "message"), [
    ("MPIM_NETWORK_FLAG", "12", "one digit"), ("MPIM_NETWORK_FLAG", "x", "one digit"),
    ("MPIM_NETWORK_FLAG", "５", "one digit"), ("MPIM_DEFAULT_LOCALE", "fr", "zh_CN or en"),
    ("MPIM_DEFAULT_LOCALE", "zh-CN", "zh_CN or en")])
def test_a_network_flag_or_locale_the_registry_cannot_use_stops_the_start_naming_it(monkeypatch, tmp_path, name,
                                                                                     value, message):
    """MPIM_NETWORK_FLAG=12 started, and the management node's id came out 21 digits (SPEC §2: one digit); a
    default locale the console has no translation for started as quietly."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{name} must be {message}, not '{value}'$"):
        load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})


def test_a_network_flag_and_locale_it_can_use_start(monkeypatch, tmp_path):
    monkeypatch.setenv("MPIM_NETWORK_FLAG", "3")
    monkeypatch.setenv("MPIM_DEFAULT_LOCALE", "en")
    config = load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    assert (config["MPIM_NETWORK_FLAG"], config["BABEL_DEFAULT_LOCALE"]) == ("3", "en")


def test_the_webhook_secret_is_read_from_its_file(monkeypatch, tmp_path):
    """MPIM_HEALTH_WEBHOOK_SECRET_FILE, as MPIM_CA_PASSPHRASE_FILE: the secret kept out of the environment. The
    variable itself wins; a file that cannot be read, or is empty, stops the start naming the file, never the
    secret."""
    monkeypatch.delenv("MPIM_HEALTH_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("MPIM_HEALTH_WEBHOOK_SECRET_FILE", raising=False)
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_HEALTH_WEBHOOK_SECRET"] == ""
    secret_file = tmp_path / "webhook_secret"
    secret_file.write_text("from-the-file\n")
    monkeypatch.setenv("MPIM_HEALTH_WEBHOOK_SECRET_FILE", str(secret_file))
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_HEALTH_WEBHOOK_SECRET"] == "from-the-file"
    monkeypatch.setenv("MPIM_HEALTH_WEBHOOK_SECRET", "from-the-environment")
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_HEALTH_WEBHOOK_SECRET"] == "from-the-environment"
    monkeypatch.delenv("MPIM_HEALTH_WEBHOOK_SECRET")
    secret_file.write_text("\n")
    with pytest.raises(ValueError, match=f"^MPIM_HEALTH_WEBHOOK_SECRET_FILE {secret_file} is empty$"):
        load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    secret_file.unlink()
    with pytest.raises(ValueError, match=f"^MPIM_HEALTH_WEBHOOK_SECRET_FILE {secret_file} could not be read: "
                                         "No such file or directory$"):
        load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})


def test_the_webhook_ca_is_checked_at_the_start(monkeypatch, tmp_path):
    """MPIM_HEALTH_WEBHOOK_CA, the PEM file of the CAs trusted for an https webhook: a file missing, unreadable
    or holding no PEM certificate stops the start naming the variable and the file, as a bad URL does, rather
    than costing every alert at the first round with one."""
    from tests.test_health_webhook import private_ca

    monkeypatch.delenv("MPIM_HEALTH_WEBHOOK_CA", raising=False)
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_HEALTH_WEBHOOK_CA"] == ""
    ca, _certificate, key = private_ca(tmp_path)
    monkeypatch.setenv("MPIM_HEALTH_WEBHOOK_CA", str(ca))
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_HEALTH_WEBHOOK_CA"] == str(ca)
    (tmp_path / "notes.txt").write_text("our CA is the one on the wiki\n")
    (tmp_path / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (tmp_path / "crl.pem").write_bytes(a_crl())
    # One certificate, then a broken block: it holds one, so "holds no PEM certificate" alone was untrue.
    (tmp_path / "bundle.pem").write_bytes(ca.read_bytes() + (tmp_path / "broken.pem").read_bytes())
    unloadable = "holds no PEM certificate, or one that is malformed"
    for path, said in [(tmp_path / "missing.pem", "could not be read: No such file or directory"),
                       (tmp_path, "could not be read: Is a directory"),
                       (tmp_path / "notes.txt", unloadable), (tmp_path / "broken.pem", unloadable),
                       (tmp_path / "bundle.pem", unloadable),
                       (tmp_path / "crl.pem", "holds no PEM certificate"), (key, unloadable)]:
        monkeypatch.setenv("MPIM_HEALTH_WEBHOOK_CA", str(path))
        with pytest.raises(ValueError) as refused:
            load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
        assert str(refused.value) == f"MPIM_HEALTH_WEBHOOK_CA {path} {said}"


def a_crl() -> bytes:
    """A PEM CRL: a file of CRLs only loads as CA certificates without error, and trusts no CA."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Alerts Private CA")])
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
           .next_update(now + dt.timedelta(days=1)).sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(("value", "origin"), [
    ("http://169.254.169.254/latest/meta-data/?token=S3CRET", "http://169.254.169.254"),
    ("http://169.254.10.20:8080/hook", "http://169.254.10.20:8080"), ("http://[fe80::1]/hook", "http://[fe80::1]"),
    ("http://[fe80::1%25eth0]:9000/hook", "http://[fe80::1%25eth0]:9000"),
    ("http://[::ffff:169.254.169.254]/hook", "http://[::ffff:169.254.169.254]"),
    ("http://0xa9fea9fe/hook", "http://0xa9fea9fe")])  # read as 169.254.169.254 by the resolver, not DNS
def test_a_link_local_webhook_url_starts_with_a_warning(monkeypatch, tmp_path, caplog, value, origin):
    """From a review: a webhook URL at a link-local address, a cloud host's metadata service (169.254.169.254)
    among them, was accepted without a word. The operator may mean it, so it starts; the start says where alerts
    will go, naming the scheme and host only."""
    monkeypatch.setenv("MPIM_HEALTH_WEBHOOK_URL", value)
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_HEALTH_WEBHOOK_URL"] == value
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mpim.health"] == [
        ("WARNING", f"MPIM_HEALTH_WEBHOOK_URL points at a link-local address ({origin}), such as a cloud host's "
                    "metadata service: every health alert is sent there")]
    assert "S3CRET" not in caplog.text and "meta-data" not in caplog.text


@pytest.mark.parametrize("value", ["http://127.0.0.1:8080/hook", "http://[::1]/hook", "http://localhost/hook",
                                   "http://10.1.2.3/hook", "https://alerts.example/hook", "http://[fd00::1]/hook",
                                   "http://169.254.example/hook"])
def test_a_webhook_url_at_loopback_or_elsewhere_starts_without_a_warning(monkeypatch, tmp_path, caplog, value):
    """Loopback is what tests and a receiver on the same host use: no warning there, nor at any other address."""
    monkeypatch.setenv("MPIM_HEALTH_WEBHOOK_URL", value)
    load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    assert [r for r in caplog.records if r.name == "mpim.health"] == []
