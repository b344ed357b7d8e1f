"""keys and sealed local content

Revision ID: 0002
Revises: 0001


"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    op.create_table('keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('owner', sa.String(length=256), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('pinned', sa.Boolean(), nullable=False),
    sa.Column('public_key', sa.Text(), nullable=False),
    sa.Column('secret_key', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'owner', 'fingerprint')
    )
    with op.batch_alter_table('keys', schema=None) as batch_op:
        batch_op.create_index('ix_keys_owner', ['kind', 'owner', 'state'], unique=False)

    op.create_table('mailbox_keys',
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('wrapped', sa.LargeBinary(), nullable=False),
    sa.Column('user_key', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('user_id')
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('local_content', sa.LargeBinary(), nullable=True))
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.alter_column('uidvalidity', existing_type=sa.Integer(),
                              type_=sa.BigInteger(), existing_nullable=False)




def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.alter_column('uidvalidity', existing_type=sa.BigInteger(),
                              type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('local_content')

    op.drop_table('mailbox_keys')
    with op.batch_alter_table('keys', schema=None) as batch_op:
        batch_op.drop_index('ix_keys_owner')

    op.drop_table('keys')

