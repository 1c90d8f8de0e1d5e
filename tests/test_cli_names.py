"""Our `flask <feature>` groups must be reachable through the real `flask` executable.

`app.test_cli_runner()` invokes `app.cli` directly, so it cannot see that FlaskGroup looks up its own
built-in and plugin commands first: a group named like one of them (`flask routes` was) is shadowed.
"""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import FlaskGroup, ScriptInfo


def flask_own_command_names() -> set[str]:
    """What `flask` itself offers (built-ins and installed plugins), asked of Flask over a bare app."""
    bare = ScriptInfo(create_app=lambda: Flask("bare"))
    group = FlaskGroup(create_app=bare.create_app)
    return set(group.list_commands(click.Context(group, obj=bare)))


def test_flask_reports_its_own_commands():
    assert {"run", "shell", "routes"} <= flask_own_command_names()


def test_no_app_command_is_shadowed_by_a_flask_command(app):
    shadowed = set(app.cli.list_commands(click.Context(app.cli))) & flask_own_command_names()
    assert not shadowed, f"`flask {' / '.join(sorted(shadowed))}` would run Flask's command, not ours"
