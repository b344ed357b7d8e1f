"""entry summary and mod-sequences: what IMAP lists and resynchronises by

Revision ID: 0005
Revises: 0004

A mailbox entry gets its summary (ENVELOPE, structure and header section,
sealed like its content; beep_mail.imap.summary) and the mod-sequence of its
last change; a mailbox gets its highest mod-sequence (CONDSTORE, RFC 7162).

On SQLite the entries table is rebuilt so that both new columns come before
the content: a row's columns are stored in order and content overflows into
further pages, so a column after it costs a walk through those pages on
every read of a whole mailbox's summaries or flags.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # Existing mailboxes and messages start at mod-sequence 1: a client that
    # synchronised before has nothing to compare with and fetches flags in
    # full. Existing entries get their summary when a session of their owner
    # settles them, as entries sealed at delivery do.
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("highestmodseq", sa.BigInteger(), nullable=False,
                                      server_default="1"))
    # PostgreSQL keeps large values apart from the row (TOAST): order is no matter.
    before = "content" if sqlite else None
    with op.batch_alter_table("mailbox_entries", schema=None,
                              recreate="always" if sqlite else "auto") as batch_op:
        batch_op.add_column(sa.Column("modseq", sa.BigInteger(), nullable=False,
                                      server_default="1"), insert_before=before)
        batch_op.add_column(sa.Column("summary", sa.LargeBinary(), nullable=True),
                            insert_before=before)
    # What SELECT and every refresh read of a whole mailbox, from the index
    # alone; and the entries a session must settle, without a scan.
    op.create_index("ix_mailbox_entries_listing", "mailbox_entries",
                    ["mailbox_id", "uid", "user_id", "flags", "modseq"])
    op.create_index("ix_mailbox_entries_unsettled", "mailbox_entries", ["mailbox_id"],
                    sqlite_where=sa.text("summary IS NULL"),
                    postgresql_where=sa.text("summary IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_mailbox_entries_unsettled", table_name="mailbox_entries")
    op.drop_index("ix_mailbox_entries_listing", table_name="mailbox_entries")
    with op.batch_alter_table("mailbox_entries", schema=None) as batch_op:
        batch_op.drop_column("summary")
        batch_op.drop_column("modseq")
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.drop_column("highestmodseq")
