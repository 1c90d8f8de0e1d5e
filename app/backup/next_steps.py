"""The commands of the steps after a SQLite restore (operations: Backup), read from the database it replaced.

The restored database numbers its routing versions and CRLs on from the backup's, below what nodes may hold, and
has lost what was recorded and revoked since the backup. The database it replaced (kept aside) still holds both:
its numbers, the node certificates issued since, and the revocations and suspensions since. Named only the
numbers, the steps' commands signed a CRL (or a root CRL) above the nodes' one that no longer listed a certificate
(or the intermediate) revoked since: nodes trusted its key again. So they name, in the steps' order, what to put
back on record and revoke again before the CRLs are signed above the nodes' numbers.
"""

from __future__ import annotations

import shlex
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from app.pki.models import INTERMEDIATE_CRL, ROOT_CRL

NODE_REVOCATION_REASON = "cessation_of_operation"  # what revoking a node gives its certificates (pki lifecycle)


@dataclass(frozen=True)
class Numbers:
    """A database's routing table's newest version and its CRLs' numbers. None: none there, or a table it does
    not have."""

    route_version: int | None
    crl: int | None
    root_crl: int | None

    def as_dict(self) -> dict:
        return {"route_version": self.route_version, "crl": self.crl, "root_crl": self.root_crl}


@dataclass(frozen=True)
class Lost:
    """What the replaced database holds that the backup lacks, for steps 2 and 3."""

    to_record: tuple[tuple[str, str | None], ...] = ()  # node certificates issued since: (serial, node id)
    # Certificates revoked since (serial, reason): first those of nodes the backup does not know (step 2).
    certificate_revocations: tuple[tuple[str, str], ...] = ()
    # (node id, "revoked", "suspended" or "active", reason): "active" is a node the backup holds suspended.
    node_changes: tuple[tuple[str, str, str], ...] = ()
    intermediate_revocations: tuple[tuple[str, str], ...] = ()  # (serial, reason)
    # Enrollment tokens revoked or used since, live in the backup: the restore revokes them itself (`apply`).
    spent_tokens: tuple[int, ...] = ()
    # The PEM of each certificate to record (serial, PEM): `apply` writes them out beside the file kept aside, as
    # a node's tls/node.pem holds only its newest, and a node gone holds none.
    pems: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict:
        return {"certificates_to_record": [{"serial": serial, "node_id": node} for serial, node in self.to_record],
                "certificate_revocations": [{"serial": serial, "reason": reason}
                                            for serial, reason in self.certificate_revocations],
                "node_changes": [{"node_id": node, "status": status, "reason": reason}
                                 for node, status, reason in self.node_changes],
                "intermediate_revocations": [{"serial": serial, "reason": reason}
                                             for serial, reason in self.intermediate_revocations],
                "enrollment_tokens_spent": list(self.spent_tokens)}


@dataclass(frozen=True)
class NextSteps:
    replaced: Numbers
    backup: Numbers
    lost: Lost

    def commands(self, certificates: Path | None = None, root_key_offline: bool = False) -> list[str]:
        """The steps' commands in their order. A number is signed or published above only when the replaced
        database went past the backup's: otherwise nodes hold none above what the restored one numbers on from
        (unless the replaced database was itself restored: a node's higher number wins, as the steps say).
        NAME is who acts. `certificates`: the directory the restore wrote the certificates to record to
        (`<serial>.pem`); without one, FILE is the certificate the comment names by its serial. With the root
        key offline (`flask ca root-offline`, as operations.md advises), the commands that sign with it name
        ROOT_KEY, the exported key: without `--root-key` they are refused (`root_offline`)."""
        replaced, backup, lost = self.replaced, self.backup, self.lost
        root_key = " --root-key ROOT_KEY" if root_key_offline else ""
        exported = "  # ROOT_KEY: the root key exported by flask ca root-offline" if root_key_offline else ""
        found = []
        if _past(replaced.route_version, backup.route_version):
            found.append(f"flask routing publish --above {replaced.route_version}")
        for serial, node in lost.to_record:
            if certificates is not None:
                written = shlex.quote(str(certificates / f"{serial}.pem"))
                found.append(f"flask ca record {written}  # node {node or 'none'}")
            else:
                found.append(f"flask ca record FILE  # serial {serial}, node {node or 'none'}")
        for serial, reason in lost.certificate_revocations:
            found.append(f"flask ca revoke {serial} --reason {reason} --user NAME")
        for node, status, reason in lost.node_changes:
            verb = {"revoked": "revoke", "suspended": "suspend", "active": "resume"}[status]
            found.append(f"flask nodes {verb} {node} --reason {shlex.quote(reason)} --user NAME")
        for _, reason in lost.intermediate_revocations:  # it signs the root CRL above the nodes' one
            found.append(f"flask ca revoke-intermediate --reason {reason} --above {replaced.root_crl or 0}{root_key} "
                         f"--user NAME{exported}")
        if _past(replaced.crl, backup.crl):
            found.append(f"flask ca crl --regenerate --above {replaced.crl}")
        if _past(replaced.root_crl, backup.root_crl) and not lost.intermediate_revocations:
            found.append(f"flask ca root-crl --above {replaced.root_crl}{root_key}{exported}")
        return found


def _past(replaced: int | None, backup: int | None) -> bool:
    return replaced is not None and replaced > (backup or 0)


def read(replaced: Path, backup: Path) -> NextSteps:
    """The numbers of both databases, and what the replaced one holds that the backup lacks; each part it cannot
    read (an older schema, a damaged file) is left out."""
    try:
        connection = sqlite3.connect(f"{replaced.as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return NextSteps(Numbers(None, None, None), _numbers_of(backup), Lost())
    try:
        numbers = _numbers(connection, "main")
        try:
            connection.execute("ATTACH DATABASE ? AS backup", (f"{backup.as_uri()}?mode=ro",))
        except sqlite3.DatabaseError:
            return NextSteps(numbers, Numbers(None, None, None), Lost())
        return NextSteps(numbers, _numbers(connection, "backup"), _lost(connection))
    finally:
        connection.close()


def _numbers_of(path: Path) -> Numbers:
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return Numbers(None, None, None)
    try:
        return _numbers(connection, "main")
    finally:
        connection.close()


def _numbers(connection: sqlite3.Connection, schema: str) -> Numbers:
    queries = (f"SELECT max(version) FROM {schema}.route_versions",
               f"SELECT crl_number FROM {schema}.crl_state WHERE id = {INTERMEDIATE_CRL}",
               f"SELECT crl_number FROM {schema}.crl_state WHERE id = {ROOT_CRL}")
    found = []
    for query in queries:
        row = _rows(connection, query)[:1]
        found.append(row[0][0] if row and isinstance(row[0][0], int) else None)
    return Numbers(*found)


def _rows(connection: sqlite3.Connection, query: str) -> list[tuple]:
    try:
        return connection.execute(query).fetchall()
    except sqlite3.DatabaseError:  # a table or column an older schema lacks, a damaged page
        return []


def _lost(connection: sqlite3.Connection) -> Lost:
    backup_nodes = {row[0] for row in _rows(connection, "SELECT node_id FROM backup.nodes")}
    issued_since = _rows(connection, """
        SELECT c.serial, c.node_id, c.pem FROM main.certificates c
        WHERE c.kind = 'node' AND NOT EXISTS (SELECT 1 FROM backup.certificates b WHERE b.serial = c.serial)
        ORDER BY c.issued_at, c.serial""")
    to_record = tuple((serial, node) for serial, node, _ in issued_since)
    revoked_there = {serial: reason for serial, reason in _rows(connection, """
        SELECT c.serial, c.revocation_reason FROM main.certificates c
        LEFT JOIN backup.certificates b ON b.serial = c.serial
        WHERE c.revoked_at IS NOT NULL AND b.revoked_at IS NULL ORDER BY c.revoked_at, c.serial""")}
    node_changes = tuple((node, status, reason or "restored") for node, status, reason in _rows(connection, """
        SELECT n.node_id, n.status, n.status_reason FROM main.nodes n JOIN backup.nodes b ON b.node_id = n.node_id
        WHERE (n.status IN ('revoked', 'suspended') OR (n.status = 'active' AND b.status = 'suspended'))
          AND n.status <> b.status AND b.status <> 'revoked'
        ORDER BY n.status_changed_at, n.node_id"""))
    # Step 2: a recorded certificate of a node the restored registry does not know is filed under no node, and
    # revoked (the node is admitted again where it is wanted, under a new id).
    orphans = [(serial, revoked_there.pop(serial, NODE_REVOCATION_REASON))
               for serial, node in to_record if node not in backup_nodes]
    # Revoking a node revokes its certificates as this reason: not twice.
    nodes_revoked = {node for node, status, _ in node_changes if status == "revoked"}
    of_node = dict(_rows(connection, "SELECT serial, node_id FROM main.certificates WHERE revoked_at IS NOT NULL"))
    again = [(serial, reason or "unspecified") for serial, reason in revoked_there.items()
             if not (reason == NODE_REVOCATION_REASON and of_node.get(serial) in nodes_revoked)]
    in_backup = {row[0] for row in _rows(connection, "SELECT serial FROM backup.revoked_intermediates")}
    intermediates = tuple((serial, reason) for serial, reason in _rows(
        connection, "SELECT serial, reason FROM main.revoked_intermediates ORDER BY revoked_at")
        if serial not in in_backup)
    spent = tuple(row[0] for row in _rows(connection, """
        SELECT t.id FROM main.enrollment_tokens t JOIN backup.enrollment_tokens b ON b.id = t.id
        WHERE (t.revoked_at IS NOT NULL OR t.used_at IS NOT NULL) AND b.revoked_at IS NULL AND b.used_at IS NULL
        ORDER BY t.id"""))
    return Lost(to_record=to_record, certificate_revocations=tuple(orphans + again), node_changes=node_changes,
                intermediate_revocations=intermediates, spent_tokens=spent,
                pems=tuple((serial, pem) for serial, _, pem in issued_since))
