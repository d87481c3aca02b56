"""web sign-in: failed attempts per account name and per client address, and lockouts

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

from gateway.storage.models import UTCDateTime

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sign_in_failures',
        sa.Column('scope', sa.String(length=8), primary_key=True),
        sa.Column('key_sha256', sa.String(length=64), primary_key=True),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('window_started_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('lockouts', sa.Integer(), nullable=False),
        sa.Column('locked_until', UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_failure_at', UTCDateTime(timezone=True), nullable=False))
    op.create_index('ix_sign_in_failures_last_failure_at', 'sign_in_failures',
                    ['last_failure_at'])


def downgrade() -> None:
    op.drop_table('sign_in_failures')
