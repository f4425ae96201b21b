"""Learned models shared by every node through the database (the live spam
model, the category and queue models).

With several ``maildesk run`` nodes on one PostgreSQL, feedback recorded on
any node must teach every node's model. The database holds each model
(``shared_models``, by name); each node keeps a copy in its data directory,
which its scorers reload when the file changes. :func:`pull` brings that copy
up to date; :func:`publish` stores a newly learned model only if nobody
published since it was pulled (compare and swap), so two learners never
overwrite each other's lessons: the later one pulls and learns again. One
machine runs the same path with one node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from sqlalchemy import Table, event, select, update
from sqlalchemy.orm import Session, SessionTransaction

from maildesk.atomic import write_atomic
from maildesk.db.database import Database
from maildesk.db.models import SharedModel
from maildesk.db.upsert import insert_ignore_statement

log = logging.getLogger("maildesk.models")
SPAM = "spam"
PUBLISH_ATTEMPTS = 3  # a learner that loses this many races in a row gives up until next time
_TABLE: Table = SharedModel.__table__  # type: ignore[assignment]


class PublishConflict(Exception):
    """Another node published a model since this one pulled: pull and learn again."""


def _version_file(live_path: Path) -> Path:
    return live_path.with_name(live_path.name + ".version")


def held_version(live_path: Path) -> int | None:
    """The shared version this node's copy is, or None (no copy, or never shared)."""
    try:
        return int(_version_file(live_path).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _hold(live_path: Path, version: int) -> None:
    write_atomic(_version_file(live_path), f"{version}\n".encode())


def shared_version(db: Database, name: str) -> int | None:
    """The version the database holds of model ``name`` (None: nothing published yet)."""
    with db.transaction() as session:
        return session.scalar(select(SharedModel.version).where(SharedModel.name == name))


def pull(db: Database, live_path: Path, name: str = SPAM, *, force: bool = False) -> int | None:
    """Make this node's copy the database's model if it is not already; returns its version.

    ``force``: take the database's copy even if this node's claims to be that version
    (the caller found the file damaged).
    """
    with db.transaction() as session:
        return pull_in(session, live_path, name, force=force)


def pull_in(session: Session, live_path: Path, name: str, *, force: bool = False) -> int | None:
    """:func:`pull` inside the caller's transaction."""
    held = held_version(live_path) if live_path.exists() and not force else None
    version = session.scalar(select(SharedModel.version).where(SharedModel.name == name))
    if version is None or version == held:
        return held
    data = session.scalar(select(SharedModel.data).where(SharedModel.name == name))
    assert data is not None
    write_atomic(live_path, bytes(data))
    _hold(live_path, version)
    log.info("%s model: took version %d from the database (%d bytes)", name, version, len(data))
    return version


def publish(
    session: Session,
    live_path: Path,
    based_on: int | None,
    *,
    node: str,
    now: datetime,
    name: str = SPAM,
) -> int:
    """Store ``live_path`` as the next version after ``based_on``, in the caller's transaction.

    Raises :class:`PublishConflict` when the database no longer holds
    ``based_on``. The caller records the new version with :func:`settle`
    once its transaction has committed.
    """
    values = {"data": live_path.read_bytes(), "updated_at": now, "updated_by": node[:200]}
    connection = session.connection()
    # RETURNING tells whether the row was written (rowcount is not reliable for
    # INSERT ... ON CONFLICT DO NOTHING on every driver).
    if based_on is None:
        version = 1
        statement = insert_ignore_statement(connection.dialect.name, _TABLE, ("name",))
        written = connection.execute(
            statement.returning(_TABLE.c.version), {"name": name, "version": version, **values}
        ).first()
    else:
        version = based_on + 1
        written = connection.execute(
            update(_TABLE)
            .where(_TABLE.c.name == name, _TABLE.c.version == based_on)
            .values(version=version, **values)
            .returning(_TABLE.c.version)
        ).first()
    if written is None:
        raise PublishConflict(f"another node published the {name} model after version {based_on}")
    return version


def settle(live_path: Path, version: int) -> None:
    """This node's copy is ``version`` (after a committed :func:`publish`)."""
    _hold(live_path, version)


def settle_on_commit(
    session: Session, live_path: Path, version: int, undo: Callable[[], None]
) -> None:
    """:func:`settle` once ``session``'s transaction commits; never if it rolls back.

    For a :func:`publish` inside a caller's transaction: recorded before its
    commit, a rollback would leave this node believing it holds a version the
    database never got, and another node's version of that number unseen. A
    savepoint released is no commit (the transaction around it may still roll
    back), and one rolled back undoes the publish as well: then ``undo`` puts
    back this node's copy as it was before the lesson (the last lesson first),
    and the copy is no version, so that the next :func:`pull` takes the
    database's (a :func:`pull_in` in the same transaction may have claimed one).
    """
    start = session.get_nested_transaction() or session.get_transaction()
    published_in = list(_self_and_parents(start))
    done = False

    def committed(session: Session) -> None:
        nonlocal done
        if not done and not session.in_nested_transaction():
            done = True
            settle(live_path, version)

    def rolled_back(_session: Session, previous: SessionTransaction) -> None:
        nonlocal done
        if not done and any(previous is t for t in published_in):
            done = True
            _version_file(live_path).unlink(missing_ok=True)
            undo()

    event.listen(session, "after_commit", committed)
    event.listen(session, "after_soft_rollback", rolled_back, insert=True)  # last lesson first


def _self_and_parents(transaction: SessionTransaction | None) -> Iterator[SessionTransaction]:
    while transaction is not None:
        yield transaction
        transaction = transaction.parent
