"""The `beepmail` command line: one module per noun, thin over the store.

Every command parses its arguments, calls the functions the server uses, and
writes an audit event in the same transaction as each change.
"""
