"""The IMAP4rev1 server (RFC 3501): parsing without I/O, the connection loop, session
state, command handlers, and the renderers of message data.
"""
