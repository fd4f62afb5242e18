"""target id ranges: a delivery's targets are a primary-key range; the (delivery_id, state,
reason) index goes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before this revision keep their sequence ids: they are renumbered into
    # their delivery's range so the range queries find them. Ranges start at 2^32 per
    # delivery and sequence ids stay far below the first one, so no id collides.
    op.execute("UPDATE delivery_targets SET id = delivery_id * 4294967296 + id "
               "WHERE id < 4294967296")
    with op.batch_alter_table('delivery_targets', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_targets_delivery_state')


def downgrade() -> None:
    with op.batch_alter_table('delivery_targets', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_targets_delivery_state',
                              ['delivery_id', 'state', 'reason'], unique=False)
