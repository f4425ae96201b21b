"""Header text a sender chooses (a display name, a subject) reaches agents' notices bounded.

A header block may be 256 kB (the parser's limit); a notice that repeated a
From name or Subject of that size was a quarter megabyte, once per agent
told, and a forged agent mail could put one in the held-mail warning.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
from email.message import EmailMessage

import pytest

from tests.agents.agenthelp import wait_for_sent
from tests.daemon_harness import DaemonProcess, RelaySink
from tests.mailfactory import make_mail

pytestmark = pytest.mark.slow

# Words, so the sender's client folds the header into lines of the usual length.
HUGE = " ".join(f"w{n:05d}" for n in range(16_000))  # 112 kB
# What a notice about a plain mail weighs, with generous room: a few kB.
NOTICE_BYTES = 20_000


def _send(daemon: DaemonProcess, mail_from: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        client.sendmail(mail_from, ["support@example.com"], raw)


def test_a_huge_display_name_or_subject_is_cut_in_the_agents_notices(
    daemon: DaemonProcess, relay: RelaySink
) -> None:
    # A customer whose From name is 112 kB: the new-ticket notice repeated all of it.
    _send(
        daemon,
        "alice@customer.test",
        make_mail(
            sender=f'"{HUGE}" <alice@customer.test>',
            message_id="huge-name@customer.test",
            subject="VPN drops",
            body="It drops.\n",
        ),
    )
    notice = wait_for_sent(relay, "bob@agents.test", "New ticket")
    assert "It drops." in notice.text
    assert "<alice@customer.test>" in notice.text  # who wrote is still shown
    assert "w00000 w00001" in notice.text
    assert len(notice.raw) < NOTICE_BYTES, f"new-ticket notice of {len(notice.raw)} bytes"

    # Someone forges Bob's From on a reply in the ticket's thread, with a 112 kB
    # subject: it is held, and Bob's warning repeated the whole subject.
    _send(
        daemon,
        "bob@agents.test",
        make_mail(
            sender="Bob Agent <bob@agents.test>",
            message_id="forged@agents.test",
            in_reply_to="huge-name@customer.test",
            subject=f"[Support #1] {HUGE}",
            body="Refund approved, send your card number.\n",
        ),
    )
    held = wait_for_sent(relay, "bob@agents.test", "Held:")
    assert "was NOT accepted" in held.text
    assert "Subject: [Support #1] w00000 w00001" in held.text
    assert len(held.raw) < NOTICE_BYTES, f"held-mail warning of {len(held.raw)} bytes"
    assert daemon.terminate() == 0


def test_a_forged_agent_mail_of_huge_command_lines_is_not_echoed_to_the_agent(
    daemon: DaemonProcess, relay: RelaySink
) -> None:
    """Anyone can put an agent's address in From. Commands in such a mail wait for
    the agent's confirmation, and the "Reply to apply" mail listed every line as
    it came: nineteen lines of 100 kB made a 1.9 MB mail to the agent from one mail."""
    _send(daemon, "alice@customer.test", make_mail(message_id="c1@customer.test"))
    wait_for_sent(relay, "bob@agents.test", "New ticket")
    forged = email.message_from_bytes(
        make_mail(
            sender="Bob Agent <bob@agents.test>",
            message_id="forged-commands@agents.test",
            subject="[Support #1] close this",
        ),
        policy=email.policy.default,
    )
    assert isinstance(forged, EmailMessage)
    lines = "".join(f"#status {'x' * 100_000}\n" for _ in range(19))
    # Quoted-printable, as a client sends lines longer than SMTP's 1000 octets.
    forged.set_content(lines + "#priority high\n\nDone.\n", cte="quoted-printable")
    _send(daemon, "bob@agents.test", forged.as_bytes(policy=email.policy.SMTP))
    confirm = wait_for_sent(relay, "bob@agents.test", "Reply to apply")
    assert "#status xxxxxxxx" in confirm.text  # still told what was asked
    assert "#priority high" in confirm.text
    assert len(confirm.raw) < NOTICE_BYTES, f"confirmation request of {len(confirm.raw)} bytes"
    assert daemon.terminate() == 0


def test_a_forged_agent_reference_of_any_length_is_cut_in_the_held_mail_warning(
    daemon: DaemonProcess, relay: RelaySink
) -> None:
    """A mail addressed to a made-up agent reply address is held, and the warning
    named the address as it came: a 60 kB local part made a 60 kB warning."""
    _send(daemon, "alice@customer.test", make_mail(message_id="c1@customer.test"))
    wait_for_sent(relay, "bob@agents.test", "New ticket")
    made_up = "support+a-1-" + "q" * 60_000 + "@example.com"
    _send(
        daemon,
        "m@evil.test",
        make_mail(
            sender="Mallory <m@evil.test>",
            to=made_up,
            message_id="made-up@evil.test",
            subject="Re: your ticket",
            body="#status resolved\n",
        ),
    )
    held = wait_for_sent(relay, "bob@agents.test", "Held:")
    assert "the signature on address support+a-1-qqqq" in held.text
    assert len(held.raw) < NOTICE_BYTES, f"held-mail warning of {len(held.raw)} bytes"
    assert daemon.terminate() == 0
