"""How the console's gunicorn is configured (gunicorn.conf.py), read back from gunicorn itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gunicorn_settings(**environment: str) -> dict[str, str]:
    """`gunicorn --print-config` with the project's config file, as `make run` starts it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MPIM_")}
    output = subprocess.run([str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py",
                             "--print-config", "wsgi:app"], cwd=ROOT, env={**env, **environment},
                            capture_output=True, text=True, check=True, timeout=120).stdout
    return {name.strip(): value.strip() for name, _, value in (line.partition("=") for line in output.splitlines())}


def test_no_control_socket_shared_between_instances_unless_asked(tmp_path):
    """gunicorn 27 puts every instance's control socket at one path per user: a second instance took
    the first one's over, and stopping either removed it."""
    assert gunicorn_settings()["control_socket_disable"] == "True"
    path = tmp_path / "console.ctl"
    asked = gunicorn_settings(MPIM_CONTROL_SOCKET=str(path))
    assert asked["control_socket_disable"] == "False" and asked["control_socket"] == str(path)


def test_bind_and_workers_come_from_the_environment():
    settings = gunicorn_settings(MPIM_BIND="127.0.0.1:5601", MPIM_WORKERS="3")
    assert settings["bind"] == "['127.0.0.1:5601']" and settings["workers"] == "3"


def test_a_worker_count_that_is_no_whole_number_stops_the_start_naming_it():
    """MPIM_WORKERS=abc stopped gunicorn with a bare "invalid literal for int()", naming no variable, and
    MPIM_WORKERS=0 started."""
    for name, value, said in (("MPIM_WORKERS", "abc", "MPIM_WORKERS must be a whole number, not 'abc'"),
                              ("MPIM_WORKERS", "0", "MPIM_WORKERS must be 1 or more, not '0'"),
                              ("MPIM_THREADS", "0", "MPIM_THREADS must be 1 or more, not '0'"),
                              ("MPIM_WORKER_TIMEOUT", "x", "MPIM_WORKER_TIMEOUT must be a whole number, not 'x'")):
        env = {key: value for key, value in os.environ.items() if not key.startswith("MPIM_")}
        result = subprocess.run([str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py",
                                 "--print-config", "wsgi:app"], cwd=ROOT, env={**env, name: value},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and said in result.stderr, (name, value, result.stderr[-500:])


def test_the_gunicorn_settings_import_nothing_of_the_app_in_the_master():
    """gunicorn.conf.py imported app.config through the `app` package: the master then held app, app.config and
    app.extensions (Flask, SQLAlchemy) before any fork, and workers a HUP reload started after a deploy kept
    those old modules beside the new code of the rest."""
    probe = ("import runpy, sys; runpy.run_path('gunicorn.conf.py'); "
             "print(sorted(name for name in sys.modules if name == 'app' or name.startswith(('app.', 'flask'))))")
    env = {key: value for key, value in os.environ.items() if not key.startswith("MPIM_")}
    output = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                            check=True, timeout=60).stdout
    assert output.strip() == "[]"
