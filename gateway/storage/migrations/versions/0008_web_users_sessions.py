"""web pages: people who sign in with a password, and signed-in browser sessions

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

from gateway.storage.models import UTCDateTime

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'web_users',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('username', sa.String(length=255), nullable=False, unique=True),
        sa.Column('password_hash', sa.String(length=255), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('organization', sa.String(length=255), nullable=True),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('disabled_at', UTCDateTime(timezone=True), nullable=True),
    )
    op.create_table(
        'web_sessions',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('secret_sha256', sa.String(length=64), nullable=False, unique=True),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('actor', sa.String(length=255), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('organization', sa.String(length=255), nullable=True),
        sa.Column('token_id', sa.String(length=32), nullable=True),
        sa.Column('user_id', sa.String(length=32), nullable=True),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('ended_at', UTCDateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('web_sessions')
    op.drop_table('web_users')
