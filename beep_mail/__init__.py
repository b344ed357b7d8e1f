"""beep-mail: a store-and-forward mail gateway for official correspondence.

Mail to approved government domains leaves encrypted and signed; mail to any
other domain is refused at the door; nothing is lost once the gateway has
answered 250. See docs/architecture.md for the map.
"""

__version__ = "0.1.0"
