"""analysis duplicates: the duplicates an analysis works out before it writes its target rows
(UNLOGGED on PostgreSQL: nothing in it outlives the analysis); fillfactor 90 for the target
rows on PostgreSQL

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'analysis_duplicates',
        sa.Column('delivery_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('number', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint('delivery_id', 'number', name=op.f('pk_analysis_duplicates')),
    )
    if op.get_bind().dialect.name == 'postgresql':
        # Written and emptied by each analysis: no WAL for it, and a crash only empties it.
        op.execute('ALTER TABLE analysis_duplicates SET UNLOGGED')
        # Room on each page of target rows, so that the updates after the analysis (fatigue,
        # size limit) and while sending (claimed, in flight) stay on their page and
        # touch no index (HOT updates). Applies to pages written from now on.
        op.execute('ALTER TABLE delivery_targets SET (fillfactor = 90)')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE delivery_targets RESET (fillfactor)')
    op.drop_table('analysis_duplicates')
