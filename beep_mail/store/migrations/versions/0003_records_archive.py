"""records archive

Revision ID: 0003
Revises: 0002


"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    op.create_table('archive_checkpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('entries', sa.Integer(), nullable=False),
    sa.Column('head_hash', sa.String(length=64), nullable=False),
    sa.Column('signer', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('archive_entries',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('direction', sa.String(length=10), nullable=False),
    sa.Column('queue_id', sa.String(length=32), nullable=False),
    sa.Column('mail_from', sa.String(length=254), nullable=False),
    sa.Column('recipients', sa.Text(), nullable=False),
    sa.Column('message_id_header', sa.String(length=998), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('decision', sa.String(length=500), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=True),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('retain_until', sa.Float(), nullable=False),
    sa.Column('hold_reason', sa.Text(), nullable=True),
    sa.Column('held_at', sa.Float(), nullable=True),
    sa.Column('purged_at', sa.Float(), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('archive_entries', schema=None) as batch_op:
        batch_op.create_index('ix_archive_at', ['at'], unique=False)
        batch_op.create_index('ix_archive_message_id', ['message_id_header'], unique=False)




def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table('archive_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_archive_message_id')
        batch_op.drop_index('ix_archive_at')

    op.drop_table('archive_entries')
    op.drop_table('archive_checkpoints')

