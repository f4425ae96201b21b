"""Agents work by mail: notifications, replies, commands, trust, notes, ratings (issue 5)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Intake, IntakeState, Message, MessageKind, Rating, SpamFeedback
from tests.agents.agenthelp import (
    AGENT_ADDRESSES,
    AGENTS,
    Sent,
    agent_app,
    client_reply,
    events_of_kind,
    outbox,
    plain_mail,
    reply_address,
    ticket_number,
    to,
)
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail, reply_to

ALICE = "alice@customer.test"


def _agent_deliver(app: App, raw: bytes, rcpt: str) -> None:
    deliver(app, raw, rcpt=(rcpt,), mail_from="bob@agents.test")


def _open_ticket(app: App, body: str = "My printer is on fire.\n", cc: str | None = None) -> Sent:
    original = make_mail(message_id="first@customer.test", body=body, cc=cc)
    deliver(app, original)
    notices = to(app, "bob@agents.test", "new_ticket")
    assert len(notices) == 1, [s.purpose for s in outbox(app)]
    return notices[0]


def test_new_ticket_notifies_the_assignee_with_a_reply_address_signed_for_them(app: App) -> None:
    notice = _open_ticket(app)
    assert ticket_number(app).assignee == "bob"
    msg = notice.msg
    assert "support+a-1-" in reply_address(notice)
    assert str(msg["Message-ID"]).startswith("<md.a.1.")
    assert "My printer is on fire." in notice.text
    assert notice.text.startswith("-- reply above this line [ref:md-1-")
    # A signature made for bob does not verify for carol.
    local = reply_address(notice).split("@")[0]
    assert app.signer.parse_reply_local_part(local, agent="bob") is not None
    assert app.signer.parse_reply_local_part(local, agent="carol") is None
    assert app.signer.parse_reply_local_part(local) is None


@pytest.mark.parametrize("style", ["thunderbird", "outlook", "gmail"])
def test_agent_reply_reaches_the_customer_without_quotes_commands_or_private_address(
    app: App, style: str
) -> None:
    notice = _open_ticket(app, cc="Dave <dave@customer.test>")
    raw = client_reply(
        notice,
        "#status resolved\n#priority high\n\nHello Alice,\n\nplease unplug the printer.\n",
        style=style,
        attachment=("manual.pdf", "application/pdf", b"%PDF-1.4 manual"),
    )
    _agent_deliver(app, raw, reply_address(notice))

    answers = to(app, ALICE, "agent_reply")
    assert len(answers) == 1
    answer = answers[0]
    assert "dave@customer.test" in answer.recipients  # customer-side Cc participant
    assert not AGENT_ADDRESSES & set(answer.recipients)
    text = answer.text
    assert "please unplug the printer." in text
    assert "#status" not in text and "#priority" not in text
    assert "My printer is on fire." not in text  # the quoted notification is cut
    assert b"bob@agents.test" not in answer.raw
    assert str(answer.msg["From"]).endswith("<support@example.com>")
    assert answer.msg["In-Reply-To"] == "<first@customer.test>"
    assert "md.a." not in str(answer.msg["References"] or "")
    names = [p.get_filename() for p in answer.msg.iter_attachments()]
    assert names == ["manual.pdf"]

    ticket = ticket_number(app)
    assert ticket.status == "resolved" and ticket.priority == "high"
    resolved = to(app, ALICE, "resolved")
    assert len(resolved) == 1 and "support+rate-1-5-" in resolved[0].text
    applied = events_of_kind(app, "agent_command")
    assert [e.data["command"] for e in applied] == ["status", "priority"]
    assert all(e.data["checks"] == ["signature", "from"] for e in applied)
    result = to(app, "bob@agents.test", "agent_result")
    assert len(result) == 1 and "applied: #status resolved" in result[0].text
    with app.db.transaction() as session:
        kinds = [m.kind for m in session.scalars(select(Message).order_by(Message.id))]
    assert MessageKind.AGENT_REPLY in kinds


def test_an_agents_reply_that_comes_back_with_a_footer_is_not_sent_twice(app: App) -> None:
    """Bob's reply also reaches us through his team's list, which adds a footer: the
    same Message-ID from the same agent is the same reply, not a second answer."""
    notice = _open_ticket(app)
    raw = client_reply(notice, "#priority high\n\nHello Alice,\n\nunplug the printer.\n")
    _agent_deliver(app, raw, reply_address(notice))
    footer = b"\n_______________\nteam-l mailing list -- unsubscribe: team-l-leave@agents.test\n"
    _agent_deliver(app, raw.rstrip(b"\n") + footer, reply_address(notice))

    assert len(to(app, ALICE, "agent_reply")) == 1
    assert len(events_of_kind(app, "agent_command")) == 1
    assert len(to(app, "bob@agents.test", "agent_result")) == 1


def test_invalid_commands_are_not_applied_and_reported(app: App) -> None:
    notice = _open_ticket(app)
    raw = client_reply(
        notice,
        "#status maybe\n#assign nobody\n#frobnicate\n#category billing\n\nDone.\n",
    )
    _agent_deliver(app, raw, reply_address(notice))
    # Nothing by halves: the well-formed #category is not applied either, nothing is sent.
    ticket = ticket_number(app)
    assert ticket.status == "new" and ticket.category is None
    report = to(app, "bob@agents.test", "agent_result")[0].text
    assert "NOT applied: #status maybe (status must be one of" in report
    assert "NOT applied: #assign nobody (no agent or group named 'nobody')" in report
    assert "NOT applied: #frobnicate (unknown command #frobnicate)" in report
    assert "applied: #category billing" not in report
    assert "nothing was sent to the customer" in report
    assert to(app, ALICE, "agent_reply") == []


def test_assign_watch_and_template(app: App, tmp_path: Path) -> None:
    notice = _open_ticket(app)
    raw = client_reply(notice, "#assign carol\n#watch\n#template thanks\n\nMore soon.\n")
    _agent_deliver(app, raw, reply_address(notice))
    assert ticket_number(app).assignee == "carol"
    assigned = to(app, "carol@agents.test", "assigned")
    assert len(assigned) == 1 and "assigned to you" in assigned[0].text
    answer = to(app, ALICE, "agent_reply")[0].text
    assert "thank you for contacting us about" in answer and "More soon." in answer
    # bob watches now: a customer reply notifies carol (assignee) and bob (watcher).
    deliver(app, reply_to(make_mail(message_id="first@customer.test"), body="Still burning\n"))
    assert len(to(app, "carol@agents.test", "customer_reply")) == 1
    assert len(to(app, "bob@agents.test", "customer_reply")) == 1


def _forged(app: App, raw: bytes, rcpt: str) -> None:
    before = {(s.purpose, tuple(s.recipients)) for s in outbox(app)}
    status = ticket_number(app).status
    deliver(app, raw, rcpt=(rcpt,), mail_from="bob@agents.test")
    after = [s for s in outbox(app) if (s.purpose, tuple(s.recipients)) not in before]
    assert not [s for s in after if ALICE in s.recipients], "nothing may reach the customer"
    assert ticket_number(app).status == status
    assert not events_of_kind(app, "agent_command")
    with app.db.transaction() as session:
        last = session.scalars(select(Intake).order_by(Intake.id.desc())).first()
        assert last is not None and last.state == IntakeState.QUARANTINED
        assert last.quarantine_reason and last.quarantine_reason.startswith("held agent mail")


def test_from_alone_is_held_and_the_real_agent_is_told(app: App) -> None:
    _open_ticket(app)
    forged = reply_to(
        make_mail(message_id="first@customer.test"),
        sender="Bob Agent <bob@agents.test>",
        body="#status closed\n\nClosing this.\n",
    )
    _forged(app, forged, "support@example.com")
    held = events_of_kind(app, "agent_mail_held")
    assert held and "From alone proves nothing" in held[-1].reason
    warning = to(app, "bob@agents.test", "agent_held")
    assert len(warning) == 1 and "NOT accepted" in warning[0].text


def test_valid_signature_but_failing_authentication_results_is_held(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = agent_app(
        tmp_path,
        database_url,
        clock,
        agent_mail={"require_dmarc": True, "trusted_authserv_ids": ["mx.example.com"]},
    )
    try:
        notice = _open_ticket(app)
        address = reply_address(notice)
        failing = "mx.example.com; dmarc=fail (p=reject) header.from=agents.test"
        _forged(
            app,
            client_reply(
                notice, "#status closed\n\nx\n", headers={"Authentication-Results": failing}
            ),
            address,
        )
        # A pass from a host we do not trust counts for nothing.
        untrusted = "evil.example; dmarc=pass header.from=agents.test"
        _forged(
            app,
            client_reply(
                notice, "#status closed\n\ny\n", headers={"Authentication-Results": untrusted}
            ),
            address,
        )
        assert len(events_of_kind(app, "agent_mail_held")) == 2
        # The same reply with our MTA's pass is applied, and says which checks passed.
        passing = "mx.example.com; spf=pass smtp.mailfrom=bob@agents.test; dmarc=pass header.from=agents.test"
        raw = client_reply(
            notice, "#status closed\n\nz\n", headers={"Authentication-Results": passing}
        )
        _agent_deliver(app, raw, address)
        assert ticket_number(app).status == "closed"
        assert events_of_kind(app, "agent_command")[0].data["checks"] == [
            "signature",
            "from",
            "dmarc",
            "spf",
        ]
    finally:
        app.db.dispose()


def test_another_tickets_signature_is_held(app: App) -> None:
    notice = _open_ticket(app)
    deliver(app, make_mail(message_id="second@customer.test", subject="Another thing"))
    local, _, domain = reply_address(notice).partition("@")
    replayed = local.replace("+a-1-", "+a-2-") + "@" + domain
    raw = client_reply(notice, "#status closed\n\nx\n", to_addr=replayed)
    _forged(app, raw, replayed)
    assert "not valid for any agent" in events_of_kind(app, "agent_mail_held")[-1].reason
    assert ticket_number(app, 2).status == "new"


def test_another_agents_signature_is_held(app: App) -> None:
    notice = _open_ticket(app)  # signed for bob
    raw = client_reply(notice, "#status closed\n\nx\n", sender="Carol <carol@agents.test>")
    _forged(app, raw, reply_address(notice))
    assert "signed for agent bob, but the mail is from carol@agents.test" in (
        events_of_kind(app, "agent_mail_held")[-1].reason
    )


def test_agents_new_mail_with_commands_asks_for_confirmation(app: App) -> None:
    _open_ticket(app)
    raw = plain_mail(
        "Bob Agent <bob@agents.test>",
        "support@example.com",
        "[Support #1] fix",
        "#priority urgent\n",
    )
    deliver(app, raw, mail_from="bob@agents.test")
    assert ticket_number(app).priority == "normal"
    request = to(app, "bob@agents.test", "agent_confirm")
    assert len(request) == 1 and "#priority urgent" in request[0].text
    assert "support+c-1-" in reply_address(request[0])
    _agent_deliver(app, client_reply(request[0], "ok\n"), reply_address(request[0]))
    assert ticket_number(app).priority == "urgent"
    assert events_of_kind(app, "agent_command")[0].data["checks"][-1] == "confirmed"


def test_notes_never_reach_the_customer(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = agent_app(
        tmp_path, database_url, clock, agent_mail={"internal_addresses": ["internal@example.com"]}
    )
    secret = "Customer owes us 5000 EUR from the last contract, do not mention it"
    secret2 = "Second note via the internal address: vendor bug VX-1234 is the cause"
    try:
        notice = _open_ticket(app)
        address = reply_address(notice)
        _agent_deliver(app, client_reply(notice, f"#note\n\n{secret}\n"), address)
        first = make_mail(message_id="first@customer.test")
        note2 = reply_to(first, sender="Bob Agent <bob@agents.test>", body=secret2 + "\n")
        deliver(app, note2, rcpt=("internal@example.com",), mail_from="bob@agents.test")
        deliver(app, reply_to(first, body="Any news?\n", message_id="second@customer.test"))
        # The notification shows both notes to bob ...
        latest = to(app, "bob@agents.test", "customer_reply")[-1]
        assert secret in latest.text and secret2 in latest.text
        # ... and bob's plain reply quotes it all; the answer must not carry it.
        _agent_deliver(app, client_reply(latest, "We are on it.\n", style="outlook"), address)
        # Pasting a note above the marker is caught before sending.
        _agent_deliver(app, client_reply(latest, f"FYI: {secret}\n"), address)
        _agent_deliver(
            app, client_reply(latest, "#status resolved\n\nAll done.\n", style="gmail"), address
        )
        customer_mail = [s for s in outbox(app) if not AGENT_ADDRESSES & set(s.recipients)]
        assert {s.purpose for s in customer_mail} == {"ack", "agent_reply", "resolved"}
        assert len([s for s in customer_mail if s.purpose == "agent_reply"]) == 2
        for sent in customer_mail:
            flat = " ".join(sent.raw.decode("utf-8", "replace").split())
            for text in (secret, secret2, "5000 EUR", "VX-1234"):
                assert text not in flat, (sent.purpose, text)
        report = to(app, "bob@agents.test", "agent_result")
        assert any("contains the internal note text" in r.text for r in report)
    finally:
        app.db.dispose()


def test_rating_mail_is_stored(app: App) -> None:
    notice = _open_ticket(app)
    _agent_deliver(app, client_reply(notice, "#status resolved\n\nFixed.\n"), reply_address(notice))
    resolved = to(app, ALICE, "resolved")[0]
    rate4 = next(
        line.split(": ", 1)[1]
        for line in resolved.text.splitlines()
        if line.strip().startswith("4:")
    )
    deliver(app, plain_mail("Alice <alice@customer.test>", rate4.strip(), "rating", "\n"))
    with app.db.transaction() as session:
        ratings = [(r.score, r.contact) for r in session.scalars(select(Rating))]
    assert ratings == [(4, ALICE)]
    assert ticket_number(app).status == "resolved"  # a rating does not reopen
    # A forged score (signature of 4 on a 5) is not a rating.
    forged = rate4.replace("rate-1-4-", "rate-1-5-")
    deliver(app, plain_mail("Alice <alice@customer.test>", forged, "rating", "\n"))
    with app.db.transaction() as session:
        assert len(session.scalars(select(Rating)).all()) == 1


def test_a_hostile_attachment_name_reaches_the_customer_as_harmless_text(app: App) -> None:
    notice = _open_ticket(app)
    raw = client_reply(
        notice, "The log is attached.\n", attachment=("log.txt", "text/plain", b"log lines\n")
    )
    # RFC 2231 lets a name carry anything: a path, and a CR LF that would start a header.
    hostile = b"filename*=utf-8''..%2F..%2Fetc%2Fpasswd%0D%0ABcc%3A%20evil%40attacker.test"
    assert b'filename="log.txt"' in raw
    raw = raw.replace(b'filename="log.txt"', hostile)
    _agent_deliver(app, raw, reply_address(notice))
    [answer] = to(app, ALICE, "agent_reply")
    assert "evil@attacker.test" not in answer.recipients
    assert answer.msg["Bcc"] is None
    [part] = list(answer.msg.iter_attachments())
    name = part.get_filename() or ""
    assert "/" not in name and "\r" not in name and "\n" not in name
    assert name == ".._.._etc_passwdBcc: evil@attacker.test"  # one line of text, no path
    assert part.get_content() == "log lines\n"
    # Stored on the ticket as display text, content-addressed: the name is never a path.
    with app.db.transaction() as session:
        from maildesk.db.models import Attachment

        stored = session.scalars(select(Attachment)).all()
        assert stored and all(len(a.sha256) == 64 for a in stored)


def test_an_attached_text_file_reaches_the_customer_in_its_own_charset(app: App) -> None:
    notice = _open_ticket(app)
    text = "Grüße aus Köln: Maß 5 €\n"
    attachment = ("notes.txt", "text/plain; charset=windows-1252", text.encode("cp1252"))
    raw = client_reply(notice, "Our notes are attached.\n", attachment=attachment)
    _agent_deliver(app, raw, reply_address(notice))
    [answer] = to(app, ALICE, "agent_reply")
    [part] = list(answer.msg.iter_attachments())
    # Without its charset the customer's client reads the bytes as ASCII: "Gr??e".
    assert part.get_content_charset() == "windows-1252"
    assert part.get_content() == text


def test_a_customer_reply_to_a_resolved_ticket_reopens_it_and_tells_the_assignee(
    app: App,
) -> None:
    notice = _open_ticket(app)
    _agent_deliver(app, client_reply(notice, "#status resolved\n\nFixed.\n"), reply_address(notice))
    assert ticket_number(app).status == "resolved"
    first = make_mail(message_id="first@customer.test")
    deliver(app, reply_to(first, body="Sorry, it is burning again.\n"))
    assert ticket_number(app).status == "open"
    [told] = to(app, "bob@agents.test", "customer_reply")
    assert "wrote on ticket #1 (reopened)" in told.text and "burning again" in told.text


def test_signatures_made_with_a_retired_secret_count_until_its_grace_period_ends(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    old = agent_app(tmp_path, database_url, clock, installation_secret="the-old-secret")
    try:
        notice = _open_ticket(old)  # signed with the old secret
    finally:
        old.db.dispose()
    until = clock().replace(year=clock().year + 1).isoformat()
    retired = [{"secret": "the-old-secret", "until": until}]
    rotated = agent_app(
        tmp_path, database_url, clock, installation_secret="the-new-one", retired_secrets=retired
    )
    try:
        _agent_deliver(rotated, client_reply(notice, "Still valid.\n"), reply_address(notice))
        assert "Still valid." in to(rotated, ALICE, "agent_reply")[0].text
    finally:
        rotated.db.dispose()
    # Past the grace period the old signature proves nothing: held.
    ended = [{"secret": "the-old-secret", "until": (clock() - timedelta(days=1)).isoformat()}]
    forgotten = agent_app(
        tmp_path, database_url, clock, installation_secret="the-new-one", retired_secrets=ended
    )
    try:
        again = client_reply(notice, "Too late.\n")
        _agent_deliver(forgotten, again, reply_address(notice))
        assert len(to(forgotten, ALICE, "agent_reply")) == 1
        with forgotten.db.transaction() as session:
            held = session.scalars(
                select(Intake).where(Intake.state == IntakeState.QUARANTINED)
            ).all()
        assert [h.quarantine_reason or "" for h in held][-1].startswith("held agent mail")
    finally:
        forgotten.db.dispose()


@pytest.mark.parametrize(
    "commands",
    ["#spam\n", "#status resolved\n#spam\n", "#spam\n#status resolved\n"],
    ids=["spam", "resolve-then-spam", "spam-then-resolve"],
)
def test_spam_by_mail_sends_the_spammer_nothing_and_closes_the_ticket(
    app: App, commands: str
) -> None:
    """MAIL-RULES §3 and §5: #spam is a command, and spam is never answered: neither the
    agent's words under it nor a resolution mail may go to the sender (backscatter)."""
    notice = _open_ticket(app, body="Cheap pills at https://pills.example.top\n")
    raw = client_reply(notice, f"{commands}\nJunk, do not answer this.\n")
    _agent_deliver(app, raw, reply_address(notice))

    assert [s.purpose for s in to(app, ALICE)] == ["ack"], "only the ack sent before #spam"
    ticket = ticket_number(app)
    assert ticket.possible_spam
    if commands.rstrip().endswith("#spam"):  # else the agent's later #status stands
        assert ticket.status == "closed"
    with app.db.transaction() as session:
        verdicts = session.scalars(select(SpamFeedback.label)).all()
    assert verdicts == ["spam"], "and the filter learns it"
    assert "spam" in [e.data["command"] for e in events_of_kind(app, "agent_command")]
    [result] = to(app, "bob@agents.test", "agent_result")
    assert "applied: #spam" in result.text


def test_every_mail_we_generate_carries_auto_submitted_our_loop_header_and_marker(app: App) -> None:
    """MAIL-RULES §3: whatever we send (acknowledgement, agents' notices, command
    results, warnings, resolution mail) says it is automatic and carries our loop
    header, so no responder answers it and our own guard knows it when it comes back.
    The agent's answer is a person's mail (Auto-Submitted: no) but carries the header."""
    notice = _open_ticket(app)
    first = make_mail(message_id="first@customer.test")
    deliver(app, reply_to(first, body="Any news?\n", message_id="second@customer.test"))
    forged = reply_to(first, sender="Bob Agent <bob@agents.test>", body="#status closed\n")
    deliver(app, forged, mail_from="bob@agents.test")  # held: bob is warned
    new = plain_mail(
        "Bob Agent <bob@agents.test>", "support@example.com", "[Support #1] x", "#priority high\n"
    )
    deliver(app, new, mail_from="bob@agents.test")  # asks bob to confirm
    raw = client_reply(notice, "#assign carol\n#status resolved\n\nDone.\n")
    _agent_deliver(app, raw, reply_address(notice))

    sent = outbox(app)
    purposes = {s.purpose for s in sent}
    assert {"ack", "new_ticket", "customer_reply", "agent_held", "agent_confirm"} <= purposes
    assert {"agent_reply", "agent_result", "assigned", "resolved"} <= purposes
    token = app.notices().composer.loop_token
    for mail in sent:
        assert mail.msg["X-Maildesk-Loop"] == token, mail.purpose
        assert app.signer.find_body_marker(mail.text) == 1, mail.purpose  # threads back
        expected = {"no"} if mail.purpose == "agent_reply" else {"auto-replied", "auto-generated"}
        assert mail.msg["Auto-Submitted"] in expected, mail.purpose


def test_an_agents_reply_to_the_support_address_counts_by_its_signed_in_reply_to(
    app: App,
) -> None:
    """MAIL-RULES §5: a client that answers the From instead of the Reply-To still
    answers a Message-ID signed for that agent and ticket; the same id under another
    agent's From proves nothing."""
    notice = _open_ticket(app)
    assert str(notice.msg["Message-ID"]).startswith("<md.a.1.")
    stolen = client_reply(
        notice,
        "#status closed\n\nx\n",
        sender="Carol <carol@agents.test>",
        to_addr="support@example.com",
    )
    _forged(app, stolen, "support@example.com")

    raw = client_reply(
        notice, "#priority high\n\nPlease unplug it.\n", to_addr="support@example.com"
    )
    _agent_deliver(app, raw, "support@example.com")
    [answer] = to(app, ALICE, "agent_reply")
    assert "Please unplug it." in answer.text and "#priority" not in answer.text
    assert ticket_number(app).priority == "high"
    [applied] = events_of_kind(app, "agent_command")
    assert applied.data["checks"][0] == "signature"


def test_agents_get_only_the_notifications_their_settings_ask_for(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """MAIL-RULES §5: a notification per new ticket / customer reply, per their settings."""
    agents = [{**AGENTS[0], "notify": {"customer_reply": False}}, AGENTS[1]]
    app = agent_app(tmp_path, database_url, clock, agents=agents)
    try:
        first = make_mail(message_id="first@customer.test")
        deliver(app, first)
        deliver(app, reply_to(first, body="Any news?\n", message_id="second@customer.test"))
        assert [s.purpose for s in to(app, "bob@agents.test")] == ["new_ticket"]
    finally:
        app.db.dispose()
    # The same database, bob's settings turned the other way round.
    quiet = [{**AGENTS[0], "notify": {"new_ticket": False}}, AGENTS[1]]
    app = agent_app(tmp_path, database_url, clock, agents=quiet)
    try:
        first = make_mail(message_id="third@customer.test", subject="Other", sender="zoe@c.test")
        deliver(app, first)
        deliver(app, reply_to(first, body="Hello?\n", message_id="fourth@customer.test"))
        later = [s.purpose for s in to(app, "bob@agents.test")][1:]
        assert later == ["customer_reply"]
    finally:
        app.db.dispose()
