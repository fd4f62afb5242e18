"""ledger events by time: an index on ledger_events.at for the per-day counts

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('ledger_events', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_events_at', ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ledger_events', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_events_at')
