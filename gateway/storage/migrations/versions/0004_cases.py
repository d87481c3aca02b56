"""cases: everything done under one authorization, and each source's status

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

import gateway.storage.models  # column types used below

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

When = gateway.storage.models.UTCDateTime(timezone=True)


def upgrade():
    op.create_table(
        'cases',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('authorization_id', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('recipient', sa.String(length=255), nullable=True),
        sa.Column('unrouted', sa.JSON(), nullable=False),
        sa.Column('created_at', When, nullable=False),
        sa.Column('updated_at', When, nullable=False),
        sa.Column('approved_by', sa.String(length=255), nullable=True),
        sa.Column('approved_at', When, nullable=True),
        sa.Column('completed_at', When, nullable=True),
        sa.Column('closed_at', When, nullable=True),
        sa.Column('closed_reason', sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(['authorization_id'], ['authorizations.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('authorization_id'),
    )
    op.create_index('ix_cases_state', 'cases', ['state'])
    op.create_table(
        'case_sources',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('case_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('discloser', sa.String(length=255), nullable=False),
        sa.Column('auto', sa.String(length=8), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('started', sa.Boolean(), nullable=False),
        sa.Column('deadline_at', When, nullable=True),
        sa.Column('reminders', sa.Integer(), nullable=False),
        sa.Column('next_reminder_at', When, nullable=True),
        sa.Column('next_pull_at', When, nullable=True),
        sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('case_id', 'name'),
    )
    op.create_index('ix_case_sources_case_id', 'case_sources', ['case_id'])
    with op.batch_alter_table('received_bundles') as batch:
        batch.add_column(sa.Column('in_reply_to', sa.String(length=64), nullable=True))
        batch.create_index('ix_received_bundles_in_reply_to', ['in_reply_to'])


def downgrade():
    with op.batch_alter_table('received_bundles') as batch:
        batch.drop_index('ix_received_bundles_in_reply_to')
        batch.drop_column('in_reply_to')
    op.drop_table('case_sources')
    op.drop_table('cases')
