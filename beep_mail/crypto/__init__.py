"""Cryptography behind small interfaces: passwords, TLS, and (next) OpenPGP.

Nothing here touches the network or the database.
"""
