"""entry summary: ENVELOPE, structure and header section, sealed beside content

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Entries stored before this revision get their summary when a session
    # of their owner settles them, as entries sealed at delivery do.
    with op.batch_alter_table("mailbox_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("summary", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mailbox_entries", schema=None) as batch_op:
        batch_op.drop_column("summary")
