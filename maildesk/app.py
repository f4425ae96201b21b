"""Builds the object graph the CLI commands and the daemon share."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from maildesk.config import Settings, resolve_installation_secret, resolve_relay_password
from maildesk.db.database import Database
from maildesk.domain.signing import Signer
from maildesk.intake.store import IntakeStore
from maildesk.metrics import Metrics
from maildesk.outbound.compose import Composer
from maildesk.outbound.delivery_failed import DeliveryFailedNotifier
from maildesk.outbound.dkim_sign import DkimSigner
from maildesk.outbound.notices import Notices
from maildesk.outbound.sender import OutboxSender, build_transport
from maildesk.outbound.templates import (
    TemplateRenderer,
    check_templates,
    default_templates_dir,
    template_problems,
)
from maildesk.outbound.unrecorded import journal_path
from maildesk.people import Directory
from maildesk.pipeline.runner import Worker
from maildesk.routing.router import Router
from maildesk.routing.rules import RulesError

log = logging.getLogger("maildesk")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    settings: Settings
    db: Database
    signer: Signer
    clock: Callable[[], datetime]
    # This process's counters; scraped only from `maildesk run` ([metrics] listen).
    metrics: Metrics = field(default_factory=Metrics)
    renderer: TemplateRenderer = field(init=False)
    template_errors: list[str] = field(init=False)
    directory: Directory = field(init=False)
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        self.reload()

    @classmethod
    def build(cls, settings: Settings, clock: Callable[[], datetime] = utc_now) -> App:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.effective_database_url)
        # Each retired secret verifies until its time, judged at each use (a daemon runs on).
        retired = [(r.secret.encode(), r.until) for r in settings.retired_secrets]
        signer = Signer([resolve_installation_secret(settings)], retired=retired, clock=clock)
        return cls(settings, db, signer, clock)

    def reload(self) -> RulesError | None:
        """(Re)load what ops may edit while the daemon runs: templates and routing rules.

        A broken rules file keeps the last good rules (the error is logged and returned);
        on a reload, a template that does not compile, or one every installation
        sends that is gone or does not render, keeps the last good templates
        (``template_errors`` names it). The first load reads templates as they are
        used and keeps whatever rules error it meets: a command that processes
        mail checks both first (:meth:`check_pipeline`), and exits 78 on either,
        as there are no last good ones to keep.
        """
        templates = default_templates_dir(self.settings.templates_dir)
        renderer = TemplateRenderer(templates)
        if hasattr(self, "renderer"):
            self.template_errors = template_problems(self.settings, renderer)
            if self.template_errors:
                log.error("templates in %s: %s", templates, "; ".join(self.template_errors))
            else:
                self.renderer = renderer
        else:
            self.renderer, self.template_errors = renderer, []
        self.directory = Directory.from_settings(self.settings)
        if not hasattr(self, "router"):
            self.router = Router(self.settings, lambda: self.directory, templates)
        return self.router.reload()

    def check_pipeline(self, *, rules: bool = True) -> None:
        """ConfigError (exit 78) unless mail can be processed as configured.

        Every template compiles (and stays compiled in memory, as for the daemon),
        the ones every installation sends are there and render, and (``rules``)
        the routing rules loaded: at start there are no last good ones to fall
        back on, and mail processed meanwhile would be quarantined or unrouted.
        """
        check_templates(self.settings, self.renderer)
        if rules and self.router.holder.last_error is not None:
            raise self.router.holder.last_error

    @property
    def node_name(self) -> str:
        return self.settings.effective_node_name

    def intake(self) -> IntakeStore:
        return IntakeStore(self.db, self.clock, self.metrics)

    def composer(self) -> Composer:
        return Composer(self.settings, self.signer, self.clock)

    def notices(self) -> Notices:
        return Notices(self.settings, self.composer(), lambda: self.renderer, self.clock)

    @property
    def command_node_name(self) -> str:
        """The name a one-off command (``ingest``, ``outbox drain``, ...) claims work under.

        Not the daemon's: a ``maildesk run`` on this host renews and, when it
        starts, takes back the claims under its own name, and would take a
        command's claims for its own (the mail sent twice, the message
        applied twice).
        """
        return f"{self.node_name}/cli-{os.getpid()}"[:128]

    def worker(self, node: str | None = None) -> Worker:
        """The pipeline worker; ``node`` names its claims (default: this node, as the daemon)."""
        return Worker(
            self.db,
            self.settings,
            self.signer,
            self.clock,
            node or self.node_name,
            notices=self.notices(),
            router=self.router,
            metrics=self.metrics,
        )

    def sender(self, node: str | None = None) -> OutboxSender:
        """The outbox sender; ``node`` names its claims (default: this node, as the daemon).

        ConfigError when the relay password or a DKIM key cannot be used.
        """
        transport = build_transport(
            self.settings.outbound, self.settings.data_dir, resolve_relay_password(self.settings)
        )
        return OutboxSender(
            self.db,
            transport,
            self.settings.outbound,
            self.clock,
            node or self.node_name,
            dkim=DkimSigner.from_settings(self.settings),
            undelivered=DeliveryFailedNotifier(self.notices()),
            metrics=self.metrics,
            # The daemon's: a restart reads it. A one-off command's node name is
            # new each run, so nothing would ever read its journal.
            journal=journal_path(self.settings.data_dir, self.node_name) if node is None else None,
        )
