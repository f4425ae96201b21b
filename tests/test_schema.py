"""The shipped migrations build exactly the schema the models describe."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

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
