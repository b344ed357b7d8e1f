"""One IMAP session's state: who is signed in, what is selected, what the client knows.

States (RFC 3501, 3): not authenticated, authenticated, selected, logout. The
signed-in user's keys (`vault.Keys`) live here and nowhere else: the mailbox
key is in memory only while the session holds it, and goes with the session.

The selected mailbox is held as the client sees it: the UIDs in sequence
order (message n is `uids[n - 1]`) and the flags last told. `refresh` compares
that with the store and writes the untagged responses that bring the client
up to date: EXISTS for new mail, FETCH for flags changed elsewhere, and
EXPUNGE only where RFC 3501 7.4.1 allows it (never while a FETCH, STORE or
SEARCH by sequence number is answered: such a refresh leaves removed
messages in place and marks the view stale, and the next allowed point
reports them). It asks the database only when the hub says this user's mail
changed, unless the client asked (NOOP, CHECK, IDLE, SELECT).

Before a message is shown it is settled: delivery seals it to the user's
public key (one public-key operation per read) with a size that is not the
message's; settling re-seals it under the mailbox key, records its true
size, so RFC822.SIZE always equals the length of BODY[], and keeps its
summary (`beep_mail.imap.summary`), from which ENVELOPE, BODYSTRUCTURE,
header fields and header SEARCH keys are answered without the message.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from beep_mail import logs, vault
from beep_mail.crypto.openpgp import IntegrityError, OpenPGPError
from beep_mail.imap import index, render
from beep_mail.imap.errors import Bad, Bye, ServerBug
from beep_mail.imap.hub import Hub
from beep_mail.imap.parser import SequenceSet, in_ranges
from beep_mail.imap.summary import Summary, SummaryError
from beep_mail.imap.summary import build as build_summary
from beep_mail.store import mailstore
from beep_mail.store.engine import Database

log = logging.getLogger("beepmail.imap")

Send = Callable[[bytes], Awaitable[None]]

CACHE_BYTES = 8 * 1024 * 1024  # parsed messages kept per session
SETTLE_BATCH = 100


class State(Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


def flag_set(flags: str) -> set[str]:
    return set(flags.split()) if flags else set()


def flag_list(flags: str | Iterable[str]) -> bytes:
    items = flags.split() if isinstance(flags, str) else list(flags)
    return b"(" + " ".join(items).encode("ascii", "replace") + b")"


@dataclass
class Selected:
    """The selected mailbox as the client knows it."""

    mailbox_id: int
    name: str
    readonly: bool
    uidvalidity: int
    uidnext: int
    uids: list[int] = field(default_factory=list)
    flags: dict[int, str] = field(default_factory=dict)
    modseqs: dict[int, int] = field(default_factory=dict)  # as last told or read
    high: int = 0  # the highest UID ever announced
    stale: bool = False  # removed messages not yet reported
    highestmodseq: int = 1

    def seq_of(self, uid: int) -> int | None:
        index = bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    def by_sequence(self, numbers: SequenceSet) -> list[int]:
        """UIDs of the messages a sequence set names; BAD for numbers beyond."""
        count = len(self.uids)
        if not count:
            if numbers.has_star():
                return []  # "1:*" in an empty mailbox names nothing
            raise Bad("The mailbox is empty: no message numbers are valid")
        # RFC 3501, 9 (seq-number): a number above EXISTS is an error, even
        # in a range that also names messages that exist.
        if any(number > count for pair in numbers.ranges for number in pair):
            raise Bad(f"Message numbers go from 1 to {count}")
        ranges = numbers.resolve(count)
        return [self.uids[n - 1] for low, high in ranges
                for n in range(low, min(high, count) + 1)]

    def by_uid(self, numbers: SequenceSet) -> list[int]:
        """UIDs of the messages a UID set names; absent ones are left out."""
        if not self.uids:
            return []
        ranges = numbers.resolve(self.uids[-1])
        if len(ranges) == 1:
            low, high = ranges[0]
            start = bisect_left(self.uids, low)
            return self.uids[start : bisect_left(self.uids, high + 1)]
        return [uid for uid in self.uids if in_ranges(ranges, uid)]

    def ranges(self, uids: Sequence[int]) -> list[tuple[int, int]]:
        """Sorted UIDs as ranges of neighbours in this view.

        A range may span UIDs the view does not hold: they are expunged, and
        new mail always has higher UIDs than any the view holds.
        """
        found: list[tuple[int, int]] = []
        last_index = -2
        for uid in sorted(uids):
            index = bisect_left(self.uids, uid)
            if found and index == last_index + 1:
                found[-1] = (found[-1][0], uid)
            else:
                found.append((uid, uid))
            last_index = index
        return found


class MessageCache:
    """Parsed messages by (mailbox, UID), least recently used first out."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[tuple[int, int], render.Message] = OrderedDict()

    def get(self, key: tuple[int, int]) -> render.Message | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[int, int], message: render.Message) -> None:
        if message.size > self.limit or key in self._items:
            return
        self._items[key] = message
        self.size += message.size
        while self.size > self.limit:
            _, dropped = self._items.popitem(last=False)
            self.size -= dropped.size

    def clear(self) -> None:
        self._items.clear()
        self.size = 0


class Session:
    def __init__(self, db: Database, hub: Hub) -> None:
        self.db = db
        self.hub = hub
        self.state = State.NOT_AUTHENTICATED
        self.keys: vault.Keys | None = None
        self.selected: Selected | None = None
        self.cache = MessageCache()
        self.version = 0
        # CONDSTORE (RFC 7162, 3.1): once a command enabled it, every FETCH
        # response that tells flags tells the mod-sequence too.
        self.condstore = False

    # -- who ------------------------------------------------------------------------

    def sign_in(self, keys: vault.Keys) -> None:
        self.keys = keys
        self.state = State.AUTHENTICATED

    @property
    def user(self) -> vault.Keys:
        if self.keys is None:
            raise Bad("Sign in first")
        return self.keys

    def logout(self) -> None:
        self.deselect()
        self.keys = None
        self.state = State.LOGOUT

    # -- the selected mailbox --------------------------------------------------------

    def deselect(self) -> None:
        self.selected = None
        self.cache.clear()
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    def require_selected(self) -> Selected:
        if self.selected is None:
            raise Bad("Select a mailbox first")
        return self.selected

    async def select(self, row: mailstore.MailboxRow, readonly: bool) -> Selected:
        self.deselect()
        await self.settle(row.id)
        self.version = self.hub.version(self.user.address)
        current = await self.db.run(mailstore.view, self.user.user_id, row.id)
        if current.mailbox is None:
            raise Bad("The mailbox was deleted meanwhile")
        box = current.mailbox
        selected = Selected(box.id, box.name, readonly, box.uidvalidity, box.uidnext,
                            highestmodseq=box.highestmodseq)
        selected.uids = [uid for uid, _, _ in current.entries]
        selected.flags = {uid: flags for uid, flags, _ in current.entries}
        selected.modseqs = {uid: modseq for uid, _, modseq in current.entries}
        selected.high = max(selected.uids[-1] if selected.uids else 0, box.uidnext - 1)
        self.selected = selected
        self.state = State.SELECTED
        return selected

    def changed_elsewhere(self) -> bool:
        keys = self.keys
        return keys is not None and self.hub.version(keys.address) != self.version

    def notify(self, told: bool = False) -> None:
        """Tell other sessions of this user that mail changed.

        `told`: this session already told its client all of the change (its
        own STORE or EXPUNGE), so it need not look again on its own account.
        """
        address = self.user.address
        current = self.hub.version(address) == self.version
        self.hub.notify(address)
        if told and current:
            self.version = self.hub.version(address)

    async def refresh(self, send: Send, *, expunge: bool, force: bool = False) -> None:
        """Bring the client up to date with the store, as far as allowed now."""
        selected = self.selected
        if selected is None:
            return
        if not (force or self.changed_elsewhere() or (expunge and selected.stale)):
            return
        self.version = self.hub.version(self.user.address)
        await self.settle(selected.mailbox_id, above=selected.high)
        current = await self.db.run(mailstore.view, self.user.user_id,
                                    selected.mailbox_id)
        if current.mailbox is None:
            raise Bye("The selected mailbox was deleted by another session")
        now = {uid: (flags, modseq) for uid, flags, modseq in current.entries}
        lines: list[bytes] = []
        if expunge:
            lines.extend(self._report_removed(selected, now))
        else:
            selected.stale = selected.stale or any(u not in now for u in selected.uids)
        lines.extend(self._report_flags(selected, now))
        new = [entry for entry in current.entries if entry[0] > selected.high]
        if new:
            selected.uids.extend(uid for uid, _, _ in new)
            selected.flags.update((uid, flags) for uid, flags, _ in new)
            selected.modseqs.update((uid, modseq) for uid, _, modseq in new)
            selected.high = new[-1][0]
            lines.append(b"* %d EXISTS\r\n" % len(selected.uids))
        selected.uidnext = current.mailbox.uidnext
        selected.highestmodseq = current.mailbox.highestmodseq
        for line in lines:
            await send(line)

    def _report_removed(self, selected: Selected, now: Container[int]) -> list[bytes]:
        lines: list[bytes] = []
        kept: list[int] = []
        for position, uid in enumerate(selected.uids):
            if uid in now:
                kept.append(uid)
            else:
                lines.append(b"* %d EXPUNGE\r\n" % (position + 1 - len(lines)))
                selected.flags.pop(uid, None)
                selected.modseqs.pop(uid, None)
        selected.uids = kept
        selected.stale = False
        return lines

    def _report_flags(self, selected: Selected,
                      now: dict[int, tuple[str, int]]) -> list[bytes]:
        lines: list[bytes] = []
        for position, uid in enumerate(selected.uids):
            found = now.get(uid)
            if found is None:
                continue
            flags, modseq = found
            told = selected.flags.get(uid)
            if flags == told and (modseq == selected.modseqs.get(uid) or not self.condstore):
                continue
            selected.flags[uid] = flags
            selected.modseqs[uid] = modseq
            lines.append(b"* %d FETCH (UID %d FLAGS %s%s)\r\n"
                         % (position + 1, uid, flag_list(flags), self.modseq_item(modseq)))
        return lines

    def modseq_item(self, modseq: int) -> bytes:
        """" MODSEQ (n)" for a FETCH response once CONDSTORE is on, else nothing."""
        return b" MODSEQ (%d)" % modseq if self.condstore else b""

    def expunged(self, uids: Iterable[int]) -> list[bytes]:
        """Drop messages this session removed; the EXPUNGE responses to send.

        Removals by other sessions that this one has seen but not told stay
        marked (`stale`): the refresh after this command tells them.
        """
        selected = self.require_selected()
        gone = set(uids)
        stale = selected.stale
        lines = self._report_removed(selected, {u for u in selected.uids if u not in gone})
        selected.stale = stale
        return lines

    # -- reading and settling ----------------------------------------------------------

    async def settle(self, mailbox_id: int, above: int = 0) -> int:
        """Re-seal entries delivery sealed to the user's key; how many."""
        keys = self.user
        cursor, settled = 0, 0
        while True:
            batch = await self.db.run(mailstore.unsettled, keys.user_id, mailbox_id,
                                      above, cursor, SETTLE_BATCH)
            if not batch:
                return settled
            cursor = batch[-1][0]
            done = await asyncio.to_thread(_reseal, keys, batch)
            if done:
                await self.db.run(mailstore.reseal, keys.user_id, done)
                settled += len(done)
            if len(batch) < SETTLE_BATCH:
                return settled

    async def messages(self, mailbox_id: int,
                       uids: Sequence[int]) -> dict[int, render.Message]:
        """The parsed messages, from the cache or opened from the store."""
        found: dict[int, render.Message] = {}
        missing: list[int] = []
        for uid in uids:
            cached = self.cache.get((mailbox_id, uid))
            if cached is None:
                missing.append(uid)
            else:
                found[uid] = cached
        if missing:
            blobs = await self.db.run(mailstore.contents, self.user.user_id,
                                      mailbox_id, missing)
            opened = await asyncio.to_thread(_open, self.user, blobs)
            for uid, message in opened.items():
                self.cache.put((mailbox_id, uid), message)
            found.update(opened)
        return found

    async def summaries(self, metas: Sequence[mailstore.EntryMeta]) -> dict[int, Summary]:
        """The summaries of entries read with theirs, opened; by UID."""
        return await asyncio.to_thread(_open_summaries, self.user, metas)

    async def index(self, mailbox_id: int) -> dict[int, str]:
        """The mailbox's search index as stored: records by UID (`beep_mail.imap.index`)."""
        sealed = await self.db.run(mailstore.index_chunks, self.user.user_id, mailbox_id)
        if not sealed:
            return {}
        return await asyncio.to_thread(_open_index, self.user, mailbox_id, sealed)

    async def extend_index(self, selected: Selected, known: dict[int, str],
                           made: dict[int, str]) -> None:
        """Write again the parts of the index that the records `made` add to.

        A part keeps the records of messages still in the view, `known` ones
        and new ones alike; the store writes it only if all are still there.
        """
        in_view = set(selected.uids)
        parts: dict[int, list[int]] = {}
        for uid in sorted(set(known) | set(made)):
            if uid in in_view:
                parts.setdefault(index.chunk_of(uid), []).append(uid)
        touched = {index.chunk_of(uid) for uid in made}

        def seal() -> dict[int, tuple[list[int], bytes]]:
            return {chunk: (uids, vault.seal_index(
                        self.user, selected.mailbox_id, chunk,
                        index.write([made[u] if u in made else known[u]
                                     for u in uids])))
                    for chunk, uids in parts.items() if chunk in touched}

        chunks = await asyncio.to_thread(seal)
        await self.db.run(mailstore.put_index_chunks, self.user.user_id,
                          selected.mailbox_id, chunks)


def _open(keys: vault.Keys, blobs: dict[int, bytes]) -> dict[int, render.Message]:
    opened: dict[int, render.Message] = {}
    for uid, blob in blobs.items():
        try:
            opened[uid] = render.Message(vault.read(keys, blob))
        except (vault.VaultError, OpenPGPError) as error:
            logs.event(log, "unreadable", logging.ERROR, uid=uid,
                       reason=type(error).__name__)
            raise ServerBug(f"Message UID {uid} cannot be opened; "
                            "tell your administrator") from None
    return opened


def _open_index(keys: vault.Keys, mailbox_id: int,
                sealed: dict[int, bytes]) -> dict[int, str]:
    opener = vault.Opener(keys)
    found: dict[int, str] = {}
    for chunk, blob in sealed.items():
        try:
            found.update(index.parse(opener.read_index(mailbox_id, chunk, blob)))
        except (IntegrityError, ValueError) as error:
            # A cache: the search reads the summaries, and writes it again.
            logs.event(log, "index_unreadable", logging.WARNING, chunk=chunk,
                       reason=type(error).__name__)
    return found


def _open_summaries(keys: vault.Keys,
                    metas: Sequence[mailstore.EntryMeta]) -> dict[int, Summary]:
    opener = vault.Opener(keys)
    opened: dict[int, Summary] = {}
    for meta in metas:
        if meta.summary is None:
            continue  # settled after this command looked: it opens the message
        try:
            opened[meta.uid] = Summary(opener.read(meta.summary))
        except (vault.VaultError, SummaryError) as error:
            logs.event(log, "unreadable", logging.ERROR, uid=meta.uid,
                       reason=type(error).__name__)
            raise ServerBug(f"Message UID {meta.uid} cannot be opened; "
                            "tell your administrator") from None
    return opened


def _reseal(keys: vault.Keys,
            batch: list[tuple[int, bytes]]) -> list[mailstore.Settled]:
    done: list[mailstore.Settled] = []
    for entry_id, blob in batch:
        try:
            plaintext = vault.read(keys, blob)
        except (vault.VaultError, OpenPGPError) as error:
            # Left as it is: a later `beepmail user recover` may open it.
            logs.event(log, "unsettled", logging.WARNING, entry=entry_id,
                       reason=type(error).__name__)
            continue
        if not blob.startswith(vault.MAILBOX_SEALED):
            blob = vault.seal_for_mailbox(keys, plaintext)
        summary = vault.seal_for_mailbox(keys, build_summary(plaintext))
        done.append(mailstore.Settled(entry_id, blob, len(plaintext), summary))
    return done
