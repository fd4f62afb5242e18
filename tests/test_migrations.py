"""The migrations build exactly the schema the code declares (store/schema.py), on both
databases: a column or index added to one and not the other is caught here."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from consentry.store.schema import metadata


def test_migrations_match_the_schema(engine):
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []
