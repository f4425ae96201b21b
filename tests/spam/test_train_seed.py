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
    for mail in first:
        assert mail.from_ is not None and mail.from_.addr.endswith(".example")
        assert "printing since morning" in mail.text and mail.html is None
        assert mail.subject.startswith("Printer ")
    assert len({m.text for m in first}) == 10  # distinct tickets, none twice


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
