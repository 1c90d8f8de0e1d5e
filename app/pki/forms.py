"""Console forms of the CA."""

from __future__ import annotations

from app.admission.forms import CSRInput
from app.console.forms import ConsoleForm


class RenewForm(CSRInput, ConsoleForm):
    """A ministry admin renews a node's certificate at any time, from the node's new CSR."""
