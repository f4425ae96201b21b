"""Alembic environment: runs on the engine handed over by maildesk.db.database."""

from alembic import context
from sqlalchemy import Connection, text

from maildesk.db.models import Base

config = context.config
target_metadata = Base.metadata

# Several nodes may start (or run `db upgrade`) at once on one PostgreSQL
# database: the first migrates, the others wait here and then find it done.
SCHEMA_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('maildesk schema'))")


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    # Outside any transaction (SQLite ignores this PRAGMA inside one): on the
    # driver's connection, which is in autocommit, so no BEGIN is sent first.
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def run_migrations() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from sqlalchemy import create_engine

        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds a table (copy, DROP, rename); with foreign keys
            # enforced, dropping a table that other rows point at fails. They are
            # checked once the whole upgrade is done, before it commits.
            _sqlite_foreign_keys(connection, on=False)
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                # SQLite's DDL is transactional too: all steps commit together or none.
                transactional_ddl=True,
            )
            with context.begin_transaction():
                if not sqlite:
                    connection.execute(SCHEMA_LOCK)
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
            connection.commit()
        finally:
            if sqlite:
                connection.rollback()
                _sqlite_foreign_keys(connection, on=True)


run_migrations()
