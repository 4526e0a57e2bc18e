"""Subscription delivery state: per-subscription state, numbered events, delivery log;
outbox rows gain ``dispatched`` (matched to subscriptions by the delivery worker).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dispatched', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index('ix_outbox_events_pending', 'outbox_events', ['id'], unique=False,
                    sqlite_where=sa.text('dispatched = 0'), postgresql_where=sa.text('NOT dispatched'))

    op.create_table(
        'subscription_state',
        sa.Column('sub_id', sa.String(length=64), nullable=False),
        sa.Column('topic', sa.String(length=100), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('version_id', sa.Integer(), nullable=False),
        sa.Column('secret', sa.String(length=200), nullable=False),
        sa.Column('config', sa.Text(), server_default='{}', nullable=False),
        sa.Column('start_outbox_id', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('events_count', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('delivered_through', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('failing_since_us', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('next_attempt_us', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('last_sent_us', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('last_error', sa.Text(), server_default='', nullable=False),
        sa.Column('lease_owner', sa.String(length=100), nullable=False),
        sa.Column('lease_until_us', sa.BigInteger(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('sub_id'),
    )
    op.create_index('ix_subscription_state_status', 'subscription_state', ['status'], unique=False)

    op.create_table(
        'subscription_events',
        sa.Column('sub_id', sa.String(length=64), nullable=False),
        sa.Column('event_number', sa.BigInteger(), nullable=False),
        sa.Column('outbox_id', sa.BigInteger(), nullable=False),
        sa.Column('topic', sa.String(length=100), nullable=False),
        sa.Column('occurred_at', sa.String(length=40), nullable=False),
        sa.Column('focus_type', sa.String(length=64), nullable=False),
        sa.Column('focus_id', sa.String(length=64), nullable=False),
        sa.Column('focus_version', sa.Integer(), nullable=False),
        sa.Column('context', sa.Text(), server_default='[]', nullable=False),
        sa.PrimaryKeyConstraint('sub_id', 'event_number'),
    )

    op.create_table(
        'delivery_attempts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.String(length=40), nullable=False),
        sa.Column('at_us', sa.BigInteger(), nullable=False),
        sa.Column('sub_id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=30), nullable=False),
        sa.Column('first_event', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('last_event', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('http_status', sa.Integer(), nullable=False),
        sa.Column('latency_ms', sa.Float(), server_default='0', nullable=False),
        sa.Column('outcome', sa.String(length=10), nullable=False),
        sa.Column('error', sa.Text(), server_default='', nullable=False),
        sa.Column('replica', sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_delivery_attempts_sub', 'delivery_attempts', ['sub_id', 'id'], unique=False)
    op.create_index('ix_delivery_attempts_at', 'delivery_attempts', ['at_us'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_delivery_attempts_at', table_name='delivery_attempts')
    op.drop_index('ix_delivery_attempts_sub', table_name='delivery_attempts')
    op.drop_table('delivery_attempts')
    op.drop_table('subscription_events')
    op.drop_index('ix_subscription_state_status', table_name='subscription_state')
    op.drop_table('subscription_state')
    op.drop_index('ix_outbox_events_pending', table_name='outbox_events')
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_column('dispatched')
