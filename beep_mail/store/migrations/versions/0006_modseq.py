"""mod-sequences for CONDSTORE: per mailbox and per message

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing messages and mailboxes start at 1: a client that synchronised
    # before has no mod-sequence to compare with and fetches flags in full.
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("highestmodseq", sa.BigInteger(), nullable=False,
                                      server_default="1"))
    with op.batch_alter_table("mailbox_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("modseq", sa.BigInteger(), nullable=False,
                                      server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("mailbox_entries", schema=None) as batch_op:
        batch_op.drop_column("modseq")
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.drop_column("highestmodseq")
