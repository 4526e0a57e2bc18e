"""Rules scheduler state (gateway/rules/scheduler.py)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'rules_scheduler_state',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('last_run_at', sa.String(length=40), nullable=False, server_default=''),
        sa.Column('last_as_of', sa.String(length=40), nullable=False, server_default=''),
        sa.Column('runs', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('last_owner', sa.String(length=200), nullable=False, server_default=''),
        sa.Column('last_summary', sa.Text(), nullable=False, server_default='{}'),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('rules_scheduler_state')
