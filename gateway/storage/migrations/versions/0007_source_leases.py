"""a lease and a retry schedule per transfer source

A transfer's sources are pulled by one task each, side by side: each claims its own row
(lease_owner, lease_until) and, while its source is not ready, retries on its own schedule
(attempts, next_attempt_at) without holding up the others.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

from gateway.storage.models import UTCDateTime

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('transfer_sources', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('lease_until', UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('next_attempt_at', UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('transfer_sources', schema=None) as batch_op:
        for column in ('next_attempt_at', 'attempts', 'lease_until', 'lease_owner'):
            batch_op.drop_column(column)
