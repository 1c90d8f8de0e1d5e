"""What every command of `python -m app.appnode` is handed: the data directory, `--json`, and the node,
opened on first use; and how a refusal is reported. A module of its own so that cli_messaging.py, which cli.py
imports, need not import cli.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import click

from app.appnode.cli_lines import put_off_line
from app.appnode.config import NodeConfig
from app.appnode.node import Node
from app.appnode.outbox import retry_after_read
from app.appnode.registry import CannotWrite, RegistryError
from app.errors import DomainError

# sysexits.h EX_TEMPFAIL, "try again later": the management node put the request off and said for how long.
# Apart from 1 (the CLI's refusal), 2 (a refusal that stands) and NOT_ALL_DONE.
TRY_LATER = 75
# The command did what it could and printed its result, which is short of what was asked: a message some nodes
# will not get, a pull that leaves the node on an expired routing table. A script must not take it for success.
NOT_ALL_DONE = 3


class Refused(click.ClickException):
    """The CLI's own refusal, before any `Node` rule (exit 1, as click's); `code` names it under --json."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


class Context:
    def __init__(self, data: Path, as_json: bool):
        self.data, self.as_json = data, as_json
        self._node: Node | None = None

    @property
    def node(self) -> Node:
        if self._node is None:
            if not (self.data / NodeConfig.FILE).exists():
                raise Refused(f"{self.data} holds no node: run `init` first", code="no_node")
            self._node = Node(self.data)
        return self._node

    def out(self, document, text: str) -> None:
        """`document` as JSON with --json, else `text`, the same answer in lines for a person."""
        click.echo(json.dumps(document, ensure_ascii=False, default=str) if self.as_json else text)


pass_ctx = click.make_pass_decorator(Context)


@contextmanager
def writing(path: Path):
    """A command writing the file its operator named (`--out`): an OSError about it, or about a temporary file
    beside it (a full disk, no permission, a name too long), is the refusal cannot_write naming the path, where it
    was a traceback."""
    try:
        yield
    except OSError as error:
        if error.filename is not None and Path(os.fsdecode(error.filename)).parent != path.parent:
            raise  # another file (the node's own): no fault of the path given
        raise CannotWrite(f"cannot write {path}: {error.strerror or error}") from None


@contextmanager
def ended_cleanly():
    """SIGTERM (a service stopping, `kill`) and SIGHUP (the terminal closed) end a command that writes part files
    (`download`, `send-file`) as SIGINT does, by an exception, so that what it was writing is removed on the way
    out, where the process ended at once and left up to 1 GiB behind. It exits with status 128 + the signal's
    number, the status a shell shows for a command a signal ended (a parent's waitpid sees an exit, not the
    signal). A signal ignored (`nohup`) stays ignored. Used as a decorator too."""
    def end(number, _frame):
        raise SystemExit(128 + number)

    previous = {number: signal.signal(number, end) for number in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(number) is signal.SIG_DFL}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class PutOff(DomainError):
    """The management node put a request off and said when to ask again (503 or 429 with Retry-After: its CA
    key cannot be opened, its database is away, a proxy limits the rate): the line says how long to wait, and
    the command exits TRY_LATER, so that a script can tell it from a refusal that stands. `seconds` is the
    Retry-After as the node loop reads it (seconds or an HTTP-date, at most an hour), None when it is neither
    (a proxy's "soon"): the wait is then unknown, not none."""

    def __init__(self, error: RegistryError, seconds: int | None):
        super().__init__(put_off_line(error.what, error.code, error.status, seconds), code=error.code,
                         status=error.status)
        self.seconds = seconds

    def to_dict(self) -> dict:
        document = super().to_dict()
        document["error"]["retry_after"] = self.seconds
        return document


def put_off(error: Exception) -> PutOff | None:
    """`error` as a PutOff when the management node said to wait; None for any other refusal."""
    if isinstance(error, RegistryError) and error.retry_after is not None and error.status in (429, 503):
        seconds = retry_after_read(error.retry_after)
        return PutOff(error, None if seconds is None else math.ceil(seconds))
    return None


def error_document(error: DomainError | click.ClickException) -> dict:
    """A refusal as --json prints it: the management node's API shape, `{"error": {"code", "message"}}`, with
    `retry_after` (seconds, null when its Retry-After could not be read) for a request put off."""
    if isinstance(error, DomainError):
        return error.to_dict()
    code = getattr(error, "code", None) or ("usage_error" if isinstance(error, click.UsageError) else "refused")
    return {"error": {"code": code, "message": error.format_message()}}


def exit_code(error: DomainError | click.ClickException) -> int:
    """TRY_LATER for a request put off, 2 for a domain refusal or misuse, 1 for the CLI's own refusal."""
    if isinstance(error, PutOff):
        return TRY_LATER
    return 2 if isinstance(error, DomainError) else error.exit_code


class Commands(click.Group):
    """The root group: under --json a refusal is one JSON line on stderr (stdout carries only results), with
    the exit code the text would have (`exit_code`). A request the management node put off is reported as a
    PutOff, with the wait, either way."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (DomainError, click.ClickException) as error:
            later = put_off(error)
            if not ctx.params.get("as_json"):
                if later is not None:
                    raise later from error  # main() prints it as a line for a person
                raise
            refusal = later or error
            click.echo(json.dumps(error_document(refusal), ensure_ascii=False), err=True)
            raise SystemExit(exit_code(refusal)) from None
