"""`init --if-missing` run again (as `make appnode` does) with corrected values."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from app.appnode.caller_limit import DEFAULT_PER_CALLER, DEFAULT_THREADS, per_caller_limit
from app.appnode.cli import cli
from app.appnode.node import Node
from app.appnode.outbox import DELIVERY_PARALLELISM
from app.appnode.store import put_setting


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
                                         "registry_problem": None}


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

    for name in ("max_read_states_per_peer", "max_presence_per_peer"):
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
