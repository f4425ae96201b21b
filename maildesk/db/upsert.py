"""Insert-if-absent on both backends (ON CONFLICT DO NOTHING), safe under concurrent nodes."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session


def insert_ignore(
    session: Session, model: Any, values: dict[str, Any] | list[dict[str, Any]], key: list[str]
) -> None:
    """Insert one row (or several) unless a row with the same ``key`` exists."""
    if isinstance(values, list) and not values:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(pg_insert(model).values(values).on_conflict_do_nothing(index_elements=key))
    else:
        session.execute(
            sqlite_insert(model).values(values).on_conflict_do_nothing(index_elements=key)
        )
