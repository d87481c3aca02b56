"""open C-MOVEs and what the standing DICOM receiver took for them

`records-gateway dicom-receiver` is the C-MOVE destination of every worker: the worker
that sends a C-MOVE records what it expects (dicom_moves, dicom_move_instances), the
receiver routes each C-STORE by it and records what it stored (dicom_arrivals), which the
worker reads.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

from gateway.storage.models import UTCDateTime

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dicom_moves',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('transfer_id', sa.String(length=32),
                  sa.ForeignKey('transfers.id', ondelete='CASCADE'), nullable=False),
        sa.Column('source', sa.String(length=255), nullable=False),
        sa.Column('message_id', sa.Integer(), nullable=False),
        sa.Column('peer_aet', sa.String(length=16), nullable=False),
        sa.Column('peer_addresses', sa.JSON(), nullable=False),
        sa.Column('originator_aet', sa.String(length=16), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('expires_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False))
    op.create_index('ix_dicom_moves_transfer_id', 'dicom_moves', ['transfer_id'])
    op.create_index('ix_dicom_moves_expires_at', 'dicom_moves', ['expires_at'])
    op.create_table(
        'dicom_move_instances',
        sa.Column('move_id', sa.Integer(), sa.ForeignKey('dicom_moves.id', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('sop_key', sa.String(length=64), primary_key=True))
    op.create_index('ix_dicom_move_instances_sop_key', 'dicom_move_instances', ['sop_key'])
    op.create_table(
        'dicom_arrivals',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('transfer_id', sa.String(length=32),
                  sa.ForeignKey('transfers.id', ondelete='CASCADE'), nullable=False),
        sa.Column('source', sa.String(length=255), nullable=False),
        sa.Column('sop_key', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('blob_key', sa.String(length=64), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('transfer_id', 'source', 'sop_key', 'state'))
    op.create_index('ix_dicom_arrivals_transfer_id', 'dicom_arrivals', ['transfer_id'])
    op.create_index('ix_dicom_arrivals_blob_key', 'dicom_arrivals', ['blob_key'])


def downgrade() -> None:
    op.drop_table('dicom_arrivals')
    op.drop_table('dicom_move_instances')
    op.drop_table('dicom_moves')
