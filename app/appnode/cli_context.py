"""What every command of `python -m app.appnode` is handed: the data directory, `--json`, and the node,
opened on first use. A module of its own so that cli_messaging.py, which cli.py imports, need not import cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from app.appnode.config import NodeConfig
from app.appnode.node import Node


class Context:
    def __init__(self, data: Path, as_json: bool):
        self.data, self.as_json = data, as_json
        self._node: Node | None = None

    @property
    def node(self) -> Node:
        if self._node is None:
            if not (self.data / NodeConfig.FILE).exists():
                raise click.ClickException(f"{self.data} holds no node: run `init` first")
            self._node = Node(self.data)
        return self._node

    def out(self, document, text: str) -> None:
        """`document` as JSON with --json, else `text`, the same answer in lines for a person."""
        click.echo(json.dumps(document, ensure_ascii=False, default=str) if self.as_json else text)


pass_ctx = click.make_pass_decorator(Context)
