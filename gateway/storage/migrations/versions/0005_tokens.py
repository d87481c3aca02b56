"""API tokens expire: the expiry time set at creation

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 06:10:00
"""
import sqlalchemy as sa
from alembic import op

import gateway.storage.models  # column types used below

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('api_tokens') as batch:
        batch.add_column(sa.Column('expires_at', gateway.storage.models.UTCDateTime(timezone=True),
                                   nullable=True))


def downgrade():
    with op.batch_alter_table('api_tokens') as batch:
        batch.drop_column('expires_at')
