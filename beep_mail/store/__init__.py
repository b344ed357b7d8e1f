"""The store: SQLModel tables and the functions that read and write them.

One engine, chosen by URL: SQLite (WAL, synchronous=FULL) on one machine,
PostgreSQL when several gateway processes share one database. Protocol code
never builds SQL; it calls the functions of this package, which never format a
reply.
"""
