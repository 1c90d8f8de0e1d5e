"""`init`: all or nothing, refusing by name what the node could not work with, and `init --if-missing` run again
(as `make appnode` does) with corrected values; and what a node that has not joined says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.appnode.caller_limit import DEFAULT_PER_CALLER, DEFAULT_THREADS, per_caller_limit
from app.appnode.cli import cli
from app.appnode.config import NodeConfig
from app.appnode.node import Node
from app.appnode.outbox import DELIVERY_PARALLELISM
from app.appnode.store import put_setting
from app.errors import ValidationFailed
from tests.factories import self_signed_certificate


def init(data, division: str, registry: str = "http://127.0.0.1:5000"):
    return CliRunner().invoke(cli, ["--data", str(data), "init", "--if-missing", "--registry", registry,
                                    "--division", division, "--endpoint", "https://127.0.0.1:8643",
                                    "--listen", "127.0.0.1:8643"])


def stored(data) -> dict:
    return json.loads((data / "config.json").read_text("utf-8"))


def test_a_node_that_has_not_applied_takes_corrected_values(tmp_path):
    data = tmp_path / "jx"
    assert init(data, "360001").exit_code == 0  # a wrong division: the registry refused the application
    key = (data / "tls" / "node.key").read_bytes()

    result = init(data, "360000", registry="http://127.0.0.1:5600")

    assert result.exit_code == 0, result.output
    assert "division_code 360000 (was 360001)" in result.output and "registry_url" in result.output
    assert (stored(data)["division_code"], stored(data)["registry_url"]) == ("360000", "http://127.0.0.1:5600")
    assert Node(data).registry.base_url.startswith("http://127.0.0.1:5600")
    assert (data / "tls" / "node.key").read_bytes() == key  # the same node, not a new one
    assert init(data, "360000", registry="http://127.0.0.1:5600").output == ""  # nothing to change


def test_a_node_that_has_applied_refuses_other_values_and_keeps_its_own(tmp_path):
    data = tmp_path / "jx"
    assert init(data, "360000").exit_code == 0
    with Node(data).db.begin() as session:
        put_setting(session, "application_id", "3f2a")

    result = init(data, "440000")

    assert result.exit_code == 1
    assert "already applied with division_code 360000 (given 440000)" in result.output
    assert stored(data)["division_code"] == "360000"


def test_status_of_a_node_that_has_not_joined_says_so(tmp_path):
    """Before `join` there are no CA certificates, hence no route client; `status` failed with not_joined."""
    data = tmp_path / "jx"
    assert init(data, "360000").exit_code == 0
    result = CliRunner().invoke(cli, ["--data", str(data), "status"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["node (not joined)", "no routing table yet", "outbox empty"]
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
    assert json.loads(result.output) == {"node_id": None, "route_version": None, "routes_expired": False,
                                         "outbox": {}, "certificate_sha256": None, "certificate_problem": None,
                                         "registry_problem": None, "crl": None, "root_crl": None,
                                         "routes_expires_at": None}


def test_a_request_deadline_that_is_not_a_positive_time_is_refused_with_its_name(tmp_path):
    """A zero deadline would cut off every caller at its handshake, and an infinite one, read as none, would
    fail the first connection's socket timeout; either is refused when the node's configuration is read."""
    data = tmp_path / "jx"
    assert init(data, "360000").exit_code == 0
    for name, value in (("request_read_seconds", 0), ("request_min_bytes_per_second", "fast"),
                        ("request_read_seconds", float("inf"))):
        config = stored(data)
        (data / "config.json").write_text(json.dumps({**config, name: value}), "utf-8")
        result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
        assert result.exit_code == 2, result.output
        error = json.loads(result.output)["error"]
        assert error["code"] == "invalid_config" and f"{name} ({value!r})" in error["message"], error
        (data / "config.json").write_text(json.dumps(config), "utf-8")
    assert CliRunner().invoke(cli, ["--data", str(data), "status"]).exit_code == 0


def test_a_connection_limit_per_caller_outside_1_to_64_is_refused_with_its_name(tmp_path):
    """0 would refuse every caller and a fraction or a string cannot be counted to; the default (null) and whole
    numbers from 1 to 64 are taken."""
    data = tmp_path / "jx"
    assert init(data, "360000").exit_code == 0
    config = stored(data)
    assert config["max_connections_per_caller"] is None
    for value in (0, 65, 2.5, "2", True):
        (data / "config.json").write_text(json.dumps({**config, "max_connections_per_caller": value}), "utf-8")
        result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
        assert result.exit_code == 2, result.output
        error = json.loads(result.output)["error"]
        assert error["code"] == "invalid_config", error
        assert f"max_connections_per_caller ({value!r})" in error["message"], error
    for value in (1, 64, None):
        (data / "config.json").write_text(json.dumps({**config, "max_connections_per_caller": value}), "utf-8")
        assert CliRunner().invoke(cli, ["--data", str(data), "status"]).exit_code == 0


def test_caps_limits_and_the_route_interval_the_node_cannot_work_with_are_refused_with_their_name(
        tmp_path, monkeypatch):
    """A cap of "many" failed every batch it applied to as an internal error (retried by the peer for 48 h), one
    of 0 refused every read state, a file limit that is not a whole number failed every file, and a route interval
    of 0 pulled the table up to 20 times a second: each is refused when the configuration is read, by name, and a
    sound value is taken."""
    data = tmp_path / "jx"
    assert init(data, "360000").exit_code == 0
    config = stored(data)

    def refusal(**changed) -> str:
        (data / "config.json").write_text(json.dumps({**config, **changed}), "utf-8")
        result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
        assert result.exit_code == 2, result.output
        error = json.loads(result.output)["error"]
        assert error["code"] == "invalid_config", error
        return error["message"]

    for name in ("max_read_states_per_peer", "max_presence_per_peer", "max_hidden_groups_per_peer"):
        for value in (0, -1, 2.5, "many", None, True, 10**10):
            assert f"{name} ({value!r})" in refusal(**{name: value})
    for limits in ({"file": -1}, {"file": "1 MB"}, {"file": 1.5}, {"video": 1000}, ["file"]):
        assert f"limits ({limits!r})" in refusal(limits=limits)
    for value in (0, 0.5, -60, "60", None, float("inf")):
        assert f"route_interval ({value!r})" in refusal(route_interval=value)

    sound = {"max_read_states_per_peer": 1, "max_presence_per_peer": 1_000_000_000, "route_interval": 1,
             "limits": {"file": 0, "image": 10**12}}
    (data / "config.json").write_text(json.dumps({**config, **sound}), "utf-8")
    assert CliRunner().invoke(cli, ["--data", str(data), "status"]).exit_code == 0
    for name, value in (("MPIM_NODE_ROUTE_INTERVAL", "0"), ("MPIM_NODE_ROUTE_INTERVAL", "soon"),
                        ("MPIM_NODE_MAX_FILE_BYTES", "-1"), ("MPIM_NODE_MAX_FILE_BYTES", "1MB")):
        monkeypatch.setenv(name, value)
        result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
        assert result.exit_code == 2, result.output
        assert f"{name} ({value!r})" in json.loads(result.output)["error"]["message"]
        monkeypatch.delenv(name)


def test_groups_are_joined_by_invitation_unless_config_json_opens_them_with_a_boolean(tmp_path):
    """`init` writes `open_groups: false` (docs/protocol.md §8.9: a non-member's `join` is the home node's
    policy). Only true or false is taken: the string "false" is truthy, and would have opened every group."""
    data = tmp_path / "jx"
    assert init(data, "360000").exit_code == 0
    config = stored(data)
    assert config["open_groups"] is False
    for value in ("false", "true", 0, 1, None):
        (data / "config.json").write_text(json.dumps({**config, "open_groups": value}), "utf-8")
        result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
        assert result.exit_code == 2, result.output
        error = json.loads(result.output)["error"]
        assert (error["code"], error["message"]) == (
            "invalid_config", f"open_groups ({value!r}) in config.json must be true or false"), value
    (data / "config.json").write_text(json.dumps({**config, "open_groups": True}), "utf-8")
    assert CliRunner().invoke(cli, ["--data", str(data), "status"]).exit_code == 0
    assert Node(data).config.open_groups is True


@pytest.mark.parametrize(("configured", "threads", "limit"), [
    (None, 16, 6), (None, 12, 6), (None, 8, 4), (None, 4, 2), (None, 2, 1), (None, 1, 1), (3, 8, 3), (8, 2, 2),
    (64, 8, 8)])
def test_the_connection_limit_leaves_other_callers_threads_unless_set_otherwise(configured, threads, limit):
    """By default a caller may have 6 connections served (the reference sender's 4 deliveries at once, and 2
    more for its other traffic) and never more than half the threads; a limit set in config.json is taken as it
    is, up to all the threads."""
    assert per_caller_limit(configured, threads) == limit


def test_the_default_limit_is_in_force_with_the_default_threads():
    """A peer delivering at full parallelism still has room for more, and `run` has threads enough for that."""
    assert DEFAULT_PER_CALLER > DELIVERY_PARALLELISM
    assert per_caller_limit(None, DEFAULT_THREADS) == DEFAULT_PER_CALLER


ROOT = Path(__file__).resolve().parents[1]


def init_json(data, *extra: str) -> tuple[int, dict | None]:
    """`init` with --json: its exit code and the refusal on stderr (None when it created the node)."""
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "init", "--registry", "https://127.0.0.1:5000",
                                      "--division", "360000", "--endpoint", "https://127.0.0.1:8643", *extra])
    return result.exit_code, json.loads(result.stderr) if result.exit_code else None


def refused_by_name_before_init_writes_anything(data: Path, option: str, value: str) -> None:
    """`init` with `option` set to `value` is refused as invalid_config naming both, and writes nothing; the same
    init with good values then makes the node (for the test to go on with)."""
    code, refusal = init_json(data, option, value)  # the last of an option given is the one click takes
    assert code == 2, refusal
    assert refusal["error"]["code"] == "invalid_config" and f"{option} ({value!r})" in refusal["error"]["message"]
    assert not data.exists()
    assert init_json(data) == (0, None)


def operator_runs(data, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command as an operator runs it, through main(): the line it prints for a refusal, and its exit code."""
    return subprocess.run([sys.executable, "-m", "app.appnode", "--data", str(data), *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)


def a_ca_file(path: Path) -> Path:
    certificate = self_signed_certificate(ec.generate_private_key(ec.SECP256R1()), "registry CA",
                                          x509.BasicConstraints(ca=True, path_length=None), critical=True)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_registry_ca_that_cannot_be_used_is_refused_by_name_before_init_writes_anything(tmp_path):
    """The CA file was opened only after config.json and node.db were written: the directory then held a node
    that init called already_initialised and every other command failed with a traceback."""
    (tmp_path / "garbage.pem").write_text("not a certificate")
    for ca in (tmp_path / "missing.pem", tmp_path / "garbage.pem", tmp_path):
        data = tmp_path / "jx"
        code, refusal = init_json(data, "--registry-ca", str(ca))
        assert code == 2, refusal
        assert refusal["error"]["code"] == "invalid_config" and str(ca) in refusal["error"]["message"], refusal
        assert not data.exists()
        data.mkdir()  # an empty directory made for the node stays as it was
        assert init_json(data, "--registry-ca", str(ca))[0] == 2 and list(data.iterdir()) == []
        data.rmdir()
    assert init_json(data, "--registry-ca", str(a_ca_file(tmp_path / "ca.pem"))) == (0, None)


def test_a_node_whose_registry_ca_went_away_says_so_instead_of_a_traceback(tmp_path):
    data, ca = tmp_path / "jx", a_ca_file(tmp_path / "ca.pem")
    assert init_json(data, "--registry-ca", str(ca)) == (0, None)
    ca.unlink()
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
    assert result.exit_code == 2
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "invalid_config" and str(ca) in error["message"], error
    done = operator_runs(data, "users", "list")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error (invalid_config): ") and str(ca) in done.stderr


def test_init_that_fails_after_it_began_writing_leaves_the_directory_as_it_found_it(tmp_path, monkeypatch):
    """All or nothing: a configuration the new node cannot open (here an environment override) undoes what init
    wrote, so init can simply be run again."""
    monkeypatch.setenv("MPIM_NODE_ROUTE_INTERVAL", "0")
    fresh, kept = tmp_path / "new" / "jx", tmp_path / "kept"
    kept.mkdir()
    (kept / "README").write_text("the operator's own file")
    for data in (fresh, kept):
        code, refusal = init_json(data)
        assert code == 2 and refusal["error"]["code"] == "invalid_config", refusal
    assert not (tmp_path / "new").exists()
    assert [p.name for p in kept.iterdir()] == ["README"]
    monkeypatch.delenv("MPIM_NODE_ROUTE_INTERVAL")
    assert init_json(fresh) == (0, None) and init_json(kept) == (0, None)


def test_init_in_a_data_path_that_is_a_file_is_refused_naming_it(tmp_path):
    data = tmp_path / "notes.txt"
    data.write_text("not a directory")
    code, refusal = init_json(data)
    assert code == 2 and refusal["error"]["code"] == "cannot_write" and str(data) in refusal["error"]["message"]
    assert data.read_text() == "not a directory"
    done = operator_runs(data, "init", "--registry", "http://127.0.0.1:5000", "--division", "360000",
                         "--endpoint", "https://127.0.0.1:8643")
    assert done.returncode == 2 and done.stderr.startswith("error (cannot_write): "), done.stderr


def test_renew_and_csr_before_join_are_refused_as_not_joined_and_make_no_pending_key(tmp_path):
    """`renew` read a certificate the node does not have yet (a FileNotFoundError traceback), and `renew --force`
    made the pending key before it found the node had no node id."""
    data = tmp_path / "jx"
    assert init_json(data) == (0, None)
    for args in (("renew",), ("renew", "--force"), ("csr",), ("csr", "--new-key")):
        result = CliRunner().invoke(cli, ["--data", str(data), "--json", *args])
        assert result.exit_code == 2, result.output
        assert json.loads(result.stderr)["error"]["code"] == "not_joined", args
        assert not (data / "tls" / "pending.key").exists(), args
    done = operator_runs(data, "renew")
    assert done.returncode == 2 and done.stderr.startswith("error (not_joined): "), done.stderr


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:-5", "127.0.0.1:",
                                    ":8443", "127.0.0.1:８４４３", "127.0.0.1:8443 "])
def test_a_listen_address_that_is_no_host_and_port_is_refused_by_name(tmp_path, monkeypatch, listen):
    """`--listen nonsense` was stored as given, and a port past 65535 failed `run` with an OverflowError."""
    data = tmp_path / "jx"
    code, refusal = init_json(data, "--listen", listen)
    assert code == 2 and refusal["error"]["code"] == "invalid_config" and repr(listen) in refusal["error"]["message"]
    assert not data.exists()
    assert init_json(data, "--listen", "127.0.0.1:8643") == (0, None)
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "init", "--if-missing", "--registry",
                                      "https://127.0.0.1:5000", "--division", "360000", "--endpoint",
                                      "https://127.0.0.1:8643", "--listen", listen])
    assert result.exit_code == 2 and json.loads(result.stderr)["error"]["code"] == "invalid_config"
    assert stored(data)["listen"] == "127.0.0.1:8643"
    monkeypatch.setenv("MPIM_NODE_LISTEN", listen)
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
    assert result.exit_code == 2
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "invalid_config" and f"MPIM_NODE_LISTEN ({listen!r})" in error["message"], error
    monkeypatch.delenv("MPIM_NODE_LISTEN")
    (data / "config.json").write_text(json.dumps({**stored(data), "listen": listen}), "utf-8")
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
    assert result.exit_code == 2 and f"listen ({listen!r})" in json.loads(result.stderr)["error"]["message"]


def test_a_listen_address_with_a_port_from_1_to_65535_is_taken(tmp_path, monkeypatch):
    for number, listen in enumerate(("0.0.0.0:1", "[::1]:65535", "localhost:8443")):
        data = tmp_path / f"n{number}"
        assert init_json(data, "--listen", listen) == (0, None)
        monkeypatch.setenv("MPIM_NODE_LISTEN", listen)
        assert CliRunner().invoke(cli, ["--data", str(data), "status"]).exit_code == 0
    done = operator_runs(data, "run", env={"MPIM_NODE_LISTEN": "127.0.0.1:99999"})
    assert done.returncode == 2 and done.stderr.startswith("error (invalid_config): "), done.stderr


@pytest.mark.parametrize("division", ["abc", "36000", "3600000", "３６００００", "360000\n", " 360000", "36 000"])
def test_a_division_that_is_no_six_digit_code_is_refused_by_name_before_init_writes_anything(tmp_path, division):
    """`--division abc` was stored as given and refused only at `join`, by the management node. Only the shape
    is checked here: which codes are current divisions only the management node knows (it says so at join)."""
    data = tmp_path / "jx"
    for again in ((), ("--if-missing",)):  # the second time over a node made in between, which keeps its own
        result = CliRunner().invoke(cli, ["--data", str(data), "--json", "init", *again, "--registry",
                                          "https://127.0.0.1:5000", "--division", division, "--endpoint",
                                          "https://127.0.0.1:8643"])
        assert result.exit_code == 2, result.output
        error = json.loads(result.stderr)["error"]
        assert error["code"] == "invalid_config" and f"--division ({division!r})" in error["message"], error
        assert not data.exists() if not again else stored(data)["division_code"] == "360000"
        assert init(data, "360000").exit_code == 0


@pytest.mark.parametrize("endpoint", ["x", "127.0.0.1:8643", "http://127.0.0.1:8643", "https://", "https:///node",
                                      "https://ops@node.example", "https://node.example/a b",
                                      "https://node.example:99999", "https://node.example/?q=1", "https://[v1.x]:8443"])
def test_an_endpoint_the_management_node_would_refuse_is_refused_by_name_before_init_writes_anything(
        tmp_path, endpoint):
    """`--endpoint x` was stored as given and refused only at `join`; init now applies the management node's own
    rule (an https URL with a host, no user information, query or fragment)."""
    data = tmp_path / "jx"
    refused_by_name_before_init_writes_anything(data, "--endpoint", endpoint)
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "init", "--if-missing", "--registry",
                                      "https://127.0.0.1:5000", "--division", "360000", "--endpoint", endpoint])
    assert result.exit_code == 2 and stored(data)["endpoint"] == "https://127.0.0.1:8643"


def test_node_init_refuses_them_too_before_it_writes_anything(tmp_path):
    """`Node.init`, which the CLI's init calls, holds the same rule for a caller that is not the CLI."""
    for division, endpoint, name in (("abc", "https://node.example", "division_code"), ("360000", "x", "endpoint")):
        with pytest.raises(ValidationFailed) as refused:
            Node.init(tmp_path / "jx", NodeConfig(registry_url="https://127.0.0.1:5000", division_code=division,
                                                  endpoint=endpoint))
        assert refused.value.code == "invalid_config" and refused.value.message.startswith(f"{name} (")
        assert not (tmp_path / "jx").exists()


def test_an_endpoint_the_management_node_takes_is_taken_as_given(tmp_path):
    for number, endpoint in enumerate(("https://node.example", "HTTPS://Node.Example:443/im/", "https://[::1]:8443")):
        data = tmp_path / f"n{number}"
        assert init_json(data, "--endpoint", endpoint) == (0, None)
        assert stored(data)["endpoint"] == endpoint


def test_a_relative_registry_ca_is_kept_as_an_absolute_path_so_the_node_runs_from_any_directory(
        tmp_path, monkeypatch):
    """`--registry-ca ca.pem` was stored as given: the node opened fine in the directory init ran in, and
    failed invalid_config in any other."""
    data, setup, elsewhere = tmp_path / "jx", tmp_path / "setup", tmp_path / "elsewhere"
    setup.mkdir()
    elsewhere.mkdir()
    a_ca_file(setup / "ca.pem")
    monkeypatch.chdir(setup)
    assert init_json(data, "--registry-ca", "ca.pem") == (0, None)
    assert stored(data)["registry_ca_file"] == str(setup / "ca.pem")
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
    assert result.exit_code == 0, result.stderr
    assert operator_runs(data, "status").returncode == 0  # from the checkout, as an operator would


@pytest.mark.parametrize("registry", ["localhost:5000", "ftp://registry.example", "http://", "http://a b",
                                      "http://user:pw@registry.example/", "https://registry.example/?q=1",
                                      "https://registry.example/#top", "https://registry.example:99999",
                                      "https://registry.example\n"])
def test_a_registry_address_that_is_no_http_url_is_refused_by_name_wherever_it_comes_from(
        tmp_path, monkeypatch, registry):
    """`--registry` was stored as given: "http://a b" and "http://user:pw@host/" ended `join` in a traceback
    (http.client.InvalidURL), and "localhost:5000" was called unreachable. It is refused at init, again, in
    config.json and in MPIM_NODE_REGISTRY_URL, naming where it came from."""
    data = tmp_path / "jx"
    refused_by_name_before_init_writes_anything(data, "--registry", registry)
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "init", "--if-missing", "--registry", registry,
                                      "--division", "360000", "--endpoint", "https://127.0.0.1:8643"])
    assert result.exit_code == 2 and json.loads(result.stderr)["error"]["code"] == "invalid_config"
    assert stored(data)["registry_url"] == "https://127.0.0.1:5000"
    monkeypatch.setenv("MPIM_NODE_REGISTRY_URL", registry)
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
    error = json.loads(result.stderr)["error"]
    assert result.exit_code == 2 and f"MPIM_NODE_REGISTRY_URL ({registry!r})" in error["message"], error
    monkeypatch.delenv("MPIM_NODE_REGISTRY_URL")
    (data / "config.json").write_text(json.dumps({**stored(data), "registry_url": registry}), "utf-8")
    result = CliRunner().invoke(cli, ["--data", str(data), "--json", "status"])
    assert result.exit_code == 2 and f"registry_url ({registry!r})" in json.loads(result.stderr)["error"]["message"]
    with pytest.raises(ValidationFailed):
        Node.init(tmp_path / "other", NodeConfig(registry_url=registry, division_code="360000",
                                                 endpoint="https://node.example"))
    assert not (tmp_path / "other").exists()


def test_a_node_that_has_not_applied_takes_a_corrected_registry_ca_and_refuses_one_it_cannot_use(tmp_path):
    """`init --if-missing` compared the registry, division, endpoint and listen address, and ignored a changed
    --registry-ca: a node made with the wrong CA file kept it, and `join` failed its TLS handshake."""
    data, wrong, right = tmp_path / "jx", a_ca_file(tmp_path / "wrong.pem"), a_ca_file(tmp_path / "right.pem")
    assert init_json(data, "--registry-ca", str(wrong)) == (0, None)
    again = ["--data", str(data), "--json", "init", "--if-missing", "--registry", "https://127.0.0.1:5000",
             "--division", "360000", "--endpoint", "https://127.0.0.1:8643"]
    (tmp_path / "garbage.pem").write_text("not a certificate")
    result = CliRunner().invoke(cli, [*again, "--registry-ca", str(tmp_path / "garbage.pem")])
    assert result.exit_code == 1 and "garbage.pem" in json.loads(result.stderr)["error"]["message"], result.output
    assert stored(data)["registry_ca_file"] == str(wrong)
    result = CliRunner().invoke(cli, [*again, "--registry-ca", str(right)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["changed"] == {"registry_ca_file": str(right)}
    assert stored(data)["registry_ca_file"] == str(right)
    assert CliRunner().invoke(cli, [*again, "--registry-ca", str(right)]).output == ""  # nothing to change
    with Node(data).db.begin() as session:
        put_setting(session, "application_id", "3f2a")
    result = CliRunner().invoke(cli, [*again, "--registry-ca", str(wrong)])
    assert result.exit_code == 1 and "already applied with registry_ca_file" in result.stderr, result.output
    assert stored(data)["registry_ca_file"] == str(right)


def test_a_node_that_has_not_applied_takes_corrected_names_and_keeps_what_is_not_given_again(tmp_path):
    """`init --if-missing --org-name ...` over a node that had not applied answered "nothing to change" and kept
    the first name, which the application then sent; and a rerun without --listen or --registry-ca (as `make
    appnode` runs it) would have put back the defaults over values given the first time. Only what is given
    is compared."""
    data = tmp_path / "jx"
    ca_file = a_ca_file(tmp_path / "ca.pem")
    assert init_json(data, "--listen", "127.0.0.1:9443", "--registry-ca", str(ca_file),
                     "--org-name", "江西省公安厅（误）") == (0, None)
    again = ["--data", str(data), "--json", "init", "--if-missing", "--registry", "https://127.0.0.1:5000",
             "--division", "360000", "--endpoint", "https://127.0.0.1:8643"]

    result = CliRunner().invoke(cli, [*again, "--org-name", "江西省公安厅", "--org-code", "11360000MB1234567X",
                                      "--system-name", "江西移动警务即时通信"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["changed"] == {"org_name": "江西省公安厅", "org_code": "11360000MB1234567X",
                                                    "system_name": "江西移动警务即时通信"}
    assert (stored(data)["listen"], stored(data)["registry_ca_file"]) == ("127.0.0.1:9443", str(ca_file))
    information = Node(data).information()
    assert (information["org_name"], information["system_name"]) == ("江西省公安厅", "江西移动警务即时通信")
    assert CliRunner().invoke(cli, again).output == ""  # nothing given differs: nothing changes
    assert stored(data)["org_name"] == "江西省公安厅"
