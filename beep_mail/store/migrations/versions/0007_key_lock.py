"""key lock: how the password turns into a user key's passphrase

Revision ID: 0007
Revises: 0006

NULL for every key stored before: their passphrase is the password itself
(or the site secret), and stays so until the user's next sign-in upgrades it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lock", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.drop_column("lock")
