"""The routing table (SPEC §5): the signed document the management node publishes and nodes verify.

`document` holds the wire shape (building, serialising, diffing, checking and signing a table);
`client` is what an application node runs to accept a pulled table in TUF's order of checks.
No Flask wiring lives here: the server side (versions, API, console) is built on top of `document`.
"""
