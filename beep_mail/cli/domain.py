"""`beepmail domain ...`: which peer domains mail may go to, and how.

A rule is an exact domain ("gov.example") or a wildcard over its sub-domains
("*.gov.example"), stored in the normalised form the SMTP server compares
recipients with. The most specific rule decides, so `deny` on one domain
overrides a wildcard that allows it. Local domains (set up by `init`) are not
changed here.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Annotated, Any

import typer

from beep_mail.cli.common import (
    CLIError,
    ConfigOption,
    JsonOption,
    actor,
    database,
    fields,
    load_settings,
    print_json,
    say,
    table,
    timestamps,
    transaction,
)
from beep_mail.policy.address import (
    AddressError,
    find_rule,
    normalise_domain,
    normalise_rule,
)
from beep_mail.store import accounts, audit
from beep_mail.store.accounts import DomainRecord
from beep_mail.store.engine import translated

app = typer.Typer(
    help="Peer domains: allow, deny, list, show.",
    no_args_is_help=True,
)


class TLSPolicy(str, enum.Enum):
    required = "required"
    opportunistic = "opportunistic"


class EncryptionPolicy(str, enum.Enum):
    required = "required"
    hold = "hold"
    none = "none"


DomainArgument = Annotated[
    str,
    typer.Argument(metavar="DOMAIN", help='A domain, or "*." and a domain.'),
]


def rule_name(text: str) -> str:
    return normalise_rule(text.strip())


def parse_next_hop(text: str) -> str:
    """HOST or HOST:PORT, normalised; IPv6 addresses go in brackets."""
    host, port = _split_host_port(text.strip())
    if port is not None and not (port.isdigit() and 0 < int(port) <= 65535):
        raise CLIError(f"next hop {text!r}: the port must be a number 1-65535")

    if host.startswith("["):
        try:
            name = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise CLIError(f"next hop {text!r}: not an IPv6 address") from None
    else:
        name = _host_name(host, text)
    return name if port is None else f"{name}:{int(port)}"


def _split_host_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        close = text.find("]")
        if close == -1:
            raise CLIError(f"next hop {text!r}: the [ is never closed")
        host, rest = text[: close + 1], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise CLIError(f"next hop {text!r}: expected :PORT after the address")
        return host, rest[1:] if rest else None
    if text.count(":") > 1:
        raise CLIError(
            f"next hop {text!r}: an IPv6 address goes in brackets: [2001:db8::1]:25"
        )
    host, sep, port = text.partition(":")
    return host, port if sep else None


def _host_name(host: str, text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return normalise_domain(host)
    except AddressError as error:
        raise CLIError(f"next hop {text!r}: {error}") from None


def domain_json(record: DomainRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "role": record.role,
        "allowed": record.allowed,
        "next_hop": record.next_hop,
        "tls": record.tls,
        "encryption": record.encryption,
        **timestamps("created_at", record.created_at),
        **timestamps("updated_at", record.updated_at),
    }


def _policy(record: DomainRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "role": record.role,
        "allowed": record.allowed,
        "next_hop": record.next_hop,
        "tls": record.tls,
        "encryption": record.encryption,
    }


@app.command()
def allow(
    domain_name: DomainArgument,
    next_hop: Annotated[
        str | None,
        typer.Option(
            "--next-hop",
            metavar="HOST:PORT",
            help="Deliver here instead of the domain's MX (port 25 if not given).",
        ),
    ] = None,
    tls: Annotated[
        TLSPolicy, typer.Option(help="required: a verified certificate.")
    ] = TLSPolicy.required,
    encryption: Annotated[
        EncryptionPolicy,
        typer.Option(help="required: refuse without a key; hold: queue until one."),
    ] = EncryptionPolicy.required,
    config_file: ConfigOption = None,
) -> None:
    """Allow mail to a domain (or to every sub-domain with "*.")."""
    settings = load_settings(config_file)
    name = rule_name(domain_name)
    hop = parse_next_hop(next_hop) if next_hop is not None else None

    with database(settings) as db, transaction(db) as connection:
        before = accounts.get_domain(connection, name)
        accounts.put_domain(
            connection,
            name,
            allowed=True,
            next_hop=hop,
            tls=tls.value,
            encryption=encryption.value,
        )
        audit.record(
            connection,
            actor(),
            "domain.allow",
            name,
            {
                "next_hop": hop,
                "tls": tls.value,
                "encryption": encryption.value,
                "previous": _policy(before),
            },
        )
    via = f" via {hop}" if hop else ""
    say(f"Allowed {name}{via}: TLS {tls.value}, encryption {encryption.value}.")


@app.command()
def deny(domain_name: DomainArgument, config_file: ConfigOption = None) -> None:
    """Refuse mail to a domain, even one a wildcard allows."""
    settings = load_settings(config_file)
    name = rule_name(domain_name)

    with database(settings) as db, transaction(db) as connection:
        before = accounts.get_domain(connection, name)
        accounts.put_domain(connection, name, allowed=False)
        audit.record(
            connection, actor(), "domain.deny", name, {"previous": _policy(before)}
        )
    say(f"Denied {name}.")


@app.command("list")
def list_(config_file: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List local domains and peer rules."""
    settings = load_settings(config_file)
    with database(settings) as db, translated():
        records = accounts.list_domains(db.engine)

    if as_json:
        print_json([domain_json(record) for record in records])
        return
    table(
        ["Domain", "Role", "Mail", "Next hop", "TLS", "Encryption"],
        [
            (
                r.name,
                r.role,
                "allowed" if r.allowed else "denied",
                r.next_hop,
                r.tls,
                r.encryption,
            )
            for r in records
        ],
        empty="No domains yet: beepmail init sets up the local one.",
    )


@app.command()
def show(
    domain_name: DomainArgument,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one rule and how many recipients wait in the queue under it."""
    settings = load_settings(config_file)
    name = rule_name(domain_name)

    with database(settings) as db, translated(), db.engine.connect() as connection:
        record = accounts.get_domain(connection, name)
        rules = [r.name for r in accounts.load_domains(connection)]
        waiting = accounts.queued_by_domain(connection)
    if record is None:
        raise CLIError(_no_rule(name, rules))

    # A wildcard governs the queued domains for which it is the most specific rule.
    queued = sum(n for domain, n in waiting.items() if find_rule(domain, rules) == name)
    found = domain_json(record)
    found["queued"] = queued
    if as_json:
        print_json(found)
        return
    fields(
        [
            ("Domain", record.name),
            ("Role", record.role),
            ("Mail", "allowed" if record.allowed else "denied"),
            ("Next hop", record.next_hop or "MX of the domain"),
            ("TLS", record.tls),
            ("Encryption", record.encryption),
            ("Queued", queued),
            ("Updated", found["updated_at"]),
        ]
    )


def _no_rule(name: str, rules: list[str]) -> str:
    covering = None if name.startswith("*.") else find_rule(name, rules)
    if covering is not None:
        return f"no rule for {name} itself; {covering} applies to it"
    return f"no rule for {name}"
