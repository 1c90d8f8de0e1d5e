"""Every `flask` command's text arguments are UTF-8, or the command does not run; numbers are ASCII digits.

Python decodes argv with surrogateescape: bytes that are not UTF-8 (a name typed in GBK, a file name
from another system) reach a command as lone surrogates, which no database stores and no page shows.
"""

from __future__ import annotations

import functools
import os
import re

import click


def _undecodable(value) -> bool:
    values = value if isinstance(value, tuple | list) else (value,)
    # A path too: its name is printed, and may be sent (a file's name travels with it)
    return any(isinstance(item, str | os.PathLike) and any("\ud800" <= ch <= "\udfff" for ch in os.fspath(item))
               for item in values)


def _checked(callback):
    @functools.wraps(callback)
    def run(*args, **kwargs):
        for name, value in kwargs.items():
            if _undecodable(value):
                raise click.BadParameter("is not UTF-8 text.", param_hint=f"'{name}'")
        return callback(*args, **kwargs)

    run.checks_utf8 = True
    return run


def require_utf8(group: click.Group) -> None:
    """Wrap each command of `group`, and of its subgroups, once (the flask commands, and the reference node's
    `python -m app.appnode`)."""
    if group.callback is not None and not getattr(group.callback, "checks_utf8", False):
        group.callback = _checked(group.callback)  # a group's own options (the reference node's --data)
    for command in group.commands.values():
        if isinstance(command, click.Group):
            require_utf8(command)
        elif command.callback is not None and not getattr(command.callback, "checks_utf8", False):
            command.callback = _checked(command.callback)


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
