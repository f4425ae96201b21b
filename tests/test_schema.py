"""The shipped migrations build exactly the schema the models describe."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from maildesk.db.models import Base


def _diff(url: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    return diff


def test_migrations_match_the_models(database_url: str) -> None:
    # database_url is migrated to head by the fixtures (Alembic, not create_all).
    assert _diff(database_url) == []


def test_live_sla_targets_have_a_partial_index(database_url: str) -> None:
    """The sweep's candidates and `tickets list` LATE read only running and paused targets."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE name = 'ix_sla_targets_live_due'"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_sla_targets_live_due'"
        definition = conn.execute(text(query)).scalar()
    engine.dispose()
    assert definition is not None
    assert "(due_at, ticket_id)" in definition.replace('"', "")
    assert "WHERE" in definition and "running" in definition and "paused" in definition
