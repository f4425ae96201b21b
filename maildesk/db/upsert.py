"""Insert-if-absent on both backends (ON CONFLICT DO NOTHING), safe under concurrent nodes."""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Table, case, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session


@cache
def _statement(dialect: str, table: Table, key: tuple[str, ...]) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(table).on_conflict_do_nothing(index_elements=list(key))


def insert_ignore(
    session: Session, model: Any, values: dict[str, Any] | list[dict[str, Any]], key: list[str]
) -> None:
    """Insert one row (or several) unless a row with the same ``key`` exists.

    Core on the session's connection with a statement built once: this is on
    the per-message hot path, where ORM bookkeeping would dominate.
    """
    if isinstance(values, list) and not values:
        return
    connection = session.connection()
    connection.execute(_statement(connection.dialect.name, model.__table__, tuple(key)), values)


@cache
def _contact_upsert(dialect: str, table: Table) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(table)
    keep_name = case((table.c.name == "", stmt.excluded.name), else_=table.c.name)
    return stmt.on_conflict_do_update(index_elements=["email"], set_={"name": keep_name}).returning(
        table.c.id
    )


def upsert_contact(session: Session, table: Table, email: str, name: str, now: Any) -> int:
    """The id of the contact with ``email``, created if new; a missing name is filled in."""
    connection = session.connection()
    statement = _contact_upsert(connection.dialect.name, table)
    row = connection.execute(statement, {"email": email, "name": name, "created_at": now}).one()
    return int(row[0])


Row = TypeVar("Row")


def insert_row(session: Session, model: type[Row], **values: Any) -> Row:
    """INSERT one row with RETURNING and get it back as a persistent ORM object.

    Unlike ``session.add`` + ``flush`` this runs no unit of work, and it does
    not flush other pending changes first: the hot path of apply inserts two
    rows per message, and the flush machinery cost more than the inserts.
    """
    stmt = insert(model).returning(model).execution_options(autoflush=False)
    return session.scalars(stmt, [values]).one()
