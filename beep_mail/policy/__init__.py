"""Pure decisions: is this address allowed, must it be encrypted, which key.

Everything here is a function of its arguments and the configuration it is given;
nothing in this package opens a socket or a database session, so each decision can
be tested as a table of inputs and expected answers, and the SMTP and IMAP layers
can call it on the hot path without waiting.
"""
