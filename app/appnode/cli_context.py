"""What every command of `python -m app.appnode` is handed: the data directory, `--json`, and the node,
opened on first use; and how a refusal is reported. A module of its own so that cli_messaging.py, which cli.py
imports, need not import cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from app.appnode.config import NodeConfig
from app.appnode.node import Node
from app.errors import DomainError


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


def error_document(error: DomainError | click.ClickException) -> dict:
    """A refusal as --json prints it: the management node's API shape, `{"error": {"code", "message"}}`."""
    if isinstance(error, DomainError):
        return error.to_dict()
    code = getattr(error, "code", None) or ("usage_error" if isinstance(error, click.UsageError) else "refused")
    return {"error": {"code": code, "message": error.format_message()}}


class Commands(click.Group):
    """The root group: under --json a refusal is one JSON line on stderr (stdout carries only results), with
    the exit code the text would have (2 for a domain refusal or misuse, 1 for the CLI's own refusal)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (DomainError, click.ClickException) as error:
            if not ctx.params.get("as_json"):
                raise  # main() prints it as a line for a person
            click.echo(json.dumps(error_document(error), ensure_ascii=False), err=True)
            raise SystemExit(2 if isinstance(error, DomainError) else error.exit_code) from None
