"""Tables for envelope-address parsing and domain rules (beep_mail.policy.address).

Each row is one input and the answer we expect: an address, a domain, or a refusal.
The refusals are the point: every one of them is a way somebody has, somewhere,
smuggled a recipient past a domain check.
"""

from __future__ import annotations

import inspect
import re
from email.utils import parseaddr

import pytest

from beep_mail.policy.address import (
    Address,
    AddressError,
    DomainRule,
    domain_matches,
    find_rule,
    normalise_domain,
    normalise_rule,
    parse_envelope_address,
)

CYRILLIC_MINISTRY = "m\u0456nistry.gov.example"  # U+0456 looks like a Latin "i"
CYRILLIC_MINISTRY_A = "xn--mnistry-rog.gov.example"
LONG_LABEL = "a" * 63
UTF8 = {"smtputf8": True}
NONE: dict[str, bool] = {}


# --- addresses we accept ------------------------------------------------------------

ACCEPTED = [
    # (input, parser options, local part, domain)
    ("alice@gov.example", NONE, "alice", "gov.example"),
    ("<alice@gov.example>", NONE, "alice", "gov.example"),
    ("Alice.Smith@MINISTRY.Gov.Example", NONE, "Alice.Smith", "ministry.gov.example"),
    ("alice@gov.example.", NONE, "alice", "gov.example"),
    ('"alice"@gov.example', NONE, "alice", "gov.example"),
    ('<"alice.smith"@gov.example>', NONE, "alice.smith", "gov.example"),
    ("alice+tag@gov.example", NONE, "alice+tag", "gov.example"),
    ("a!#$%&'*+-/=?^_`{|}~z@gov.example", NONE, "a!#$%&'*+-/=?^_`{|}~z", "gov.example"),
    ("host!user@evil.test", NONE, "host!user", "evil.test"),
    ("alice@a.b.c.gov.example", NONE, "alice", "a.b.c.gov.example"),
    ("alice@123.gov.example", NONE, "alice", "123.gov.example"),
    ("alice@xn--mnchen-3ya.de", NONE, "alice", "xn--mnchen-3ya.de"),
    ("alice@m\u00fcnchen.de", UTF8, "alice", "xn--mnchen-3ya.de"),
    (f"alice@{CYRILLIC_MINISTRY}", UTF8, "alice", CYRILLIC_MINISTRY_A),
    ("j\u00f6rg@gov.example", UTF8, "j\u00f6rg", "gov.example"),
    ("\u7528\u6237@gov.example", UTF8, "\u7528\u6237", "gov.example"),
    ("x" * 64 + "@gov.example", NONE, "x" * 64, "gov.example"),
    (f"alice@{LONG_LABEL}.example", NONE, "alice", f"{LONG_LABEL}.example"),
    # The percent hack parses: the domain that counts is the one after the @.
    (
        "alice%allowed.gov.example@evil.test",
        NONE,
        "alice%allowed.gov.example",
        "evil.test",
    ),
]


@pytest.mark.parametrize(("text", "options", "local", "domain"), ACCEPTED)
def test_accepted(text: str, options: dict[str, bool], local: str, domain: str) -> None:
    address = parse_envelope_address(text, **options)
    assert address == Address(local=local, domain=domain)


# --- addresses we refuse ------------------------------------------------------------

REFUSED = [
    # (input, parser options, why it is dangerous or wrong)
    ("", NONE, "null path where a recipient is needed"),
    ("<>", NONE, "null path in brackets where a recipient is needed"),
    ("alice", NONE, "no domain"),
    ("alice@", NONE, "nothing after the @"),
    ("@gov.example", NONE, "empty local part"),
    ("x@allowed.gov.example@evil.test", NONE, "two @ signs"),
    ("@relay.test,@relay2.test:alice@gov.example", NONE, "source route list"),
    ("<alice@gov.example", NONE, "unbalanced bracket"),
    ("<<alice@gov.example>>", NONE, "doubled brackets"),
    ("Alice <alice@gov.example>", NONE, "display name"),
    ("alice(comment)@gov.example", NONE, "comment"),
    ("alice @gov.example", NONE, "space"),
    ("alice\t@gov.example", NONE, "tab"),
    ("alice@gov.example\r\nRCPT TO:<x@evil.test>", NONE, "line break smuggling"),
    ("alice\u200b@gov.example", UTF8, "zero-width space"),
    ("alice\u00a0@gov.example", UTF8, "no-break space"),
    (".alice@gov.example", NONE, "leading dot"),
    ("alice.@gov.example", NONE, "trailing dot"),
    ("al..ice@gov.example", NONE, "double dot"),
    ("al[ice@gov.example", NONE, "non-atext character"),
    ("al:ice@gov.example", NONE, "colon in the local part"),
    ('"a b"@gov.example', NONE, "quoted part that needs its quotes"),
    ('"a..b"@gov.example', NONE, "quoted part with a double dot"),
    ('"a:b"@gov.example', NONE, "quoted part with a colon"),
    ('"a\\"b"@gov.example', NONE, "quoted pair"),
    ('""@gov.example', NONE, "empty quoted part"),
    ('"alice@gov.example', NONE, "unclosed quotation mark"),
    ('"alice"x@gov.example', NONE, "text after the closing quote"),
    ('al"ice"@gov.example', NONE, "quote in the middle"),
    ("j\u00f6rg@gov.example", NONE, "UTF-8 local part without SMTPUTF8"),
    ("alice@m\u00fcnchen.de", NONE, "U-label domain without SMTPUTF8"),
    ("\uff41lice@gov.example", UTF8, "fullwidth letter in the local part"),
    ("x" * 65 + "@gov.example", NONE, "local part over 64 octets"),
    ("alice@" + ".".join([LONG_LABEL] * 4), NONE, "address over 254 (long domain)"),
    ("x" * 64 + "@" + ".".join(["a" * 60] * 4), NONE, "address over 254 octets"),
    ("alice@gov..example", NONE, "empty domain label"),
    ("alice@-gov.example", NONE, "leading hyphen"),
    ("alice@gov_example.test", NONE, "underscore in the domain"),
    ("alice@127.0.0.1", NONE, "bare IP address"),
    ("alice@[IPv6:::1]", NONE, "IPv6 address literal"),
    ("alice@\uff47\uff4f\uff56.example", UTF8, "fullwidth domain"),
    ("alice@gov\uff0eexample", UTF8, "fullwidth dot"),
    ("alice@gov\u3002example", UTF8, "ideographic full stop"),
]

# Inputs that fooled email.utils.parseaddr (CVE-2023-27043 and its relatives), with
# what Python 3.11.7's parseaddr, or a patched one with strict=False, reads in them.
CONFUSING = [
    ("alice@example.org)<bob@evil.test>", "alice@example.org"),
    ('"alice@allowed.gov.example"@evil.test', '"alice@allowed.gov.example"@evil.test'),
    ("bob@evil.test, alice@allowed.gov.example", "bob@evil.test"),
    ("<alice@allowed.gov.example>@evil.test", "alice@allowed.gov.example"),
    ("@relay.test:alice@allowed.gov.example", "@relay.test"),
    ("alice@allowed.gov.example\x00@evil.test", ""),
    ("alice@[127.0.0.1]", "alice@[127.0.0.1]"),
]


@pytest.mark.parametrize(("text", "options", "why"), REFUSED)
def test_refused(text: str, options: dict[str, bool], why: str) -> None:
    with pytest.raises(AddressError):
        parse_envelope_address(text, **options)


@pytest.mark.parametrize(("text", "stdlib_reads"), CONFUSING)
def test_refused_where_parseaddr_is_confused(text: str, stdlib_reads: str) -> None:
    with pytest.raises(AddressError):
        parse_envelope_address(text, smtputf8=True)


@pytest.mark.parametrize(("text", "stdlib_reads"), CONFUSING)
def test_parseaddr_really_is_confused(text: str, stdlib_reads: str) -> None:
    """Keeps the table honest: these are inputs the legacy parser misreads."""
    if "strict" in inspect.signature(parseaddr).parameters:
        seen = parseaddr(text, strict=False)[1]
    else:
        seen = parseaddr(text)[1]
    assert seen == stdlib_reads


def test_percent_hack_lands_on_the_real_domain() -> None:
    address = parse_envelope_address("alice%allowed.gov.example@evil.test")
    assert address is not None
    assert address.domain == "evil.test"
    assert find_rule(address.domain, ["allowed.gov.example", "*.gov.example"]) is None


@pytest.mark.parametrize("text", ["", "<>"])
def test_null_sender_only_when_allowed(text: str) -> None:
    assert parse_envelope_address(text, allow_empty=True) is None


def test_address_text_and_key() -> None:
    upper = parse_envelope_address("Alice@GOV.example")
    lower = parse_envelope_address("alice@gov.example")
    assert upper is not None and lower is not None
    assert str(upper) == "Alice@gov.example"
    assert upper.key == lower.key == "alice@gov.example"


# --- domains --------------------------------------------------------------------

DOMAINS = [
    # (input, normalised form)
    ("MINISTRY.Gov.Example", "ministry.gov.example"),
    ("gov.example.", "gov.example"),
    ("m\u00fcnchen.de", "xn--mnchen-3ya.de"),
    ("M\u00dcNCHEN.de", "xn--mnchen-3ya.de"),
    ("XN--MNCHEN-3YA.DE", "xn--mnchen-3ya.de"),
    (CYRILLIC_MINISTRY, CYRILLIC_MINISTRY_A),
    ("a-b.example", "a-b.example"),
]

BAD_DOMAINS = [
    "",
    ".",
    "gov.example..",
    ".gov.example",
    "gov-.example",
    ".".join([LONG_LABEL] * 4),  # 255 characters
    f"{LONG_LABEL}a.example",
    "[127.0.0.1]",
    "ab--cd.example",
    "xn--zz.example",
    "\u212aministry.example",  # Kelvin sign, which lower() would turn into "k"
    "\ufb01nance.example",  # "fi" ligature
    "gov\uff61example",  # halfwidth ideographic full stop
    "gov.example\x00",
    "gov\u200d.example",  # zero-width joiner
    "gov example",
    "*.gov.example",
]


@pytest.mark.parametrize(("text", "expected"), DOMAINS)
def test_domain_normalised(text: str, expected: str) -> None:
    assert normalise_domain(text) == expected


@pytest.mark.parametrize("text", BAD_DOMAINS)
def test_domain_refused(text: str) -> None:
    with pytest.raises(AddressError):
        normalise_domain(text)


def test_look_alike_is_a_different_domain() -> None:
    domain = normalise_domain(CYRILLIC_MINISTRY)
    assert domain != "ministry.gov.example"
    assert not domain_matches(domain, "ministry.gov.example")


# --- rules ---------------------------------------------------------------------

RULES = [
    ("gov.example", "gov.example"),
    ("*.gov.example", "*.gov.example"),
    ("*.GOV.Example.", "*.gov.example"),
    ("*.m\u00fcnchen.de", "*.xn--mnchen-3ya.de"),
]

BAD_RULES = ["g*v.example", "*gov.example", "*", "*.", "a.*.example", "*.*.example", ""]


@pytest.mark.parametrize(("text", "expected"), RULES)
def test_rule_normalised(text: str, expected: str) -> None:
    assert normalise_rule(text) == expected
    assert DomainRule(expected).pattern == expected


@pytest.mark.parametrize("text", BAD_RULES)
def test_rule_refused(text: str) -> None:
    with pytest.raises(AddressError):
        normalise_rule(text)


def test_domain_rule_holds_only_normalised_patterns() -> None:
    with pytest.raises(AddressError):
        DomainRule("GOV.example")


MATCHES = [
    # (normalised domain, rule, matches)
    ("gov.example", "gov.example", True),
    ("a.gov.example", "gov.example", False),
    ("a.gov.example", "*.gov.example", True),
    ("a.b.gov.example", "*.gov.example", True),
    ("gov.example", "*.gov.example", False),
    ("evilgov.example", "*.gov.example", False),
    ("gov.example.evil.test", "*.gov.example", False),
    ("a.gov.example.evil.test", "*.gov.example", False),
    (CYRILLIC_MINISTRY_A, "ministry.gov.example", False),
    ("a.", "*.", False),
    ("a.*.example", "*.example", False),
]


@pytest.mark.parametrize(("domain", "rule", "expected"), MATCHES)
def test_domain_matches(domain: str, rule: str, expected: bool) -> None:
    assert domain_matches(domain, rule) is expected


FIND = [
    # (normalised domain, configured rules, the rule that decides)
    ("a.gov.example", ["*.gov.example", "a.gov.example"], "a.gov.example"),
    ("a.gov.example", ["a.gov.example", "*.gov.example"], "a.gov.example"),
    ("x.a.gov.example", ["*.gov.example", "*.a.gov.example"], "*.a.gov.example"),
    ("x.a.gov.example", ["*.a.gov.example", "*.gov.example"], "*.a.gov.example"),
    ("gov.example", ["*.gov.example"], None),
    ("evil.test", ["gov.example", "*.gov.example"], None),
]


@pytest.mark.parametrize(("domain", "rules", "expected"), FIND)
def test_find_rule(domain: str, rules: list[str], expected: str | None) -> None:
    assert find_rule(domain, rules) == expected


# --- what the client is told ----------------------------------------------------

SENTENCE = re.compile(r"[A-Z][ -~]*\.")


def _refusals() -> list[tuple[str, dict[str, bool]]]:
    rows = [(text, options) for text, options, _ in REFUSED]
    return rows + [(text, UTF8) for text, _ in CONFUSING]


@pytest.mark.parametrize(("text", "options"), _refusals())
def test_refusal_is_one_plain_sentence(text: str, options: dict[str, bool]) -> None:
    with pytest.raises(AddressError) as caught:
        parse_envelope_address(text, **options)

    message = str(caught.value)
    assert SENTENCE.fullmatch(message), message
    assert ". " not in message and "\\" not in message and "'" not in message
    assert "Error" not in message and "idna" not in message.lower()
    assert "alice" not in message and "example" not in message  # input not echoed
    assert isinstance(caught.value, ValueError)
