"""Every `flask` command's text arguments are UTF-8, or the command does not run; numbers are ASCII digits;
with --json, a usage error is the error object every other refusal prints.

Python decodes argv with surrogateescape: bytes that are not UTF-8 (a name typed in GBK, a file name
from another system) reach a command as lone surrogates, which no database stores and no page shows.
"""

from __future__ import annotations

import functools
import json
import os
import re

import click


def _undecodable(value) -> bool:
    values = value if isinstance(value, tuple | list) else (value,)
    # A path too: its name is printed, and may be sent (a file's name travels with it)
    return any(isinstance(item, str | os.PathLike) and any("\ud800" <= ch <= "\udfff" for ch in os.fspath(item))
               for item in values)


def usage_error_as_json(error: click.UsageError) -> None:
    """Exit 2 (click's code for a usage error) with `{"error": {"code": "usage_error", "message": …}}` on stderr:
    a script that asked for --json reads the error object, not click's "Usage: … Error: …" text."""
    click.echo(json.dumps({"error": {"code": "usage_error", "message": error.format_message()}},
                          ensure_ascii=False), err=True)
    raise SystemExit(2)


def _checked(callback):
    @functools.wraps(callback)
    def run(*args, **kwargs):
        for name, value in kwargs.items():
            if _undecodable(value):
                error = click.BadParameter("is not UTF-8 text.", param_hint=f"'{name}'")
                if kwargs.get("as_json"):
                    usage_error_as_json(error)
                raise error
        try:
            return callback(*args, **kwargs)
        except click.UsageError as error:  # one the command raises itself ("nothing to change")
            if kwargs.get("as_json"):
                usage_error_as_json(error)
            raise

    run.checks_utf8 = True
    return run


def _asks_for_json(command: click.Command, args: list[str]) -> bool:
    """Whether `args`, which click could not parse, hold the --json flag: not as the value of an option that
    takes one (`--name --json`), nor after `--`."""
    takes_value = {opt for param in command.params if isinstance(param, click.Option)
                   and not param.is_flag and not param.count for opt in param.opts}
    previous = None
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json" and previous not in takes_value:
            return True
        previous = arg
    return False


def _json_is_the_parents(error: click.UsageError, parent: click.Context | None) -> bool:
    """Whether `error` is --json refused after a command whose group takes it (`python -m app.appnode --json
    status`): the operator is told where it goes."""
    return (isinstance(error, click.NoSuchOption) and error.option_name == "--json" and parent is not None
            and any("--json" in param.opts for param in parent.command.params))


def _json_usage_errors(command: click.Command):
    """`command`'s `make_context`, where click parses its arguments and raises its usage errors (a missing
    argument, an unknown option, a value a type refuses), telling them as JSON when --json is among them."""
    make_context = command.make_context

    @functools.wraps(make_context)
    def make(info_name, args, parent=None, **extra):
        asked_json = _asks_for_json(command, args)
        try:
            return make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as error:
            if _json_is_the_parents(error, parent):
                error.message += " (put --json before the command)"
            if asked_json:
                usage_error_as_json(error)
            raise

    make.json_usage_errors = True
    return make


def require_utf8(group: click.Group) -> None:
    """Wrap each command of `group`, and of its subgroups, once (the flask commands, and the reference node's
    `python -m app.appnode`): the UTF-8 check, and usage errors as JSON under --json."""
    if group.callback is not None and not getattr(group.callback, "checks_utf8", False):
        group.callback = _checked(group.callback)  # a group's own options (the reference node's --data)
    for command in group.commands.values():
        if isinstance(command, click.Group):
            require_utf8(command)
            continue
        if command.callback is not None and not getattr(command.callback, "checks_utf8", False):
            command.callback = _checked(command.callback)
        if not getattr(command.make_context, "json_usage_errors", False):
            command.make_context = _json_usage_errors(command)  # type: ignore[method-assign]


class Digits(click.ParamType):
    """A whole number typed in ASCII digits, optionally within [low, high]. click's INT is int(), which reads
    fullwidth (１２) and Arabic-Indic (١٢) digits, a sign and surrounding blanks too."""

    name = "integer"

    def __init__(self, low: int | None = None, high: int | None = None):
        self.low, self.high = low, high

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value  # a default
        if not (value.isascii() and value.isdigit()):
            self.fail(f"{value!r} is not a whole number in ASCII digits.", param, ctx)
        number = int(value)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            self.fail(f"{number} is not in the range {self.low if self.low is not None else '…'} to "
                      f"{self.high if self.high is not None else '…'}.", param, ctx)
        return number


class Seconds(click.ParamType):
    """A finite number of seconds in ASCII within [low, high]. click's FLOAT is float(), which reads "nan" (every
    comparison with it is false, so a range check passes it), "inf" and "1e400"."""

    name = "seconds"

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, int | float):
            return float(value)  # a default
        if not (value.isascii() and re.fullmatch(r"[0-9]+(\.[0-9]+)?", value)):
            self.fail(f"{value!r} is not a number of seconds in ASCII digits.", param, ctx)
        seconds = float(value)
        if not self.low <= seconds <= self.high:
            self.fail(f"{value} is not in the range {self.low:g} to {self.high:g} seconds.", param, ctx)
        return seconds
