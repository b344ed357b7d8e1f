"""Envelope addresses and domain rules, decided without any I/O.

Invariant 2 of the design ("no mail leaves for a domain that is not allowed, whatever
the case, Unicode form, sub-domain or address syntax of the recipient") rests on this
module. Every address that reaches a domain rule passes through one strict parser and
one domain normaliser first, so that two spellings of the same domain compare equal
and two different domains never do.

Standards followed: RFC 5321 section 4.1.2 (Mailbox syntax) and 4.5.3.1 (size
limits), RFC 5322 section 3.2.3 (atext), RFC 6531 (UTF-8 local parts under
SMTPUTF8) and IDNA 2008 (RFC 5890-5893, through the `idna` package, without the
UTS 46 mapping).

Where we deviate from RFC 5321, on purpose, to leave an attacker nothing to play
with:

- Source routes (``@relay:user@domain``) are refused; RFC 5321 says to accept and
  ignore them, which is how a hidden domain slips past a naive check.
- A quoted local part is accepted only when its content is a plain dot-atom (and is
  then unquoted); any quoted part that really needs its quotes is refused.
- Address literals (``user@[192.0.2.1]``) are refused, and so is a domain whose last
  label is all digits, which is an IP address written without brackets.
- The bare ``<Postmaster>`` recipient of RFC 5321 section 4.5.1 is not parsed here;
  the SMTP layer must recognise it before calling this module if it wants it.
- One trailing dot on the domain is accepted and removed.
- Comments, white space, display names, address lists, control and invisible
  characters are refused rather than skipped.

Unicode domains. Upper case is folded with ``str.lower``; a U-label is then encoded
to its A-label (``xn--``) by IDNA 2008 rules, which refuse disallowed code points
such as symbols and invisible joiners. A look-alike such as a Cyrillic letter in
place of a Latin one is not refused: it becomes a different A-label and so simply
matches no rule. Compatibility characters (fullwidth letters, ligatures, the Kelvin
sign) and dots other than the ASCII full stop (U+3002, U+FF0E, U+FF61) are refused
rather than mapped: IDNA 2003 and UTS 46 would map them to ordinary letters and dots,
and a check that maps silently is one whose input differs from what it approved.
Mixed-script labels are not refused; since no rule can name them by accident, they
fail closed anyway.

Error messages are fixed sentences that never echo the input: they are safe to send
to the SMTP client as they are, and attacker-chosen bytes never reach the wire or a
log line through them.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import idna

_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_LDH = frozenset(string.ascii_lowercase + string.digits + "-")
_NON_ASCII_DOTS = frozenset("\u3002\uff0e\uff61")
_WILDCARD = "*."

_MAX_LOCAL = 64
_MAX_ADDRESS = 254
_MAX_DOMAIN = 253
_MAX_LABEL = 63

# ASCII characters with a meaning in RFC 5322 headers but none in an SMTP path.
# Each gets its own sentence because each is the start of a known bypass trick.
_SPECIALS = {
    "(": "Comments in parentheses are not accepted in an address.",
    ")": "Comments in parentheses are not accepted in an address.",
    ",": "Only one address is accepted, not a list.",
    ";": "Only one address is accepted, not a group.",
    "<": "Angle brackets are only accepted around the whole address.",
    ">": "Angle brackets are only accepted around the whole address.",
    "\\": "Backslashes are not accepted in an address.",
}

_QUOTED_REFUSED = (
    "A quoted part before the @ is only accepted when it is a plain name "
    "that needs no quotes."
)


class AddressError(ValueError):
    """Raised with a human-readable sentence (safe to show to the SMTP client).

    The sentence never contains the refused input, so callers may put it on the
    wire or in a log line without escaping.
    """


@dataclass(frozen=True)
class Address:
    """A mailbox from the envelope, after strict parsing.

    Build it with `parse_envelope_address`; the fields are then already checked:
    `local` keeps the case the client gave (the receiving system owns its meaning),
    `domain` is the normalised A-label form that domain rules are compared with.
    """

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """The form to compare and look up addresses by; our users' local parts are
        case-insensitive, domains are already normalised."""
        return f"{self.local.lower()}@{self.domain}"


@dataclass(frozen=True)
class DomainRule:
    """One configured domain rule, held only in its normalised form.

    Refusing an unnormalised pattern here means a rule that could never match, such
    as one written in upper case, is found when the configuration is loaded rather
    than when mail is silently refused.
    """

    pattern: str

    def __post_init__(self) -> None:
        if normalise_rule(self.pattern) != self.pattern:
            raise AddressError("A domain rule must be stored in its normalised form.")


# --- domains -------------------------------------------------------------------


def normalise_domain(text: str) -> str:
    """Return the one spelling of a domain that rules are compared with.

    Lower case, one trailing dot removed, every label as its IDNA 2008 A-label. We
    refuse instead of guessing whenever two readings are possible (compatibility
    characters, other dots, address literals), because a guess is a bypass.
    """
    _check_domain_text(text)

    lowered = text.lower().removesuffix(".")
    labels = [_a_label(label) for label in lowered.split(".")]
    domain = ".".join(labels)
    if len(domain) > _MAX_DOMAIN:
        raise AddressError("The domain is longer than 253 characters.")

    if labels[-1].isdigit():
        raise AddressError("A domain ending in a number looks like an IP address.")
    return domain


def _check_domain_text(text: str) -> None:
    """Refuse, with a specific sentence, the inputs that IDNA would map or misread."""
    if not text:
        raise AddressError("The domain is empty.")
    if text.startswith("["):
        raise AddressError("Address literals in brackets are not accepted.")
    if any(char in _NON_ASCII_DOTS for char in text):
        raise AddressError("The domain uses a dot other than the ASCII full stop.")
    if unicodedata.normalize("NFKC", text) != text:
        raise AddressError(
            "The domain contains a compatibility character such as a fullwidth letter."
        )


def _a_label(label: str) -> str:
    """Encode one label to its A-label, or refuse it."""
    if not label:
        raise AddressError("The domain has an empty label between two dots.")
    if label.isascii():
        return _ascii_label(label)

    try:
        encoded = idna.alabel(label).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise AddressError(
            "The domain has a label that is not a valid international domain name."
        ) from exc
    return _ascii_label(encoded)


def _ascii_label(label: str) -> str:
    """Check an ASCII label against the letters-digits-hyphen rule of RFC 5890."""
    if not set(label) <= _LDH:
        raise AddressError(
            "The domain may contain only letters, digits, hyphens and dots."
        )
    if label.startswith("-") or label.endswith("-"):
        raise AddressError("A domain label cannot start or end with a hyphen.")
    if len(label) > _MAX_LABEL:
        raise AddressError("A domain label is longer than 63 characters.")

    if label[2:4] == "--":
        _check_reserved_label(label)
    return label


def _check_reserved_label(label: str) -> None:
    """A label with "--" in third and fourth place must be a genuine A-label.

    A forged "xn--" label that does not decode, or decodes to something IDNA 2008
    forbids, could otherwise be shown to a person as one domain and routed as
    another.
    """
    try:
        genuine = idna.alabel(idna.ulabel(label)).decode("ascii") == label
    except (idna.IDNAError, UnicodeError):
        genuine = False
    if not genuine:
        raise AddressError(
            "A domain label with two hyphens in third and fourth place must be "
            "a valid xn-- label."
        )


# --- envelope addresses ----------------------------------------------------------


def parse_envelope_address(
    text: str, *, allow_empty: bool = False, smtputf8: bool = False
) -> Address | None:
    """Parse the path of MAIL FROM or RCPT TO, strictly.

    `text` is the path without its angle brackets, though one surrounding pair is
    also accepted. Returns None for the null reverse-path only when `allow_empty`
    (MAIL FROM of a bounce). Non-ASCII is accepted only when the client asked for
    SMTPUTF8. Everything RFC 5321 allows but we never need is refused, because
    each such form is a way to make two parsers disagree about the domain.
    """
    path = _strip_brackets(text)
    if not path:
        if allow_empty:
            return None
        raise AddressError("An empty address is only accepted as the sender.")

    if len(path.encode("utf-8")) > _MAX_ADDRESS:
        raise AddressError("The address is longer than 254 octets.")
    _check_characters(path, smtputf8=smtputf8)

    local, domain_text = _split(path)
    if not domain_text:
        raise AddressError("The address has nothing after the @.")
    address = Address(local=local, domain=normalise_domain(domain_text))

    if len(str(address).encode("utf-8")) > _MAX_ADDRESS:
        raise AddressError("The address is longer than 254 octets.")
    return address


def _strip_brackets(text: str) -> str:
    """Remove one pair of surrounding angle brackets; any others are refused later."""
    if len(text) >= 2 and text.startswith("<") and text.endswith(">"):
        return text[1:-1]
    return text


def _check_characters(path: str, *, smtputf8: bool) -> None:
    """Refuse characters that have no place anywhere in an SMTP path."""
    if path.startswith("@") and ":" in path:
        raise AddressError("Source routes are not accepted in an address.")

    for char in path:
        category = unicodedata.category(char)
        if category.startswith("C"):
            raise AddressError(
                "The address contains a control character or an invisible character."
            )
        if category.startswith("Z") or char.isspace():
            raise AddressError("The address contains white space.")
        if not char.isascii() and not smtputf8:
            raise AddressError(
                "The address contains non-ASCII characters without SMTPUTF8."
            )
        if char in _SPECIALS:
            raise AddressError(_SPECIALS[char])


def _split(path: str) -> tuple[str, str]:
    """Split at the only @ outside quotes into a checked local part and the domain."""
    if path.startswith('"'):
        return _split_quoted(path)
    if '"' in path:
        raise AddressError(
            "Quotation marks are only accepted around the whole part before the @."
        )

    if "@" not in path:
        raise AddressError("The address has no @ and domain.")
    local, _, rest = path.partition("@")
    if "@" in rest:
        raise AddressError("The address contains more than one @.")

    _check_local(local)
    return local, rest


def _split_quoted(path: str) -> tuple[str, str]:
    """Unquote a quoted local part whose content is a plain dot-atom, or refuse it."""
    close = path.find('"', 1)
    if close == -1:
        raise AddressError("The address has a quotation mark that is never closed.")
    if path[close + 1 : close + 2] != "@":
        raise AddressError("A quoted part must be followed directly by the @.")

    local, rest = path[1:close], path[close + 2 :]
    if "@" in rest:
        raise AddressError("The address contains more than one @.")

    try:
        _check_local(local)
    except AddressError as exc:
        raise AddressError(_QUOTED_REFUSED) from exc
    return local, rest


def _check_local(local: str) -> None:
    """Check a local part as an RFC 5322 dot-atom (RFC 6531 atext under SMTPUTF8)."""
    if not local:
        raise AddressError("The part before the @ is empty.")
    if len(local.encode("utf-8")) > _MAX_LOCAL:
        raise AddressError("The part before the @ is longer than 64 octets.")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError(
            "The part before the @ has a dot at its start or end, or two in a row."
        )

    if not all(char in _ATEXT or char == "." or not char.isascii() for char in local):
        raise AddressError(
            "The part before the @ contains a character that is not accepted."
        )
    if unicodedata.normalize("NFKC", local) != local:
        raise AddressError(
            "The part before the @ contains a compatibility character such as "
            "a fullwidth letter."
        )


# --- domain rules ----------------------------------------------------------------


def normalise_rule(text: str) -> str:
    """Normalise a configured rule: an exact domain, or "*." and a domain.

    The "*" is accepted only as the whole first label; partial wildcards such as
    "g*v.example" have no single reading and are refused.
    """
    if text.startswith(_WILDCARD):
        suffix = text[len(_WILDCARD) :]
        if "*" not in suffix:
            return _WILDCARD + normalise_domain(suffix)
    elif "*" not in text:
        return normalise_domain(text)

    raise AddressError(
        "A wildcard is only accepted as the whole first label, as in *.gov.example."
    )


def domain_matches(domain: str, rule: str) -> bool:
    """Whether a normalised domain falls under a normalised rule.

    A wildcard covers sub-domains at any depth but not the domain itself. Labels
    are compared as lists, never with str.endswith on the text, so
    "evilgov.example" can never pass for a sub-domain of "gov.example". Anything
    malformed (empty labels, a stray "*") matches nothing.
    """
    labels = _labels(domain)
    if labels is None:
        return False
    if not rule.startswith(_WILDCARD):
        return labels == _labels(rule)

    suffix = _labels(rule[len(_WILDCARD) :])
    if suffix is None:
        return False
    return len(labels) > len(suffix) and labels[-len(suffix) :] == suffix


def _labels(text: str) -> list[str] | None:
    """Split into labels, or None when the text cannot be a normalised domain."""
    labels = text.split(".")
    if any(not label or "*" in label for label in labels):
        return None
    return labels


def find_rule(domain: str, rules: Iterable[str]) -> str | None:
    """The rule that admits a normalised domain, the most specific first.

    An exact rule beats any wildcard, and a wildcard over more labels beats one over
    fewer, so that a narrower rule (for example one that requires encryption) is
    never shadowed by a broader one. None when no rule matches.
    """
    matching = [rule for rule in rules if domain_matches(domain, rule)]
    if not matching:
        return None
    return max(matching, key=_specificity)


def _specificity(rule: str) -> tuple[bool, int]:
    """Sort key: exact before wildcard, then by the number of labels."""
    return (not rule.startswith(_WILDCARD), rule.count("."))
