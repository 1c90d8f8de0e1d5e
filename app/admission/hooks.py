"""Where the CA and the routing table plug into admission.

Admission calls these inside its own transaction, so whatever a hook writes (a certificate, a new
route version) commits or rolls back together with the approval or the status change, and a hook
that raises refuses the action. Features register their functions in their `init_app`.
"""

from __future__ import annotations

from collections.abc import Callable

# (node, application) after a node is admitted: issue its certificate, add it to the routing table.
node_admitted: list[Callable] = []
# (node, old_status, new_status, reason) after suspend / resume / revoke.
node_status_changed: list[Callable] = []
# (node, application, changes: dict[field, (old, new)]) after an approved change request.
node_changed: list[Callable] = []


def run(hooks: list[Callable], *args) -> None:
    for hook in hooks:
        hook(*args)
