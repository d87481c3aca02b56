"""the second-opinion center's requests: one per patient, each provider's answer,
what arrived, one-time form tokens and status links; a received bundle's Consent id

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

from gateway.storage.models import UTCDateTime

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('received_bundles', schema=None) as batch_op:
        batch_op.add_column(sa.Column('consent_id', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_received_bundles_consent_id', ['consent_id'])
    op.create_table(
        'center_requests',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('authorization_id', sa.String(length=64), nullable=False, unique=True),
        sa.Column('jws', sa.Text(), nullable=False),
        sa.Column('patient', sa.Text(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('expires_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('created_by', sa.String(length=255), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('completed_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('opened_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('opinion_ready_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('revoked_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('revocation_jws', sa.Text(), nullable=True),
    )
    op.create_index('ix_center_requests_state', 'center_requests', ['state'])
    op.create_table(
        'center_providers',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('request_id', sa.String(length=32),
                  sa.ForeignKey('center_requests.id', ondelete='CASCADE'), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('organization', sa.String(length=255), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('sent_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('acknowledged_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('deadline_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('reminders', sa.Integer(), nullable=False),
        sa.Column('next_reminder_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('revocation_sent_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.UniqueConstraint('request_id', 'name'),
    )
    op.create_index('ix_center_providers_request_id', 'center_providers', ['request_id'])
    op.create_table(
        'center_arrivals',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('provider_id', sa.String(length=32),
                  sa.ForeignKey('center_providers.id', ondelete='CASCADE'), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('ref', sa.String(length=64), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.Column('arrived_at', UTCDateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('kind', 'ref'),
    )
    op.create_index('ix_center_arrivals_provider_id', 'center_arrivals', ['provider_id'])
    op.create_table(
        'center_tokens',
        sa.Column('sha256', sa.String(length=64), primary_key=True),
        sa.Column('purpose', sa.String(length=16), nullable=False),
        sa.Column('request_id', sa.String(length=32),
                  sa.ForeignKey('center_requests.id', ondelete='CASCADE'), nullable=True),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('used_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('revoked_at', UTCDateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_center_tokens_request_id', 'center_tokens', ['request_id'])


def downgrade() -> None:
    for table in ('center_tokens', 'center_arrivals', 'center_providers', 'center_requests'):
        op.drop_table(table)
    with op.batch_alter_table('received_bundles', schema=None) as batch_op:
        batch_op.drop_index('ix_received_bundles_consent_id')
        batch_op.drop_column('consent_id')
