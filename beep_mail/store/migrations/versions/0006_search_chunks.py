"""search chunks: a mailbox's sealed index of the header fields SEARCH reads

Revision ID: 0006
Revises: 0005

A cache (beep_mail.imap.index): empty after the upgrade, filled by searches.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "search_chunks",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("mailbox_id", "chunk"),
    )


def downgrade() -> None:
    op.drop_table("search_chunks")
