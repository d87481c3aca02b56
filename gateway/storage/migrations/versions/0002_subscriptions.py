"""FHIR Subscriptions and the trigger inbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 06:10:00
"""
import sqlalchemy as sa
from alembic import op

import gateway.storage.models  # column types used below

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('fhir_subscriptions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=255), nullable=False),
    sa.Column('patient_ref', sa.String(length=64), nullable=False),
    sa.Column('topic', sa.String(length=1024), nullable=False),
    sa.Column('remote_id', sa.String(length=64), nullable=True),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.String(length=16), nullable=False),
    sa.Column('heartbeat_s', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('events_seen', sa.BigInteger(), nullable=False),
    sa.Column('last_event_at', gateway.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_heartbeat_at', gateway.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_missed_at', gateway.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', gateway.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('closed_at', gateway.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('fhir_subscriptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fhir_subscriptions_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_fhir_subscriptions_status'), ['status'], unique=False)

    op.create_table('trigger_inbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('subscription_id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('event_number', sa.BigInteger(), nullable=True),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('focus', sa.JSON(), nullable=False),
    sa.Column('received_at', gateway.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('processed_at', gateway.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['subscription_id'], ['fhir_subscriptions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('subscription_id', 'event_number')
    )
    with op.batch_alter_table('trigger_inbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trigger_inbox_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_trigger_inbox_processed_at'), ['processed_at'], unique=False)


def downgrade():
    with op.batch_alter_table('trigger_inbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trigger_inbox_processed_at'))
        batch_op.drop_index(batch_op.f('ix_trigger_inbox_owner'))
    op.drop_table('trigger_inbox')
    with op.batch_alter_table('fhir_subscriptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fhir_subscriptions_status'))
        batch_op.drop_index(batch_op.f('ix_fhir_subscriptions_owner'))
    op.drop_table('fhir_subscriptions')
