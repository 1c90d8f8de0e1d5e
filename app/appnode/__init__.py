"""The application node side of GA/T 1988-2022 Appendix A (the node-to-node wire protocol).

`protocol` holds the JSON schemas of A.3-A.15, the A.8 envelope helpers and the protocol's error codes;
`filetypes` checks what file bytes really are. Both are plain Python (no Flask, no database), so the
reference application node and the management node's tests import the same contract. The prose is
docs/protocol.md; its examples are validated against the schemas by tests/test_appnode_protocol.py.
"""
