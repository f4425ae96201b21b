"""The real daemon end to end: customer -> ack -> agent notice -> agent reply -> rating."""

from __future__ import annotations

import smtplib
import time

import pytest
from sqlalchemy import create_engine, text

from tests.agents.agenthelp import client_reply, reply_address, wait_for_sent
from tests.daemon_harness import DaemonProcess, RelaySink
from tests.mailfactory import make_mail

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("style", ["thunderbird", "outlook", "gmail"])
def test_customer_agent_reply_resolve_and_rating_over_the_daemon(
    daemon: DaemonProcess, relay: RelaySink, style: str
) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        client.sendmail(
            "alice@customer.test",
            ["support@example.com"],
            make_mail(message_id="e2e-a1@customer.test", subject="VPN drops", body="It drops.\n"),
        )
    wait_for_sent(relay, "alice@customer.test", "We received your request")
    notice = wait_for_sent(relay, "bob@agents.test", "New ticket")
    assert "It drops." in notice.text

    answer_text = "Hi Alice,\n\nplease update the client to 4.2.\n\nBob"
    reply = client_reply(notice, "#status resolved\n\n" + answer_text, style=style)
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        client.sendmail("bob@agents.test", [reply_address(notice)], reply)

    answer = wait_for_sent(relay, "alice@customer.test", "Re: VPN drops")
    body = answer.text
    assert "please update the client to 4.2." in body
    assert "#status" not in body and "It drops." not in body and "reply above" not in body
    assert b"bob@agents.test" not in answer.raw
    assert str(answer.msg["From"]) == "Support <support@example.com>"
    assert answer.msg["In-Reply-To"] == "<e2e-a1@customer.test>"

    resolved = wait_for_sent(relay, "alice@customer.test", "Resolved: VPN drops")
    rate = next(
        line.split(": ", 1)[1].strip()
        for line in resolved.text.splitlines()
        if line.strip().startswith("5:")
    )
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        client.sendmail(
            "alice@customer.test",
            [rate],
            make_mail(message_id="e2e-rate@customer.test", to=rate, subject="rating", body="\n"),
        )
    engine = create_engine(f"sqlite:///{daemon.workdir / 'data' / 'maildesk.sqlite3'}")
    try:
        deadline = time.monotonic() + 30
        ratings: list[tuple[int, str]] = []
        while time.monotonic() < deadline and not ratings:
            with engine.connect() as conn:
                ratings = [
                    tuple(r) for r in conn.execute(text("SELECT score, contact FROM ratings"))
                ]
            time.sleep(0.2)
        assert ratings == [(5, "alice@customer.test")]
        with engine.connect() as conn:
            status = conn.execute(text("SELECT status FROM tickets WHERE number = 1")).scalar()
        assert status == "resolved"
    finally:
        engine.dispose()
    assert daemon.terminate() == 0
