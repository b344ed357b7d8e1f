"""The running gateway journals every accepted message, checkpoints the archive
and lets client addresses expire, without anyone running a command."""

from __future__ import annotations

from beep_mail.archive import checkpoint
from beep_mail.archive.verify import verify_archive
from beep_mail.store import audit
from tests.support import GatewayThread, Site, message, submit, wait_for


def test_journal_checkpoint_and_expiry_while_serving(site: Site) -> None:
    alice, carol = site.add_user("alice"), site.add_user("carol")
    settings = site.settings(BEEPMAIL_ARCHIVE__CHECKPOINT_INTERVAL="0.2",
                             BEEPMAIL_PRIVACY__CLIENT_ADDRESS_DAYS="0")
    db = site.db()
    try:
        with GatewayThread(settings) as gateway:
            submit(site, gateway.submission, alice, [carol], message(alice, carol))
            made = wait_for(lambda: (lambda cp: cp if cp and cp.entries == 1 else None)(
                checkpoint.latest(db.engine)), what="a checkpoint over one entry")
            # The sign-in was audited with the client's address, which expires.
            wait_for(lambda: all(e.client_addr is None
                                 for e in audit.list_events(db.engine, limit=1000)),
                     what="client addresses expired")
        events = audit.list_events(db.engine, limit=1000)
        assert any(e.action == "smtp.auth-ok" and e.client_addr_expired for e in events)
        assert audit.verify(db.engine)[0]
        report = verify_archive(db.engine)
        assert report.ok and report.entries == 1 and report.checkpoints >= 1
        assert made.signer == site.domain_key().fingerprint
    finally:
        db.close()
