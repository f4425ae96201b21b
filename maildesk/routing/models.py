"""The learned field models the route stage uses (category, optionally queue).

Each is a :class:`CategoryModel` file; it is (re)loaded when the file changes on
disk, so the daemon picks up a retrained model or one updated by agents'
corrections without a restart. scikit-learn is imported only when a model file
exists.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from maildesk.atomic import write_atomic
from maildesk.config import Settings
from maildesk.db.database import Database, is_unavailable
from maildesk.db.outage import Outage
from maildesk.shared_models import (
    PUBLISH_ATTEMPTS,
    PublishConflict,
    publish,
    pull,
    pull_in,
    settle_on_commit,
)

if TYPE_CHECKING:
    from maildesk.routing.categorize import CategoryModel

log = logging.getLogger("maildesk.routing")
CATEGORY_MODEL_NAME = "category-model.npz"


@dataclass(frozen=True)
class Guess:
    field: str  # "category" or "queue"
    label: str | None
    confidence: float
    version: str


class ModelSlot:
    """One model file: loaded lazily, reloaded when its mtime or size changes."""

    def __init__(self, field: str, path: Path | None) -> None:
        self.field = field
        self.path = path
        self._model: CategoryModel | None = None
        self._stamp: tuple[int, int] | None = None
        self._unreadable = False  # the file as it is now did not load

    def _current_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def model(self) -> CategoryModel | None:
        stamp = self._current_stamp()
        if stamp is None:
            self._model, self._stamp = None, None
            return None
        if stamp != self._stamp:
            from maildesk.routing.categorize import CategoryModel, ModelFileError

            try:
                self._model = CategoryModel.load(self.path)  # type: ignore[arg-type]
                self._unreadable = False
            except ModelFileError as exc:
                log.error("%s model not loaded, keeping the previous one: %s", self.field, exc)
                self._unreadable = True
            self._stamp = stamp
        return self._model

    def unreadable(self) -> bool:
        """Whether the file is there but does not load (damaged, truncated, foreign)."""
        self.model()
        return self._stamp is not None and self._unreadable

    def guess(self, text: str) -> Guess | None:
        model = self.model()
        if model is None or not model.labels:
            return None
        prediction = model.predict(text)
        return Guess(self.field, prediction.top_label, prediction.confidence, model.version)

    def _put_back(self, data: bytes | None) -> None:
        """The file as it was before a lesson the database did not keep (rolled back)."""
        assert self.path is not None
        if data is None:
            self.path.unlink(missing_ok=True)
        else:
            write_atomic(self.path, data)
        self._model, self._stamp = None, None

    def learn(
        self,
        text: str,
        label: str,
        *,
        session: Session | None = None,
        node: str = "",
        now: datetime | None = None,
    ) -> str:
        """Learn one correction and save the file atomically; returns the new version.

        With ``session`` the model is shared: the database's newest version is
        learned on and the result published in that transaction, so every node
        gets the correction (:mod:`maildesk.shared_models`).
        """
        from maildesk.routing.categorize import CategoryModel, ModelFileError

        if self.path is None:
            raise ValueError(f"no {self.field} model configured")
        for _attempt in range(PUBLISH_ATTEMPTS):
            based_on = None
            if session is not None:
                # A damaged copy is not what the database holds: take the database's again.
                based_on = pull_in(session, self.path, self.field, force=self.unreadable())
            model = self.model()
            if model is None and self.unreadable():
                # Learning on an empty model would replace everything learned (and, once
                # published, on every node) with this one correction.
                raise ModelFileError(f"{self.path}: the {self.field} model does not load")
            if model is None:
                model = CategoryModel()
            before = self.path.read_bytes() if self.path.exists() else None
            model.learn(text, label)
            model.save(self.path)
            self._model, self._stamp = model, self._current_stamp()
            if session is None:
                return model.version
            try:
                version = publish(
                    session,
                    self.path,
                    based_on,
                    node=node,
                    now=now or datetime.now(UTC),
                    name=self.field,
                )
            except PublishConflict as exc:
                log.info("%s; learning the correction again on the newer model", exc)
                continue
            settle_on_commit(session, self.path, version, partial(self._put_back, before))
            return model.version
        raise PublishConflict(f"{self.field} model: still conflicting after {PUBLISH_ATTEMPTS}")


def pull_models(
    db: Database,
    settings: Settings,
    slots: dict[str, ModelSlot] | None = None,
    outage: Outage | None = None,
) -> None:
    """Take the category/queue models other nodes published (at start and periodically).

    ``slots``: the route stage's, so a file is read only when it changed.
    ``outage`` (the daemon's job): a database that is away is said there once and
    waited out, not a traceback a minute; the job's round is then no success.
    """
    if outage is not None and not outage.ready():
        return
    for slot in (slots or model_slots(settings)).values():
        if slot.path is not None:
            try:
                # A copy that does not load (damaged on disk) is taken again.
                pull(db, slot.path, slot.field, force=slot.unreadable())
            except Exception as exc:
                if outage is not None and is_unavailable(exc):
                    outage.failed(exc)
                    return
                log.exception("%s model: could not take the shared model", slot.field)
    if outage is not None:
        outage.succeeded()


def model_slots(settings: Settings) -> dict[str, ModelSlot]:
    routing = settings.routing
    category = routing.category_model or settings.data_dir / CATEGORY_MODEL_NAME
    slots = {"category": ModelSlot("category", category)}
    if routing.queue_model is not None:
        slots["queue"] = ModelSlot("queue", routing.queue_model)
    return slots
