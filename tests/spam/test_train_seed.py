"""The seed builder: ticket requests become plain mails, spread evenly through the corpus."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from maildesk.domain.message import ParsedMessage
from maildesk.spam.train_seed import interleave, ticket_requests


def write_tickets(path: Path, count: int) -> Path:
    lines = ["Document,Topic_group"]
    lines += [f"printer {n} not printing since morning please help,Hardware" for n in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ticket_requests_are_plain_mails_from_customers_and_the_same_every_time(
    tmp_path: Path,
) -> None:
    csv_path = write_tickets(tmp_path / "tickets.csv", 30)
    first = list(ticket_requests(csv_path, 10))
    again = list(ticket_requests(csv_path, 10))
    assert len(first) == 10
    assert [m.text for m in first] == [m.text for m in again]  # a fixed sample
    assert [m.subject for m in first] == [m.subject for m in again]
    # The Message-ID too (its local part is a feature): one command, one seed model.
    assert [m.message_id for m in first] == [m.message_id for m in again]
    assert len({m.message_id for m in first}) == 10
    assert [m.headers for m in first] == [m.headers for m in again]
    for mail in first:
        assert "printing since morning" in mail.text and mail.html is None
        assert mail.subject.startswith("Printer ")
    assert len({m.text for m in first}) == 10  # distinct tickets, none twice


def test_ticket_requests_come_from_organisations_and_mailbox_providers_like_real_customers(
    tmp_path: Path,
) -> None:
    """A seed that saw only organisation senders learned from its 2002 spam that a
    Yahoo or Gmail sender is spam (a Yahoo customer's invoice question: 0.99)."""
    csv_path = write_tickets(tmp_path / "tickets.csv", 400)
    requests = list(ticket_requests(csv_path, 400))
    domains = [m.from_.addr.rpartition("@")[2] for m in requests if m.from_ is not None]
    assert len(domains) == 400
    providers = [d for d in domains if not d.endswith(".example")]
    assert 0.25 < len(providers) / 400 < 0.45
    assert {"gmail.com", "yahoo.com", "outlook.com"} <= set(providers)
    nameless = [m for m in requests if m.from_ is not None and not m.from_.name]
    assert 0.08 < len(nameless) / 400 < 0.22  # some clients send the bare address
    # Most came through our SMTP listener, as its Received line shows: the relay
    # that handed each over, named by HELO with its address.
    traced = [m.header_all("Received") for m in requests if m.header_all("Received")]
    assert 0.75 < len(traced) / 400 < 0.95
    assert all(len(hops) == 1 and "by maildesk with ESMTP" in hops[0] for hops in traced)
    gmail = [m for m in requests if m.from_ and m.from_.addr.endswith("@gmail.com")]
    relays = [m.header_all("Received")[0] for m in gmail if m.header_all("Received")]
    assert relays and all(".google.com ([209.85." in hop for hop in relays)


def test_interleave_keeps_the_corpus_order_and_spreads_every_extra_ham(tmp_path: Path) -> None:
    requests = list(ticket_requests(write_tickets(tmp_path / "t.csv", 5), 5))
    # Stand-ins for the corpus: one message object, so only the labels tell them apart.
    corpus: list[tuple[ParsedMessage, bool]] = [(requests[0], n % 3 == 0) for n in range(20)]
    mixed = list(interleave(corpus, requests[1:]))
    assert len(mixed) == 20 + 4
    positions = [i for i, item in enumerate(mixed) if item[0] is not requests[0]]
    assert [mixed[i][1] for i in positions] == [False] * 4  # learned as ham
    assert max(b - a for a, b in pairwise(positions)) <= 6  # spread out
    assert [s for m, s in mixed if m is requests[0]] == [s for _, s in corpus]
