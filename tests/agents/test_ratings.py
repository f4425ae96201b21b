"""Ratings by mail: the words a customer adds to one, and rating addresses that do not verify."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from maildesk.app import App
from maildesk.db.models import Rating, Ticket
from tests.agents.agenthelp import (
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
from tests.mailfactory import deliver, make_mail

ALICE = "alice@customer.test"
BOB = "bob@agents.test"
DAN = "dan@agents.test"


def _resolved(app: App) -> Sent:
    """Alice's ticket #1, answered and resolved by bob: the resolution mail she got."""
    deliver(app, make_mail(message_id="first@customer.test", body="My printer is on fire.\n"))
    notice = to(app, BOB, "new_ticket")[0]
    deliver(
        app,
        client_reply(notice, "#status resolved\n\nUnplug it.\n"),
        rcpt=(reply_address(notice),),
        mail_from=BOB,
    )
    assert ticket_number(app).status == "resolved"
    return to(app, ALICE, "resolved")[0]


def _rating_address(resolved: Sent, score: int) -> str:
    return next(
        line.split(": ", 1)[1].strip()
        for line in resolved.text.splitlines()
        if line.strip().startswith(f"{score}:")
    )


def _quoting(resolved: Sent, words: str) -> str:
    """A reply as Thunderbird writes one: the words, an attribution, the quoted mail."""
    quoted = "\n".join("> " + line if line else ">" for line in resolved.text.splitlines())
    return f"{words}\n\nOn 02.03.26 09:00, Support wrote:\n{quoted}\n"


def _rate(app: App, resolved: Sent, address: str, body: str) -> None:
    deliver(
        app,
        plain_mail(
            "Alice <alice@customer.test>",
            address,
            "Re: " + str(resolved.msg["Subject"]),
            body,
            In_Reply_To=str(resolved.msg["Message-ID"]),
        ),
    )


def _ratings(app: App) -> list[tuple[int, str]]:
    with app.db.transaction() as session:
        return [(r.score, r.contact) for r in session.scalars(select(Rating).order_by(Rating.id))]


def _tickets(app: App) -> int:
    with app.db.transaction() as session:
        return session.scalar(select(func.count()).select_from(Ticket)) or 0


def test_a_low_rating_with_words_tells_the_assignee_and_reopens_the_ticket(app: App) -> None:
    resolved = _resolved(app)
    _rate(
        app,
        resolved,
        _rating_address(resolved, 1),
        _quoting(resolved, "Still broken, nobody helped me.\n\n-- \nAlice Example\n+47 555 0100"),
    )

    assert _ratings(app) == [(1, ALICE)]
    notices = to(app, BOB, "customer_reply")
    assert len(notices) == 1
    text = notices[0].text
    assert "rated ticket #1 1 of 5 (reopened) and wrote:" in text
    assert "Still broken, nobody helped me." in text
    assert "Unplug it." not in text  # the quoted resolution mail is cut
    assert "+47 555 0100" not in text  # and the signature
    assert ticket_number(app).status == "open"
    assert len(to(app, ALICE, "ack")) == 1  # only the first mail's


def test_a_high_rating_with_words_tells_the_assignee_and_leaves_the_ticket_resolved(
    app: App,
) -> None:
    resolved = _resolved(app)
    _rate(app, resolved, _rating_address(resolved, 5), "Thanks, that did it!\n")

    assert _ratings(app) == [(5, ALICE)]
    notices = to(app, BOB, "customer_reply")
    assert len(notices) == 1
    assert "rated ticket #1 5 of 5 and wrote:" in notices[0].text
    assert "Thanks, that did it!" in notices[0].text
    assert ticket_number(app).status == "resolved"


@pytest.mark.parametrize(
    "body",
    [
        "\n",
        "Sent from my iPhone\n",
        "-- \nAlice Example\n+47 555 0100\n",
        "quote",  # only the quoted resolution mail, nothing of her own
    ],
)
def test_a_rating_without_words_of_her_own_tells_nobody(app: App, body: str) -> None:
    resolved = _resolved(app)
    body = _quoting(resolved, "")[2:] if body == "quote" else body
    _rate(app, resolved, _rating_address(resolved, 1), body)

    assert _ratings(app) == [(1, ALICE)]
    assert to(app, BOB, "customer_reply") == []
    assert ticket_number(app).status == "resolved"


def _mistyped(address: str) -> str:
    """The last character of the signature changed, as a hand-copied address may be."""
    local, at, domain = address.rpartition("@")
    return local[:-1] + ("a" if local[-1] != "a" else "b") + at + domain


def test_a_rating_address_that_does_not_verify_is_kept_on_the_requesters_ticket(
    app: App,
) -> None:
    resolved = _resolved(app)
    before = len(outbox(app))
    _rate(app, resolved, _mistyped(_rating_address(resolved, 4)), "\n")

    assert _tickets(app) == 1  # no ticket "rating"
    assert len(outbox(app)) == before  # nothing acknowledged, no agent told
    assert _ratings(app) == []  # a From alone is not counted as a rating
    [event] = events_of_kind(app, "rating_unverified")
    assert event.ticket_id == ticket_number(app).id and event.data["score"] == 4
    assert ticket_number(app).status == "resolved"


def test_words_to_a_rating_address_that_does_not_verify_still_reach_the_assignee(
    app: App,
) -> None:
    resolved = _resolved(app)
    _rate(app, resolved, _mistyped(_rating_address(resolved, 2)), "The printer burns again.\n")

    assert _tickets(app) == 1
    [notice] = to(app, BOB, "customer_reply")
    assert "rated ticket #1 2 of 5 (to a rating address whose signature does not verify)" in (
        " ".join(notice.text.split())
    )
    assert "The printer burns again." in notice.text
    assert ticket_number(app).status == "open"


def test_a_stranger_at_a_rating_address_that_does_not_verify_is_a_customer_to_support(
    app: App,
) -> None:
    resolved = _resolved(app)
    address = _mistyped(_rating_address(resolved, 1))
    deliver(
        app,
        plain_mail("Mallory <mallory@evil.test>", address, "rating", "Terrible!\n"),
        mail_from="mallory@evil.test",
    )

    assert _ratings(app) == [] and events_of_kind(app, "rating_unverified") == []
    assert _tickets(app) == 2  # a ticket of her own, not a word on Alice's
    assert len(to(app, "mallory@evil.test", "ack")) == 1
    assert ticket_number(app).status == "resolved"


def test_a_low_rating_that_reopens_while_the_assignee_is_away_goes_to_who_is_there(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Reopened as a reply would reopen it: bob is away, so dan of his group takes it."""
    away = {"start": "2026-03-04", "end": "2026-03-20"}
    agents = [
        {**AGENTS[0], "absences": [away]},
        {"name": "dan", "addresses": [DAN], "groups": ["L1"]},
    ]
    app = agent_app(tmp_path, database_url, clock, agents=agents)
    try:
        resolved = _resolved(app)
        assert ticket_number(app).assignee == "bob"
        clock.advance(days=2)  # bob's absence has begun
        _rate(app, resolved, _rating_address(resolved, 1), "Still broken.\n")

        ticket = ticket_number(app)
        assert (ticket.status, ticket.assignee) == ("open", "dan")
        last = events_of_kind(app, "assigned")[-1]
        assert last.data["agent"] == "dan" and last.data["reopened"] is True
        [notice] = to(app, DAN)  # one notice: the ticket is his now, with her words
        assert notice.purpose == "assigned"
        assert "Still broken." in notice.text
        assert to(app, BOB, "customer_reply") == []  # away: not told
    finally:
        app.db.dispose()
