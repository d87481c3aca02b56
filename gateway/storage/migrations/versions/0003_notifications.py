"""notifications: the outbox of events for webhooks and email

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 06:10:00
"""
import sqlalchemy as sa
from alembic import op

import gateway.storage.models  # column types used below

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('notifications',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('channel', sa.String(length=80), nullable=False),
    sa.Column('event_type', sa.String(length=32), nullable=False),
    sa.Column('case_id', sa.String(length=128), nullable=True),
    sa.Column('transfer_id', sa.String(length=128), nullable=True),
    sa.Column('authorization_id', sa.String(length=128), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', gateway.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', gateway.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', gateway.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index('ix_notifications_due', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_notifications_authorization_id'),
                              ['authorization_id'], unique=False)


def downgrade():
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notifications_authorization_id'))
        batch_op.drop_index('ix_notifications_due')
    op.drop_table('notifications')
