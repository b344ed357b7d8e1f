"""Where mail for a domain goes: the configured next hop, else its MX records.

RFC 5321 section 5.1: MX records in preference order; none at all means the
domain itself (the implicit MX); a null MX (RFC 7505) means the domain takes no
mail. DNS answers that may change (timeouts, server failures) are temporary;
a domain that does not exist is permanent.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

SMTP_PORT = 25


@dataclass(frozen=True)
class NextHop:
    host: str
    port: int


class NextHopError(Exception):
    def __init__(self, kind: str, status: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.status = status


def parse_next_hop(text: str) -> NextHop:
    """`host`, `host:port` or `[v6]:port`; raises ValueError with a reason."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not host or any(ch.isspace() for ch in host):
        raise ValueError("a next hop is HOST or HOST:PORT")
    port = int(port_text) if port_text else SMTP_PORT
    if port_text and not port_text.isdigit() or not 0 < port < 65536:
        raise ValueError("the port of a next hop must be between 1 and 65535")
    return NextHop(host, port)


async def resolve(domain: str, configured: str | None) -> list[NextHop]:
    if configured:
        try:
            return [parse_next_hop(configured)]
        except ValueError as error:
            raise NextHopError("temporary", "4.3.5",
                               f"bad next hop setting: {error}") from error
    return await _mx(domain)


async def _mx(domain: str) -> list[NextHop]:
    try:
        answer = await dns.asyncresolver.resolve(domain, dns.rdatatype.MX, lifetime=15)
    except dns.resolver.NXDOMAIN:
        raise NextHopError("permanent", "5.1.2", f"the domain {domain} does not exist") from None
    except dns.resolver.NoAnswer:
        return [NextHop(domain, SMTP_PORT)]
    except dns.exception.DNSException as error:
        raise NextHopError("temporary", "4.4.3",
                           f"DNS lookup for {domain} failed: {type(error).__name__}") from error
    records = sorted(answer, key=lambda r: r.preference)
    hosts = [str(r.exchange).rstrip(".") for r in records]
    if hosts == [""]:
        raise NextHopError("permanent", "5.1.10", f"{domain} accepts no mail (null MX)")
    return [NextHop(host, SMTP_PORT) for host in hosts if host]
