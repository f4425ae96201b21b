"""Build the shipped seed model: ``python -m maildesk.spam.train_seed --out spam_model/``.

Trains an empty model on every message of a TREC index (default: the
SpamAssassin public corpus index) in index order, with support requests from a
labelled ticket export (default: the public IT service-desk tickets) mixed in
evenly as ham, then saves ``seed.npz``.

Why the tickets: the SpamAssassin ham is 2002 mailing-list discussion, so a
seed trained on it alone finds a short modern "I cannot log in to my account"
more like its spam than its ham (72 % of held-out requests landed in
"unsure"). The tickets are text only; each becomes a plain modern message
from a made-up customer, varied enough that no one header shape is learned.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import click

from maildesk.domain.message import ParsedMessage
from maildesk.intake.smtp import trace_header
from maildesk.pipeline.parse import parse_message
from maildesk.spam.evaluate import load_messages, read_index
from maildesk.spam.model import SpamFilter

_FIRST = ("anna", "ben", "chen", "dana", "emil", "fatima", "goran", "hana", "ivan", "julia")
_LAST = ("berg", "cruz", "dahl", "evans", "fischer", "garcia", "hansen", "ito", "novak", "olsen")
_ORGS = ("acme", "globex", "initech", "umbrella", "stark", "wayne", "tyrell", "hooli")
_CHARSETS = ("utf-8", "us-ascii", "iso-8859-1")
# Where customers' mail comes from: a mailbox provider, or their organisation's
# domain on its own server or hosted by Google or Microsoft. Each with the
# relay that hands such mail to us (HELO pattern) and that relay's address
# prefix, as our SMTP listener's Received line records them.
_MAILBOX_PROVIDERS = (
    ("gmail.com", "mail-{n}.google.com", "209.85"),
    ("outlook.com", "eur{n}.outbound.protection.outlook.com", "40.107"),
    ("hotmail.com", "nam{n}.outbound.protection.outlook.com", "40.92"),
    ("yahoo.com", "sonic{n}.consmr.mail.ne1.yahoo.com", "66.163"),
    ("icloud.com", "st43p00im-{n}.me.com", "17.58"),
    ("gmx.de", "mout.gmx.net", "212.227"),
    ("web.de", "mout.web.de", "217.72"),
    ("aol.com", "sonic{n}.consmr.mail.bf2.yahoo.com", "74.6"),
)
_HOSTED_RELAYS = (
    ("mail-{n}.google.com", "209.85"),
    ("eur{n}.outbound.protection.outlook.com", "40.107"),
)
_PROVIDER_SHARE = 0.35  # the rest write from their organisation's domain
# Some clients send the bare address; the 2002 spam mostly does, so a seed
# whose customers all had a name learned a bare address as spam (+2.7).
_NAMELESS_SHARE = 0.15
_TRACED_SHARE = 0.85  # the rest come in without our Received line (piped, imported)


def corpus_dir() -> Path:
    """The shared mail corpus: ``$MAILDESK_CORPUS``, else ``../shared/corpus`` beside the repo."""
    corpus = os.environ.get("MAILDESK_CORPUS")
    return Path(corpus) if corpus else Path(__file__).resolve().parents[3] / "shared" / "corpus"


def ticket_requests(path: Path, count: int, seed: int = 2026) -> Iterator[ParsedMessage]:
    """``count`` tickets of a ``Document,...`` CSV (a fixed random sample) as request mails."""
    with path.open(newline="", encoding="utf-8") as handle:
        texts = [row["Document"] for row in csv.DictReader(handle) if row.get("Document")]
    rng = random.Random(seed)
    rng.shuffle(texts)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for number, text in enumerate(texts[:count]):
        words = text.split()
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        domain, helo, ip_prefix = _customer_domain(rng, number)
        mail = EmailMessage()
        address = f"{first}.{last}@{domain}"
        named = rng.random() >= _NAMELESS_SHARE
        mail["From"] = f"{first.title()} {last.title()} <{address}>" if named else address
        mail["To"] = "support@helpdesk.example"
        mail["Subject"] = " ".join(words[: rng.randint(3, 7)]).capitalize()
        sent = start + timedelta(minutes=37 * number)
        mail["Date"] = format_datetime(sent)
        # Shaped like email.utils.make_msgid's, but from the sample's own random
        # numbers, so the same command makes the same seed model.
        mail["Message-ID"] = (
            f"<{int(sent.timestamp() * 100)}.{rng.randint(1000, 99999)}."
            f"{rng.getrandbits(64)}@{domain}>"
        )
        mail.set_content(text + "\n", charset=rng.choice(_CHARSETS))
        trace = b""
        if rng.random() < _TRACED_SHARE:
            missing = 3 - ip_prefix.count(".")
            peer = ".".join([ip_prefix, *(str(rng.randint(1, 254)) for _ in range(missing))])
            trace = trace_header(helo, peer, "esmtp", sent + timedelta(seconds=2)).encode()
        yield parse_message(trace + mail.as_bytes())


def _customer_domain(rng: random.Random, number: int) -> tuple[str, str, str]:
    """(sender domain, HELO of the relay that hands the mail to us, its address prefix).

    Without mailbox providers among them, the seed learned from its 2002 spam
    that a Yahoo or Gmail sender is spam, and held a Yahoo customer's invoice
    question at 0.99 (model card, seventh session).
    """
    n = rng.randint(1, 400)
    if rng.random() < _PROVIDER_SHARE:
        domain, helo, prefix = rng.choice(_MAILBOX_PROVIDERS)
        return domain, helo.format(n=n), prefix
    domain = f"{rng.choice(_ORGS)}-{number % 97}.example"
    hosting = rng.random()
    if hosting < 0.4:
        return domain, f"mail.{domain}", "198.51.100"
    helo, prefix = _HOSTED_RELAYS[0 if hosting < 0.75 else 1]
    return domain, helo.format(n=n), prefix


def interleave(
    corpus: list[tuple[ParsedMessage, bool]], extra_ham: list[ParsedMessage]
) -> Iterator[tuple[ParsedMessage, bool]]:
    """The corpus in order, with the extra ham spread evenly through it."""
    every = len(corpus) / len(extra_ham) if extra_ham else float("inf")
    pending = iter(extra_ham)
    for position, item in enumerate(corpus):
        yield item
        if position % every < 1:
            ham = next(pending, None)
            if ham is not None:
                yield ham, False
    yield from ((ham, False) for ham in pending)


def build_seed(
    corpus: Iterable[tuple[ParsedMessage, bool]], requests: list[ParsedMessage]
) -> SpamFilter:
    """An empty model that has learned ``corpus`` in order, with ``requests`` spread in as ham."""
    model = SpamFilter()
    for msg, is_spam in interleave(list(corpus), requests):
        model.learn(msg, is_spam)
    return model


@click.command()
@click.option("--index", type=click.Path(exists=True, path_type=Path), default=None)
@click.option(
    "--tickets",
    "tickets_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Ticket CSV with a Document column (default: the corpus's IT service-desk tickets).",
)
@click.option("--ticket-count", type=int, default=4000, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("spam_model"))
def main(index: Path | None, tickets_csv: Path | None, ticket_count: int, out: Path) -> None:
    index = index or corpus_dir() / "spamassassin" / "index"
    tickets_csv = tickets_csv or corpus_dir() / "tickets" / "it-service-tickets.csv"
    messages, failed = load_messages(read_index(index))
    requests = list(ticket_requests(tickets_csv, ticket_count)) if ticket_count else []
    model = build_seed(messages, requests)
    model.save(out / "seed.npz")
    (out / "seed.npz").chmod(0o644)  # shipped read-only data, not a secret
    click.echo(
        f"seed: {model.trained_spam} spam + {model.trained_ham} ham from {index} "
        f"({failed} unparsable) and {len(requests)} requests from {tickets_csv} "
        f"-> {out / 'seed.npz'}"
    )


if __name__ == "__main__":
    main()
