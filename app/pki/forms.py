"""Console forms of the CA."""

from __future__ import annotations

from flask_wtf import FlaskForm

from app.admission.forms import CSRInput


class RenewForm(CSRInput, FlaskForm):
    """A ministry admin renews a node's certificate at any time, from the node's new CSR."""
