"""Which recipients and senders a gateway accepts, decided from the domain table.

Pure functions over a snapshot of the `domains` rows: no database, no network.
A recipient's domain is matched against the rules after normalisation (see
`address.normalise_domain`); the most specific rule decides, so an explicit
`deny` of `x.gov.example` overrides an allowed `*.gov.example`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from beep_mail.policy.address import Address, find_rule


class DomainPolicy(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def allowed(self) -> bool: ...
    @property
    def next_hop(self) -> str | None: ...
    @property
    def tls(self) -> str: ...
    @property
    def encryption(self) -> str: ...


class Route(enum.Enum):
    LOCAL = "local"    # a domain this gateway serves: the user must exist
    PEER = "remote"    # an approved correspondent: deliver to its next hop
    REFUSED = "refused"


@dataclass(frozen=True)
class Decision:
    route: Route
    rule: DomainPolicy | None


class DomainTable:
    """A snapshot of the domain rows, indexed for matching."""

    def __init__(self, rows: Iterable[DomainPolicy]) -> None:
        self.rows: Mapping[str, DomainPolicy] = {row.name: row for row in rows}

    def decide(self, domain: str) -> Decision:
        name = find_rule(domain, self.rows)
        if name is None:
            return Decision(Route.REFUSED, None)
        rule = self.rows[name]
        if rule.role == "local":
            # Wildcards never make a domain local: only an exact row does.
            if name != domain:
                return Decision(Route.REFUSED, None)
            return Decision(Route.LOCAL, rule)
        if not rule.allowed:
            return Decision(Route.REFUSED, rule)
        return Decision(Route.PEER, rule)

    def recipient(self, address: Address) -> Decision:
        return self.decide(address.domain)

    def is_local(self, domain: str) -> bool:
        return self.decide(domain).route is Route.LOCAL

    def is_peer(self, domain: str) -> bool:
        return self.decide(domain).route is Route.PEER

    def local_domains(self) -> list[str]:
        return [row.name for row in self.rows.values() if row.role == "local"]
