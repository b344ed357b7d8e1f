"""The records archive: every accepted message, sealed to the records key, chained.

- `journal`: sealing a message to the records key and appending its entry in
  the transaction that accepts the message.
- `checkpoint`: the entry count and head hash, signed with a domain key, for
  the records office to keep off the gateway.
- `verify`: recomputing the chain, checking checkpoints and exports.
- `retention`: legal hold and purging expired content, leaving tombstones.
- `search` and `export`: what clerks read, metadata and (with the records
  secret key, on their own machine) the messages themselves.

The gateway holds only the public half of the records key: it can write the
archive but not read it back.
"""
