"""IMAP command handlers: what each command does to the session and the store.

A handler gets the connection's `Context` and its parsed command, writes any
untagged responses through the channel, and returns the text and response
code of its tagged OK, or raises an `ImapError` that knows its NO or BAD.
`execute` checks the state first (RFC 3501, 6) and afterwards sends what
changed elsewhere, at the points RFC 3501, 7.4.1 allows.

Sign-in (LOGIN, AUTHENTICATE PLAIN per RFC 4616) only over TLS; failures are
throttled per account and per client address, and unknown accounts cost the
same password hash as real ones, as on the SMTP side. The password also opens
the user's keys (`vault.open_keys`), which then live in the session only.

CONDSTORE (RFC 7162, 3.1) is on for a session from its first enabling
command (SELECT/EXAMINE with CONDSTORE, ENABLE, a MODSEQ item or key,
CHANGEDSINCE, UNCHANGEDSINCE, STATUS HIGHESTMODSEQ); from then on every
FETCH response that tells flags tells MODSEQ too.

What is not offered answers NO [CANNOT] or is simply not announced; see
docs/limitations.md: QRESYNC, LIST-EXTENDED and LIST-STATUS,
ESEARCH, SORT and THREAD, BINARY, CATENATE, MULTIAPPEND, QUOTA, ACL,
METADATA, NOTIFY, COMPRESS, UTF8=ACCEPT, and the \\Recent flag.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
from base64 import b64decode
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from beep_mail import logs, vault
from beep_mail.config import Settings
from beep_mail.crypto import passwords
from beep_mail.crypto.openpgp import OpenPGPError
from beep_mail.crypto.passwords import Passwords
from beep_mail.imap import fetch as fetching
from beep_mail.imap import index, names, render
from beep_mail.imap import summary as summaries
from beep_mail.imap.errors import (
    AlreadyExists,
    AuthenticationFailed,
    AuthorizationFailed,
    Bad,
    BadCharset,
    Cannot,
    ImapError,
    Limit,
    NonExistent,
    PrivacyRequired,
    ReadOnly,
    TryCreate,
    Unavailable,
)
from beep_mail.imap.hub import Hub
from beep_mail.imap.index import Indexed
from beep_mail.imap.parser import (
    NOT_OFFERED,
    Append,
    Authenticate,
    Command,
    Copy,
    Enable,
    Fetch,
    FetchAtt,
    Id,
    List,
    Login,
    MailboxCommand,
    Rename,
    Search,
    Status,
    Store,
    UidExpunge,
    format_set,
)
from beep_mail.imap.search import (
    Facts,
    Need,
    Searcher,
    needs,
    reads_columns,
    required_words,
    uses_modseq,
)
from beep_mail.imap.session import Selected, Session, State, flag_list, flag_set
from beep_mail.keyring import KeyringError
from beep_mail.smtp.throttle import Throttle
from beep_mail.store import accounts, audit, mailstore
from beep_mail.store.engine import Database, StoreError

log = logging.getLogger("beepmail.imap")

BATCH_BYTES = 4 * 1024 * 1024  # message content opened at once by FETCH and SEARCH
BATCH_COUNT = 100
SUMMARY_BATCH = 1000  # summaries (a few hundred bytes each) opened at once
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
BASE_CAPABILITIES = ("IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE",
                     "NAMESPACE", "UNSELECT", "UIDPLUS", "MOVE", "SPECIAL-USE",
                     "CHILDREN", "CONDSTORE")

Done = tuple[str, str | None] | None


class Channel(Protocol):
    """What handlers may do with the connection."""

    client_address: str

    @property
    def tls(self) -> bool: ...

    async def send(self, data: bytes) -> None: ...

    async def read_line(self) -> bytes: ...

    def idle_read(self) -> asyncio.Task[bytes]: ...

    async def start_tls(self, reply: bytes) -> None: ...


@dataclass
class Services:
    """Shared by every IMAP connection of the process."""

    db: Database
    settings: Settings
    hub: Hub
    passwords: Passwords
    throttle: Throttle
    signed_in: Counter[str] = field(default_factory=Counter)


class Context:
    """One connection: its channel, its session, and the shared services."""

    def __init__(self, services: Services, channel: Channel) -> None:
        self.services = services
        self.channel = channel
        self.session = Session(services.db, services.hub)
        self.user_slot: str | None = None

    @property
    def db(self) -> Database:
        return self.services.db

    def close(self) -> None:
        if self.user_slot is not None:
            self.services.signed_in[self.user_slot] -= 1
            if self.services.signed_in[self.user_slot] <= 0:
                del self.services.signed_in[self.user_slot]
            self.user_slot = None
        self.session.logout()


def capabilities(ctx: Context) -> str:
    words = list(BASE_CAPABILITIES)
    if ctx.session.state is State.NOT_AUTHENTICATED:
        if ctx.channel.tls:
            words.append("AUTH=PLAIN")
        else:
            words.extend(("STARTTLS", "LOGINDISABLED"))
    return " ".join(words)


# -- dispatch ---------------------------------------------------------------------

Handler = Callable[[Context, Any], Awaitable[Done]]

ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
UNAUTHENTICATED = frozenset({State.NOT_AUTHENTICATED})
SIGNED_IN = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})

# Commands during which no EXPUNGE may be sent (RFC 3501, 7.4.1).
_NO_EXPUNGE = {"FETCH", "STORE", "SEARCH"}
# Commands by which a client asks to hear what changed.
_POLLS = {"NOOP", "CHECK"}


async def execute(ctx: Context, command: Command) -> bytes | None:
    """Run one command; the tagged response, or None when already sent."""
    if command.name.removeprefix("UID ") in NOT_OFFERED:
        raise Cannot(f"{command.name} is not offered by this server")
    entry = _HANDLERS.get(command.name)
    if entry is None:
        raise Bad(f"Unknown command {command.name}")
    handler, states = entry
    state = ctx.session.state
    if state not in states:
        raise Bad(f"{command.name} is not allowed when {state.value}")
    try:
        done = await handler(ctx, command)
    except ImapError as error:
        if error.condition == b"BYE":
            raise
        await _updates(ctx, command.name)
        return error.response(command.tag)
    except StoreError as error:
        logs.event(log, "store-error", logging.ERROR, reason=str(error))
        return Unavailable("The mail store is busy; try again shortly").response(
            command.tag)
    if done is None:
        return None
    await _updates(ctx, command.name)
    text, code = done
    code_part = f"[{code}] " if code else ""
    return command.tag + f" OK {code_part}{text}\r\n".encode("utf-8", "replace")


async def _updates(ctx: Context, name: str) -> None:
    if ctx.session.state is State.SELECTED and name not in ("SELECT", "EXAMINE"):
        await ctx.session.refresh(ctx.channel.send, expunge=name not in _NO_EXPUNGE,
                                  force=name in _POLLS)


# -- any state ---------------------------------------------------------------------

async def _capability(ctx: Context, command: Command) -> Done:
    await ctx.channel.send(f"* CAPABILITY {capabilities(ctx)}\r\n".encode())
    return "CAPABILITY completed", None


async def _noop(ctx: Context, command: Command) -> Done:
    return f"{command.name} completed", None


async def _logout(ctx: Context, command: Command) -> Done:
    await ctx.channel.send(b"* BYE beep-mail signing off\r\n")
    ctx.close()
    return "LOGOUT completed", None


async def _id(ctx: Context, command: Id) -> Done:
    client = dict(command.parameters or ())
    logs.event(log, "client-id", logging.DEBUG, client=client.get("name") or "-",
               version=client.get("version") or "-")
    await ctx.channel.send(b'* ID ("name" "beep-mail")\r\n')
    return "ID completed", None


# -- not authenticated ---------------------------------------------------------------

async def _starttls(ctx: Context, command: Command) -> Done:
    if ctx.channel.tls:
        raise Bad("TLS is already on")
    await ctx.channel.start_tls(command.tag + b" OK Begin TLS negotiation now\r\n")
    return None


async def _login(ctx: Context, command: Login) -> Done:
    if not ctx.channel.tls:
        raise PrivacyRequired("Start TLS first (STARTTLS), then sign in")
    return await _sign_in(ctx, command.user, command.password)


async def _authenticate(ctx: Context, command: Authenticate) -> Done:
    if command.mechanism != "PLAIN":
        raise Cannot(f"Only AUTHENTICATE PLAIN is offered, not {command.mechanism}")
    if not ctx.channel.tls:
        raise PrivacyRequired("Start TLS first (STARTTLS), then sign in")
    answer = command.initial
    if answer is None:
        await ctx.channel.send(b"+ \r\n")
        answer = (await ctx.channel.read_line()).strip()
    if answer == b"*":
        raise Bad("AUTHENTICATE cancelled")
    try:
        blob = b"" if answer == b"=" else b64decode(answer, validate=True)
    except (binascii.Error, ValueError):
        raise Bad("The answer to AUTHENTICATE is not base64") from None
    fields = blob.split(b"\0")
    if len(fields) != 3:
        raise Bad("AUTHENTICATE PLAIN takes authorization id, user name and password")
    authorize, login, password = fields
    if authorize and authorize.lower() != login.lower():
        raise AuthorizationFailed("Signing in on behalf of someone else is not "
                                  "possible")
    return await _sign_in(ctx, login, password)


async def _upgrade_lock(services: Services, address: str,
                        checked: passwords.Checked) -> None:
    """Once per user of the earlier password form: the current one, and the
    key locked by Argon2id (`vault.upgrade_lock`). A failure leaves both as
    they were, and the user signed in."""
    try:
        done = await asyncio.to_thread(vault.upgrade_lock, services.db.engine,
                                       address, checked, services.passwords)
    except (OpenPGPError, KeyringError, SQLAlchemyError) as error:
        logs.event(log, "lock-upgrade-failed", logging.WARNING, user=address,
                   reason=type(error).__name__)
        return
    if done:
        logs.event(log, "lock-upgraded", user=address)


async def _sign_in(ctx: Context, login_raw: bytes, password_raw: bytes) -> Done:
    services, client = ctx.services, ctx.channel.client_address
    try:
        login = login_raw.decode("utf-8").strip().lower()
        password = password_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationFailed("Wrong user name or password") from None
    account_key, client_key = f"user:{login}", f"addr:{client}"
    if services.throttle.blocked(account_key, client_key):
        known = await services.db.run(accounts.get_user, login)
        _audit(ctx, "auth-throttled", known.address if known else None)
        raise Unavailable("Too many failed sign-ins; wait a few minutes and try again")

    user = await services.db.run(accounts.get_user, login)
    # Unknown and disabled accounts cost the same hash as real ones.
    stored = user.password_hash if user is not None else services.passwords.decoy
    checked = await asyncio.to_thread(passwords.check, stored, password)
    if checked is None or user is None or user.disabled:
        services.throttle.fail(account_key, client_key)
        _audit(ctx, "auth-failed", user.address if user is not None else None)
        await asyncio.sleep(services.settings.imap.auth_failure_delay)
        raise AuthenticationFailed("Wrong user name or password")
    services.throttle.succeed(account_key)

    if services.signed_in[user.address] >= services.settings.imap.max_sessions_per_user:
        _audit(ctx, "session-limit", user.address)
        raise Limit("Too many sessions of yours are open; close another mail client "
                    "or device, then try again")
    services.signed_in[user.address] += 1
    ctx.user_slot = user.address
    try:
        keys = await asyncio.to_thread(vault.open_keys, services.db.engine,
                                       user.address, checked)
    except (vault.VaultError, OpenPGPError, KeyringError) as error:
        ctx.close()
        logs.event(log, "keys-unavailable", logging.WARNING, user=user.address,
                   reason=type(error).__name__)
        raise Unavailable("Your stored mail cannot be opened now; ask your "
                          "administrator") from None
    if passwords.needs_upgrade(user.password_hash):
        await _upgrade_lock(services, user.address, checked)
    ctx.session.sign_in(keys)
    logs.event(log, "auth", user=user.address)
    _audit(ctx, "auth-ok", user.address)
    return "Signed in", f"CAPABILITY {capabilities(ctx)}"


def _audit(ctx: Context, action: str, user: str | None) -> None:
    """Record a sign-in or its refusal in the audit trail; log a refusal."""
    if action != "auth-ok":
        # Only a known account is named: what was typed may be a password.
        logs.event(log, "refused", reason=action, user=user or "-")
    client = ctx.channel.client_address
    # The actor is chained into the audit trail for good, so it never holds
    # what a client typed: only a known account, or "imap".
    actor = user or "imap"

    async def record() -> None:
        try:
            await ctx.db.run(audit.record_now, actor, f"imap.{action}", "",
                             {"role": "imap"}, client)
        except StoreError as error:
            logs.event(log, "audit-failed", logging.WARNING, reason=str(error))

    asyncio.get_running_loop().create_task(record())


# -- mailboxes ---------------------------------------------------------------------

def _name(raw: bytes) -> str:
    return names.from_wire(raw)


async def _select(ctx: Context, command: MailboxCommand) -> Done:
    session = ctx.session
    session.deselect()  # a failed SELECT leaves nothing selected (RFC 3501 6.3.1)
    name = _name(command.mailbox)
    row = await ctx.db.run(mailstore.get_mailbox, session.user.user_id, name)
    if row is None:
        raise NonExistent(f"There is no mailbox {name}")
    readonly = command.name == "EXAMINE"
    session.condstore = session.condstore or command.condstore
    selected = await session.select(row, readonly)
    flags = sorted({flag for value in selected.flags.values()
                    for flag in flag_set(value)} - set(SYSTEM_FLAGS))
    known = [*SYSTEM_FLAGS, *flags]
    permanent = [] if readonly else [*known, "\\*"]
    lines = [
        b"* FLAGS " + flag_list(known) + b"\r\n",
        b"* %d EXISTS\r\n" % len(selected.uids),
        b"* 0 RECENT\r\n",
    ]
    unseen = next((seq for seq, uid in enumerate(selected.uids, 1)
                   if "\\Seen" not in flag_set(selected.flags[uid])), None)
    if unseen is not None:
        lines.append(b"* OK [UNSEEN %d] First unseen message\r\n" % unseen)
    lines += [
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % selected.uidvalidity,
        b"* OK [UIDNEXT %d] Predicted next UID\r\n" % selected.uidnext,
        b"* OK [PERMANENTFLAGS " + flag_list(permanent) + b"] Flags kept\r\n",
        b"* OK [HIGHESTMODSEQ %d] Mod-sequences kept\r\n" % selected.highestmodseq,
    ]
    for line in lines:
        await ctx.channel.send(line)
    return f"{command.name} completed", "READ-ONLY" if readonly else "READ-WRITE"


async def _create(ctx: Context, command: MailboxCommand) -> Done:
    decoded = names.decode(command.mailbox)
    # "Name/" asks for a mailbox that will hold others (RFC 3501 6.3.3).
    if decoded.endswith(names.DELIMITER) and len(decoded) > 1:
        decoded = decoded[:-1]
    name = names.check(decoded)
    if name == names.INBOX:
        raise AlreadyExists("INBOX always exists")
    try:
        await ctx.db.run(mailstore.create_mailbox, ctx.session.user.user_id, name)
    except mailstore.MailboxExists:
        raise AlreadyExists(f"{name} exists already") from None
    ctx.session.notify()
    return "CREATE completed", None


async def _delete(ctx: Context, command: MailboxCommand) -> Done:
    name = _name(command.mailbox)
    session = ctx.session
    try:
        await ctx.db.run(mailstore.delete_mailbox, session.user.user_id, name)
    except mailstore.MailboxRefused as error:
        raise Cannot(str(error)) from None
    except mailstore.MailboxNotFound:
        raise NonExistent(f"There is no mailbox {name}") from None
    if session.selected is not None and session.selected.name == name:
        session.deselect()
    session.notify()
    return "DELETE completed", None


async def _rename(ctx: Context, command: Rename) -> Done:
    old, new = _name(command.old), _name(command.new)
    session = ctx.session
    try:
        await ctx.db.run(mailstore.rename_mailbox, session.user.user_id, old, new)
    except mailstore.MailboxRefused as error:
        raise Cannot(str(error)) from None
    except mailstore.MailboxNotFound:
        raise NonExistent(f"There is no mailbox {old}") from None
    except mailstore.MailboxExists:
        raise AlreadyExists(f"{new} exists already") from None
    selected = session.selected
    if (selected is not None and old != names.INBOX
            and (selected.name == old or names.is_inferior(selected.name, old))):
        selected.name = new + selected.name[len(old):]
    session.notify()
    return "RENAME completed", None


async def _subscribe(ctx: Context, command: MailboxCommand) -> Done:
    name = _name(command.mailbox)
    try:
        await ctx.db.run(mailstore.set_subscribed, ctx.session.user.user_id, name,
                         command.name == "SUBSCRIBE")
    except mailstore.MailboxNotFound:
        raise NonExistent(f"There is no mailbox {name}") from None
    return f"{command.name} completed", None


async def _list(ctx: Context, command: List) -> Done:
    if command.name == "LIST" and command.patterns == (b"",):
        # The hierarchy delimiter and root (RFC 3501 6.3.8).
        await ctx.channel.send(b'* LIST (\\Noselect) "/" ""\r\n')
        return "LIST completed", None
    reference = names.decode(command.reference, strict=False)
    patterns = [names.Pattern(reference, names.decode(p, strict=False))
                for p in command.patterns]
    rows = await ctx.db.run(mailstore.list_mailboxes, ctx.session.user.user_id)
    for line in _list_lines(command, patterns, rows):
        await ctx.channel.send(line)
    return f"{command.name} completed", None


def _list_lines(command: List, patterns: list[names.Pattern],
                rows: list[mailstore.MailboxRow]) -> Iterator[bytes]:
    existing = {row.name: row for row in rows}
    implied = {parent for name in existing for parent in names.parents(name)}
    every = sorted(existing.keys() | implied,
                   key=lambda name: (name != names.INBOX, name))
    lsub = command.name == "LSUB"
    subscribed_only = lsub or "SUBSCRIBED" in command.selection
    show_subscribed = not lsub and ("SUBSCRIBED" in command.selection
                                    or "SUBSCRIBED" in command.returns)
    subscribed = [row.name for row in rows if row.subscribed]
    for name in every:
        if not any(pattern.matches(name) for pattern in patterns):
            continue
        row = existing.get(name)
        if lsub and (row is None or not row.subscribed):
            # RFC 3501, 6.3.9: a name that is not subscribed, above subscribed
            # mailboxes that the pattern ("%") does not reach, is listed
            # \Noselect, so that a client walking the tree level by level
            # finds them.
            below = [child for child in subscribed
                     if child.startswith(name + names.DELIMITER)]
            if below and not any(pattern.matches(child) for pattern in patterns
                                 for child in below):
                yield (b"* LSUB " + flag_list(["\\Noselect"]) + b' "/" '
                       + render.quote(names.encode(name)) + b"\r\n")
            continue
        if row is None:
            if subscribed_only or "SPECIAL-USE" in command.selection:
                continue
            attributes = ["\\Noselect", "\\HasChildren"]
        else:
            if subscribed_only and not row.subscribed:
                continue
            if "SPECIAL-USE" in command.selection and not row.special_use:
                continue
            attributes = ["\\HasChildren" if name in implied else "\\HasNoChildren"]
            if row.special_use:
                attributes.append(row.special_use)
            if show_subscribed and row.subscribed:
                attributes.append("\\Subscribed")
        yield (f"* {command.name} ".encode() + flag_list(attributes) + b' "/" '
               + render.quote(names.encode(name)) + b"\r\n")


async def _status(ctx: Context, command: Status) -> Done:
    name = _name(command.mailbox)
    try:
        counts = await ctx.db.run(mailstore.counts, ctx.session.user.user_id, name)
    except mailstore.MailboxNotFound:
        raise NonExistent(f"There is no mailbox {name}") from None
    values = {"MESSAGES": counts.messages, "RECENT": 0, "UIDNEXT": counts.uidnext,
              "UIDVALIDITY": counts.uidvalidity, "UNSEEN": counts.unseen,
              "HIGHESTMODSEQ": counts.highestmodseq}
    if "HIGHESTMODSEQ" in command.items:
        ctx.session.condstore = True  # a CONDSTORE-enabling command (RFC 7162, 3.1)
    items = " ".join(f"{item} {values[item]}" for item in command.items)
    await ctx.channel.send(b"* STATUS " + render.quote(names.encode(name))
                           + f" ({items})\r\n".encode())
    return "STATUS completed", None


async def _append(ctx: Context, command: Append) -> Done:
    name = _name(command.mailbox)
    if not command.message:
        raise Cannot("An empty message cannot be stored")
    keys = ctx.session.user
    when = command.date.timestamp() if command.date else time.time()
    sealed, summary = await asyncio.to_thread(_seal_with_summary, keys, command.message)
    try:
        uidvalidity, uid = await ctx.db.run(
            mailstore.append, keys.user_id, name, sealed, len(command.message),
            command.flags, when, summary)
    except mailstore.MailboxNotFound:
        raise TryCreate(f"There is no mailbox {name}") from None
    except mailstore.FlagsTooLong:
        raise Limit("Too many flags on one message") from None
    selected = ctx.session.selected
    ctx.session.notify(told=selected is None or selected.name != name)
    logs.event(log, "append", size=len(command.message))
    return "APPEND completed", f"APPENDUID {uidvalidity} {uid}"


def _seal_with_summary(keys: vault.Keys, message: bytes) -> tuple[bytes, bytes]:
    return (vault.seal_for_mailbox(keys, message),
            vault.seal_for_mailbox(keys, summaries.build(message)))


async def _enable(ctx: Context, command: Enable) -> Done:
    # CONDSTORE is the one extension ENABLE can switch on here (RFC 5161);
    # others (QRESYNC, UTF8=ACCEPT) are not offered and go unmentioned.
    enabled = b""
    if "CONDSTORE" in command.capabilities:
        ctx.session.condstore = True
        enabled = b" CONDSTORE"
    await ctx.channel.send(b"* ENABLED" + enabled + b"\r\n")
    return "ENABLE completed", None


async def _namespace(ctx: Context, command: Command) -> Done:
    await ctx.channel.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
    return "NAMESPACE completed", None


async def _idle(ctx: Context, command: Command) -> Done:
    """Report changes as they happen until the client says DONE (RFC 2177)."""
    session, channel = ctx.session, ctx.channel
    await channel.send(b"+ idling\r\n")
    wake = ctx.services.hub.subscribe(session.user.address)
    reading = channel.idle_read()
    waiting: asyncio.Task[Any] | None = None
    try:
        while not reading.done():
            wake.clear()
            if session.state is State.SELECTED:
                await session.refresh(channel.send, expunge=True, force=True)
            waiting = asyncio.ensure_future(wake.wait())
            await asyncio.wait([reading, waiting], return_when=asyncio.FIRST_COMPLETED)
    finally:
        ctx.services.hub.unsubscribe(session.user.address, wake)
        for task in (reading, waiting):
            if task is not None and not task.done():
                task.cancel()
    if reading.result().strip().upper() != b"DONE":
        raise Bad("IDLE ends with DONE")
    return "IDLE terminated", None


# -- the selected mailbox -------------------------------------------------------------

async def _check(ctx: Context, command: Command) -> Done:
    return "CHECK completed", None


async def _close(ctx: Context, command: Command) -> Done:
    session = ctx.session
    selected = session.require_selected()
    if not selected.readonly:
        removed = await ctx.db.run(mailstore.expunge, session.user.user_id,
                                   selected.mailbox_id)
        if removed:
            session.notify()
    session.deselect()
    return f"{command.name} completed", None


async def _unselect(ctx: Context, command: Command) -> Done:
    ctx.session.deselect()
    return "UNSELECT completed", None


def _writable(selected: Selected) -> None:
    if selected.readonly:
        raise ReadOnly("The mailbox is open read-only (EXAMINE)")


async def _expunge(ctx: Context, command: Command) -> Done:
    session = ctx.session
    selected = session.require_selected()
    _writable(selected)
    ranges = None
    if isinstance(command, UidExpunge):
        ranges = selected.ranges(selected.by_uid(command.numbers))
        if not ranges:
            return f"{command.name} completed", None
    removed = await ctx.db.run(mailstore.expunge, session.user.user_id,
                               selected.mailbox_id, ranges)
    for line in session.expunged(removed):
        await ctx.channel.send(line)
    if removed:
        session.notify(told=True)
    return f"{command.name} completed", None


def _resolve(selected: Selected, uid: bool, numbers: Any) -> list[int]:
    return selected.by_uid(numbers) if uid else selected.by_sequence(numbers)


def _batches(
    metas: Sequence[mailstore.EntryMeta], by_size: bool = True,
) -> Iterator[list[mailstore.EntryMeta]]:
    """Entries in groups to open at once: by content size, or many summaries."""
    if not by_size:
        for start in range(0, len(metas), SUMMARY_BATCH):
            yield list(metas[start:start + SUMMARY_BATCH])
        return
    batch: list[mailstore.EntryMeta] = []
    size = 0
    for meta in metas:
        if batch and (size + meta.size > BATCH_BYTES or len(batch) >= BATCH_COUNT):
            yield batch
            batch, size = [], 0
        batch.append(meta)
        size += meta.size
    if batch:
        yield batch


async def _fetch(ctx: Context, command: Fetch) -> Done:
    session = ctx.session
    selected = session.require_selected()
    uids = _resolve(selected, command.uid, command.numbers)
    items = command.items
    if command.uid and FetchAtt("UID") not in items:
        items = (FetchAtt("UID"), *items)
    if command.changed_since is not None and _MODSEQ not in items:
        items = (*items, _MODSEQ)  # RFC 7162, 3.1.4.1
    if _MODSEQ in items:
        session.condstore = True
    if not uids:
        return f"{command.name} completed", None
    user_id = session.user.user_id
    content = fetching.needs_message(items)
    brief = content and summaries.covers(items)
    metas = await ctx.db.run(mailstore.entries, user_id, selected.mailbox_id,
                             selected.ranges(uids), brief)
    if command.changed_since is not None:
        metas = [m for m in metas if m.modseq > command.changed_since]
    newly_seen: set[int] = set()
    if fetching.marks_seen(items) and not selected.readonly:
        unseen = [m.uid for m in metas if "\\Seen" not in flag_set(m.flags)]
        if unseen:
            stored = await ctx.db.run(mailstore.store_flags, user_id,
                                      selected.mailbox_id, selected.ranges(unseen),
                                      "+", ["\\Seen"])
            metas = [mailstore.EntryMeta(m.uid, stored.flags.get(m.uid, m.flags),
                                         m.internal_date, m.size,
                                         stored.modseqs.get(m.uid, m.modseq), m.summary)
                     for m in metas]
            newly_seen = set(unseen)
            session.notify(told=True)
    tells_flags = FetchAtt("FLAGS") in items
    for batch in _batches(metas, by_size=not brief):
        messages: dict[int, fetching.Readable] = {}
        if brief:
            messages.update(await _briefly(session, selected, batch, items))
        elif content:
            messages.update(await session.messages(selected.mailbox_id,
                                                   [m.uid for m in batch]))
        lines = await _render(selected, batch, messages, items, newly_seen, content,
                              session.condstore)
        for meta in batch:
            if tells_flags or meta.uid in newly_seen:
                selected.flags[meta.uid] = meta.flags  # the client knows them now
                selected.modseqs[meta.uid] = meta.modseq
        await ctx.channel.send(b"".join(lines))
    return f"{command.name} completed", None


async def _briefly(session: Session, selected: Selected,
                   batch: list[mailstore.EntryMeta],
                   items: tuple[Any, ...]) -> dict[int, fetching.Readable]:
    """Summaries where they answer `items`, the messages themselves elsewhere."""
    found: dict[int, fetching.Readable] = {}
    for uid, summary in (await session.summaries(batch)).items():
        if summaries.covers(items, summary):
            found[uid] = summary
    missing = [m.uid for m in batch if m.uid not in found]
    if missing:
        found.update(await session.messages(selected.mailbox_id, missing))
    return found


async def _render(selected: Selected, batch: list[mailstore.EntryMeta],
                  messages: dict[int, fetching.Readable], items: tuple[Any, ...],
                  newly_seen: set[int], content: bool, condstore: bool) -> list[bytes]:
    def build() -> list[bytes]:
        lines = []
        for meta in batch:
            seq = selected.seq_of(meta.uid)
            if seq is None:
                lines.append(b"")
                continue
            lines.append(fetching.response(seq, meta, messages.get(meta.uid), items,
                                           with_flags=meta.uid in newly_seen,
                                           condstore=condstore))
        return lines

    # Rendering a structure or a section of a large message takes a while:
    # off the event loop, so that other sessions go on meanwhile.
    return await asyncio.to_thread(build) if content else build()


async def _store(ctx: Context, command: Store) -> Done:
    session = ctx.session
    selected = session.require_selected()
    _writable(selected)
    if command.unchanged_since is not None:
        session.condstore = True
    uids = _resolve(selected, command.uid, command.numbers)
    if not uids:
        return f"{command.name} completed", None
    try:
        stored = await ctx.db.run(mailstore.store_flags, session.user.user_id,
                                  selected.mailbox_id, selected.ranges(uids),
                                  command.mode, command.flags, command.unchanged_since)
    except mailstore.FlagsTooLong:
        raise Limit("Too many flags on one message") from None
    session.notify(told=True)
    for uid in uids:
        flags = stored.flags.get(uid)
        seq = selected.seq_of(uid)
        if flags is None or seq is None:
            continue
        selected.flags[uid] = flags
        modseq = stored.modseqs.get(uid)
        if modseq is not None:
            selected.modseqs[uid] = modseq
        uid_part = b" UID %d" % uid if command.uid else b""
        if not command.silent:
            known = selected.modseqs.get(uid, 1)
            await ctx.channel.send(b"* %d FETCH (FLAGS %s%s%s)\r\n" % (
                seq, flag_list(flags), uid_part, session.modseq_item(known)))
        elif session.condstore and modseq is not None:
            # RFC 7162, 3.1.3: the new mod-sequence is told even when silent.
            await ctx.channel.send(b"* %d FETCH (MODSEQ (%d)%s)\r\n"
                                   % (seq, modseq, uid_part))
    if stored.modified:
        numbers = stored.modified if command.uid else [
            seq for seq in map(selected.seq_of, stored.modified) if seq is not None]
        return f"{command.name} completed", f"MODIFIED {format_set(numbers).decode()}"
    return f"{command.name} completed", None


async def _copy(ctx: Context, command: Copy) -> Done:
    session = ctx.session
    selected = session.require_selected()
    move = command.name.endswith("MOVE")
    if move:
        _writable(selected)
    target = _name(command.mailbox)
    uids = _resolve(selected, command.uid, command.numbers)
    try:
        copied = await ctx.db.run(mailstore.copy, session.user.user_id,
                                  selected.mailbox_id, uids, target, move)
    except mailstore.MailboxNotFound:
        raise TryCreate(f"There is no mailbox {target}") from None
    except mailstore.MailboxRefused as error:
        raise Cannot(str(error)) from None
    if not copied.source:
        return f"{command.name} completed", None
    # Mail copied into the selected mailbox itself is for the refresh to tell.
    session.notify(told=target != selected.name)
    code = (f"COPYUID {copied.uidvalidity} {format_set(copied.source).decode()} "
            f"{format_set(copied.target).decode()}")
    if not move:
        return f"{command.name} completed", code
    await ctx.channel.send(f"* OK [{code}] Moved\r\n".encode())
    for line in session.expunged(copied.source):
        await ctx.channel.send(line)
    return f"{command.name} completed", None


async def _search(ctx: Context, command: Search) -> Done:
    if command.charset not in (None, "UTF-8", "US-ASCII"):
        raise BadCharset(f"Charset {command.charset} is not supported")
    session = ctx.session
    selected = session.require_selected()
    found: dict[int, int] = {}  # UID: mod-sequence
    if selected.uids:
        found = await _matching(session, selected, command)
    numbers = found if command.uid else [selected.seq_of(uid) or 0 for uid in found]
    words = b"".join(b" %d" % number for number in numbers)
    if uses_modseq(command.key):
        session.condstore = True
        if found:  # RFC 7162, 3.1.5: the highest mod-sequence of those found
            words += b" (MODSEQ %d)" % max(found.values())
    await ctx.channel.send(b"* SEARCH" + words + b"\r\n")
    return f"{command.name} completed", None


async def _matching(session: Session, selected: Selected,
                    command: Search) -> dict[int, int]:
    """The messages found, in UID order, with their mod-sequences."""
    searcher = Searcher(command.key, len(selected.uids), selected.uids[-1])
    need = needs(command.key)
    if need is Need.INDEX:
        return await _matching_by_index(session, selected, searcher)
    brief = need is Need.SUMMARY
    metas = await session.db.run(mailstore.entries, session.user.user_id,
                                 selected.mailbox_id, selected.ranges(selected.uids), brief)
    content = need is not Need.NOTHING
    found: dict[int, int] = {}
    for batch in _batches(metas, by_size=not brief):
        messages: dict[int, fetching.Readable] = {}
        if brief:
            messages.update(await _briefly(session, selected, batch, _HEADER_ITEMS))
        elif content:
            messages.update(await session.messages(selected.mailbox_id,
                                                   [m.uid for m in batch]))
        facts = [Facts(selected.seq_of(m.uid) or 0, m.uid, flag_set(m.flags),
                       m.internal_date, m.size, messages.get(m.uid), m.modseq)
                 for m in batch if selected.seq_of(m.uid)]

        def judge(facts: list[Facts] = facts) -> list[tuple[int, int]]:
            return [(f.uid, f.modseq) for f in facts if searcher.matches(f)]

        found.update(await asyncio.to_thread(judge) if content else judge())
    return found


async def _matching_by_index(session: Session, selected: Selected,
                             searcher: Searcher) -> dict[int, int]:
    """A search by the fields the index keeps: the index, and summaries where
    it has no record yet; the records made on the way are written to it."""
    user_id, mailbox_id = session.user.user_id, selected.mailbox_id
    if reads_columns(searcher.key) or uses_modseq(searcher.key):
        metas = await session.db.run(mailstore.entries, user_id, mailbox_id,
                                     selected.ranges(selected.uids))
    else:  # numbers and the index alone: no need to read the entries
        metas = [mailstore.EntryMeta(uid, "", 0.0, 0) for uid in selected.uids]
    known = await session.index(mailbox_id)
    missing = [m.uid for m in metas if m.uid not in known]
    others: dict[int, fetching.Readable] = {}
    if missing:
        briefs = await session.db.run(mailstore.entries, user_id, mailbox_id,
                                      selected.ranges(missing), True)
        for batch in _batches(briefs, by_size=False):
            others.update(await _briefly(session, selected, batch, _HEADER_ITEMS))
    words = required_words(searcher.key)

    def judge() -> tuple[list[tuple[int, int]], dict[int, str]]:
        found: list[tuple[int, int]] = []
        made: dict[int, str] = {}
        for meta in metas:
            line = known.get(meta.uid)
            if line is not None and not all(word in line for word in words):
                continue  # lacks a value the key requires
            seq = selected.seq_of(meta.uid)
            if not seq:
                continue
            message: Indexed | fetching.Readable | None = None
            if line is not None:
                message = Indexed(line)
            else:
                message = other = others.get(meta.uid)
                if other is not None:
                    record = _record(meta.uid, other)
                    if record is not None:
                        made[meta.uid] = record
            facts = Facts(seq, meta.uid, flag_set(meta.flags), meta.internal_date,
                          meta.size, message, meta.modseq)
            if searcher.matches(facts):
                found.append((meta.uid, meta.modseq))
        return found, made

    found, made = await asyncio.to_thread(judge)
    if made:
        await session.extend_index(selected, known, made)
    return dict(found)


def _record(uid: int, message: fetching.Readable) -> str | None:
    if isinstance(message, summaries.Summary):
        return index.record(uid, message, message.sent_day)
    sent = message.date()
    return index.record(uid, message, sent.date() if sent else None)


_MODSEQ = FetchAtt("MODSEQ")
# What header SEARCH keys read of a summary: its header section.
_HEADER_ITEMS = (FetchAtt("RFC822.HEADER"),)

_HANDLERS: dict[str, tuple[Handler, frozenset[State]]] = {
    "CAPABILITY": (_capability, ANY),
    "NOOP": (_noop, ANY),
    "LOGOUT": (_logout, ANY),
    "ID": (_id, ANY),
    "STARTTLS": (_starttls, UNAUTHENTICATED),
    "LOGIN": (_login, UNAUTHENTICATED),
    "AUTHENTICATE": (_authenticate, UNAUTHENTICATED),
    "SELECT": (_select, SIGNED_IN),
    "EXAMINE": (_select, SIGNED_IN),
    "CREATE": (_create, SIGNED_IN),
    "DELETE": (_delete, SIGNED_IN),
    "RENAME": (_rename, SIGNED_IN),
    "SUBSCRIBE": (_subscribe, SIGNED_IN),
    "UNSUBSCRIBE": (_subscribe, SIGNED_IN),
    "LIST": (_list, SIGNED_IN),
    "LSUB": (_list, SIGNED_IN),
    "STATUS": (_status, SIGNED_IN),
    "APPEND": (_append, SIGNED_IN),
    "ENABLE": (_enable, SIGNED_IN),
    "NAMESPACE": (_namespace, SIGNED_IN),
    "IDLE": (_idle, SIGNED_IN),
    "CHECK": (_check, SELECTED),
    "CLOSE": (_close, SELECTED),
    "UNSELECT": (_unselect, SELECTED),
    "EXPUNGE": (_expunge, SELECTED),
    "UID EXPUNGE": (_expunge, SELECTED),
    "SEARCH": (_search, SELECTED),
    "UID SEARCH": (_search, SELECTED),
    "FETCH": (_fetch, SELECTED),
    "UID FETCH": (_fetch, SELECTED),
    "STORE": (_store, SELECTED),
    "UID STORE": (_store, SELECTED),
    "COPY": (_copy, SELECTED),
    "UID COPY": (_copy, SELECTED),
    "MOVE": (_copy, SELECTED),
    "UID MOVE": (_copy, SELECTED),
}
