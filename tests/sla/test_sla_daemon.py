"""`maildesk run` catches up on escalations that came due while it was down, once."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from maildesk.app import App
from maildesk.config import load_settings
from maildesk.db.models import SlaEscalation, Ticket
from tests.conftest import FrozenClock
from tests.daemon_harness import DaemonProcess, RelaySink
from tests.mailfactory import deliver, make_mail

SLA_CONFIG = """
[[agents]]
name = "bob"
addresses = ["bob@example.com"]

[calendars.always]
hours = { mon = "24h", tue = "24h", wed = "24h", thu = "24h", fri = "24h", sat = "24h", sun = "24h" }

[sla]
default_policy = "p"
sweep_interval_seconds = 0.5
[[sla.policies]]
name = "p"
first_response = { minutes = 60, calendar = "always" }
"""


def _sweep_lines(daemon: DaemonProcess) -> int:
    return sum("sla sweep:" in line for line in daemon.log().splitlines())


def test_restarted_daemon_fires_overdue_escalations_once_and_says_so(
    tmp_path: Path, relay: RelaySink
) -> None:
    daemon = DaemonProcess(tmp_path, relay_port=relay.port, extra_config=SLA_CONFIG)
    daemon.write_config()
    # While the daemon was down: a ticket arrived (through the MTA) three days ago.
    settings = load_settings(str(daemon.config_path))
    past = FrozenClock(App.build(settings).clock() - timedelta(days=3))
    app = App.build(settings, clock=past)
    app.db.upgrade()
    deliver(app, make_mail(subject="Nobody answered"))
    with app.db.transaction() as session:
        for ticket in session.scalars(select(Ticket)):
            ticket.assignee = "bob"
    app.db.dispose()

    def sla_mail(received: list) -> list:  # type: ignore[type-arg]
        return [r for r in received if "SLA" in str(r.message["Subject"])]

    daemon.start()
    try:
        mail = relay.wait_for(lambda got: len(sla_mail(got)) >= 2)
    finally:
        assert daemon.terminate() == 0
    assert sorted(str(r.message["Subject"]).split(":")[0] for r in sla_mail(mail)) == [
        "[Support #1] SLA breached",
        "[Support #1] SLA warning",
    ]
    assert all(r.rcpt_tos == ["bob@example.com"] for r in sla_mail(mail))
    assert "escalations fired late (marked late)" in daemon.log()
    starts = _sweep_lines(daemon)

    daemon.start()  # a restart: the catch-up sweep finds nothing new
    try:
        deadline = time.monotonic() + 60
        while _sweep_lines(daemon) <= starts and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _sweep_lines(daemon) > starts
    finally:
        assert daemon.terminate() == 0
    assert len(sla_mail(relay.received)) == 2
    app = App.build(settings)
    with app.db.transaction() as session:
        ledger = session.scalars(select(SlaEscalation)).all()
        assert sorted((e.level, e.late) for e in ledger) == [("breach", True), ("warning", True)]
    app.db.dispose()
