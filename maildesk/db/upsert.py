"""Insert-if-absent on both backends (ON CONFLICT DO NOTHING), safe under concurrent nodes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Table, case, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, configure_mappers, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_dict, manager_of_class


@cache
def insert_ignore_statement(dialect: str, table: Table, key: tuple[str, ...]) -> Any:
    """INSERT ... ON CONFLICT (key) DO NOTHING for ``dialect``, built once per table and key."""
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
    connection.execute(
        insert_ignore_statement(connection.dialect.name, model.__table__, tuple(key)), values
    )


def inserted_once(session: Session, model: Any, values: dict[str, Any], key: list[str]) -> bool:
    """Insert one row unless a row with the same ``key`` exists; whether this inserted it.

    The one winner of concurrent inserts (other nodes wait for its commit, then
    insert nothing). Told by RETURNING: psycopg reports no row count for it.
    """
    connection = session.connection()
    table = model.__table__
    statement = insert_ignore_statement(connection.dialect.name, table, tuple(key))
    pk = next(iter(table.primary_key.columns))
    return connection.execute(statement.returning(pk), values).first() is not None


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

    Unlike ``session.add`` + ``flush`` this runs no unit of work and flushes
    nothing else first: apply inserts two rows per message, and the flush
    machinery cost more than the inserts. Column defaults are filled in here,
    so the object is complete and never lazy-loads what the INSERT wrote.
    """
    full = _with_defaults(model, values)
    table = model.__table__  # type: ignore[attr-defined]
    (pk_column,) = table.primary_key.columns
    statement = _insert_returning_pk(table, pk_column.key)
    full[pk_column.key] = session.connection().execute(statement, full).scalar_one()
    # The values go straight into the new object's state, as a load puts them, not
    # through the constructor's instrumented setters: those record a change per
    # column that make_transient_to_detached then discards (no model listens to them).
    configure_mappers()  # as the constructor would (a no-op once they are)
    row: Row = manager_of_class(model).new_instance()
    instance_dict(row).update(full)
    make_transient_to_detached(row)
    session.add(row)
    session.info.setdefault(_INSERTED, []).append(row)
    return row


# The rows :func:`insert_row` put in a session, for :func:`savepoint`.
_INSERTED = "maildesk_inserted_rows"


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """``session.begin_nested()``, also letting go of :func:`insert_row`'s rows if it rolls back.

    SQLAlchemy forgets on rollback only the rows it flushed itself; a row added
    as persistent stays in the identity map, and the next insert given the same
    key (SQLite hands a rolled-back id out again) fails as "already present".
    """
    rows: list[Any] = session.info.setdefault(_INSERTED, [])
    mark = len(rows)
    try:
        with session.begin_nested():
            yield
    except BaseException:
        for row in rows[mark:]:
            if row in session:
                session.expunge(row)
        del rows[mark:]
        raise


@cache
def _insert_returning_pk(table: Table, pk: str) -> Any:
    return insert(table).returning(table.c[pk])


def _with_defaults(model: type[Any], values: dict[str, Any]) -> dict[str, Any]:
    full = dict(values)
    for column in model.__table__.columns:
        if column.key in full or column.primary_key:
            continue
        default = column.default
        if default is None:
            full[column.key] = None
        elif default.is_scalar:
            full[column.key] = default.arg
        elif default.is_callable:
            full[column.key] = default.arg(None)
        else:  # pragma: no cover - no SQL-expression defaults in the models
            raise TypeError(f"{model.__name__}.{column.key}: unsupported default")
    return full
