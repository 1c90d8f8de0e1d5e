"""`flask applications submit` and `flask nodes change`: the console's application form (SPEC §3 step 2) and
change request form (the same A.1 information, through the same review), as commands (SPEC §4: a CLI twin each).

Each builds the A.1 document the console form builds (`information.document_from_fields`) and calls the service the form
calls, `applications.submit_by_user` or `applications.submit_change`: the same checks, scope and audit record.
A refusal names the option to correct (`--contact-phone is not a phone number.`) where the console names its field.
"""

from __future__ import annotations

import re

import click
from flask_babel import lazy_gettext as _l

from app.admission import applications, nodes
from app.admission.cli import application_dict, emit, json_option, run, user_option
from app.admission.information import FLAT_FIELDS, document_from_fields
from app.admission.models import CAPABILITIES
from app.auth import service as users

# The document's keys → the options that set them, so that a refusal names what the operator typed.
OPTION_NAMES = {"division_code": "--division", "org_name": "--org-name", "system_name": "--system-name",
                "vendor": "--vendor", "endpoint": "--endpoint", "contact.name": "--contact-name",
                "contact.phone": "--contact-phone", "contact.email": "--contact-email"}
CAPABILITY_SEPARATORS = re.compile(r"[,，、\s]+")
CAPABILITIES_HELP = "Capabilities between commas, of: " + ", ".join(CAPABILITIES) + "."
CSR_HELP = "The node's CSR file, PEM or DER (- reads standard input)."


def typed_capabilities(text: str) -> list[str]:
    """The console's ticked boxes, typed between commas; an unknown name is the service's to refuse, by name."""
    return [name for name in CAPABILITY_SEPARATORS.split(text) if name]


def csr_reader(csr_file):
    """`read_csr` for the service: the file's CSR as PEM text, read as the console reads an upload (64 KB and
    one byte: a larger file is refused as too large). A file given that holds nothing is refused: the console's
    empty upload means "no new CSR", but an operator who names a file means one."""
    from app.pki.csr_policy import MAX_PEM_BYTES, InvalidCSR, pem_from_file

    if csr_file is None:
        return lambda: None
    data = csr_file.read(MAX_PEM_BYTES + 1)

    def read() -> str:
        if not data.strip():
            raise InvalidCSR(_l("The CSR file %(name)s is empty.", name=click.format_filename(csr_file.name)))
        return pem_from_file(data)

    return read


def information_options(required: bool):
    """The application form's fields but the division code, as options (`ApplicationForm`): each required for an
    application, as the form's DataRequired; for a change request, what is not given stays the node's."""
    options = (("--org-name", "Organisation."), ("--system-name", "System name."), ("--vendor", "Vendor."),
               ("--endpoint", "Endpoint: an https URL."), ("--contact-name", "Contact name."),
               ("--contact-phone", "Contact phone."), ("--contact-email", "Contact e-mail."),
               ("--capabilities", CAPABILITIES_HELP))

    def add(command):
        for name, text in reversed(options):
            command = click.option(name, required=required, help=text)(command)
        return command

    return add


@click.command("submit")
@click.option("--division", required=True,
              help="The node's division code (a provincial admin: one within their divisions).")
@information_options(required=True)
@click.option("--csr", "csr_file", type=click.File("rb"), required=True, help=CSR_HELP)
@user_option
@json_option
def applications_submit(division, csr_file, username, as_json, **fields):
    """Submit an application for a new node, as the console's application form (admins; a ministry admin
    reviews it)."""
    read_csr = csr_reader(csr_file)
    document = document_from_fields(division.strip(), fields, typed_capabilities(fields["capabilities"]))
    application = run(lambda: applications.submit_by_user(
        document, by=users.acting_user(username), names=OPTION_NAMES, read_csr=read_csr), as_json)
    emit(application_dict(application), as_json,
         f"application {application.id} submitted; a ministry admin will review it")


@click.command("change")
@click.argument("node_id")
@information_options(required=False)
@click.option("--csr", "csr_file", type=click.File("rb"), help=CSR_HELP + " Needed for a new endpoint host.")
@user_option
@json_option
def nodes_change(node_id, csr_file, username, as_json, **given):
    """Request a change of a node's information, as the console's change form: what is not given stays (admins of
    its division; a ministry admin reviews it)."""
    if csr_file is None and all(value is None for value in given.values()):
        raise click.UsageError("nothing to change: give --endpoint, --org-name, --system-name, --vendor, "
                               "--contact-name, --contact-phone, --contact-email, --capabilities or --csr.")
    read_csr = csr_reader(csr_file)

    def submit():
        user = users.acting_user(username)
        node = nodes.get_visible(node_id, user)  # as the console finds it: one outside their divisions is not found
        current = {**{name: getattr(node, name) for name in FLAT_FIELDS}, "capabilities": ",".join(node.capabilities)}
        fields = {name: current[name] if value is None else value for name, value in given.items()}
        document = document_from_fields(node.division_code, fields, typed_capabilities(fields["capabilities"]))
        application = applications.submit_change(node, document, by=user, names=OPTION_NAMES, read_csr=read_csr)
        changed = sorted(applications.requested_changes(application, node)) + (["csr"] if application.csr_pem else [])
        return application, changed

    application, changed = run(submit, as_json)
    emit({**application_dict(application), "changed": changed}, as_json,
         f"change request {application.id} for {application.node_id} ({', '.join(changed)}) submitted for review")
