"""The inbound guard (MAIL-RULES §3): who may get an automatic answer."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from maildesk.domain.autodetect import AutoKind, AutoVerdict, classify
from maildesk.domain.bounces import Undeliverable, bounced_message_ids, undeliverable
from maildesk.domain.message import Address, DeliveryStatus, ParsedMessage

OWN = frozenset({"support@example.com", "billing@example.com"})


def make(
    *headers: tuple[str, str],
    subject: str = "Printer on fire",
    sender: str = "alice@customer.test",
    content_type: str = "text/plain",
    delivery_status: tuple[DeliveryStatus, ...] = (),
    returned_headers: tuple[tuple[str, str], ...] = (),
) -> ParsedMessage:
    """A parsed message as the parser would produce it for these headers."""
    return ParsedMessage(
        message_id="m1@customer.test",
        in_reply_to=(),
        references=(),
        subject=subject,
        from_=Address(sender.lower()) if sender else None,
        to=(Address("support@example.com"),),
        cc=(),
        reply_to=(),
        date=None,
        text="Hello",
        html=None,
        attachments=(),
        headers=((("From", sender),) if sender else ()) + (("Subject", subject), *headers),
        content_type=content_type,
        delivery_status=delivery_status,
        returned_headers=returned_headers,
    )


def verdict(msg: ParsedMessage, envelope: str | None = "alice@customer.test") -> AutoVerdict:
    return classify(msg, envelope_sender=envelope, own_addresses=OWN)


DSN = "multipart/report; report-type=delivery-status; boundary=x"
MDN = "multipart/report; report-type=disposition-notification; boundary=x"
GLOBAL_DSN = "multipart/report; report-type=global-delivery-status; boundary=x"
GLOBAL_MDN = "multipart/report; report-type=global-disposition-notification; boundary=x"
FAILED = DeliveryStatus("rfc822; bob@example.org", "failed", "5.1.1")

# (case, message, envelope sender, expected kind, a reason that must be given)
CASES: list[tuple[str, ParsedMessage, str | None, AutoKind, str | None]] = [
    ("plain person", make(), "alice@customer.test", AutoKind.HUMAN, None),
    ("unknown envelope", make(), None, AutoKind.HUMAN, None),
    # LOOP
    (
        "our loop header",
        make(("X-Maildesk-Loop", "abc")),
        None,
        AutoKind.LOOP,
        "X-Maildesk-Loop: abc",
    ),
    # OWN_MAIL
    ("from our address", make(sender="support@example.com"), None, AutoKind.OWN_MAIL, None),
    (
        "from our address, other case",
        make(sender="Billing@Example.COM"),
        None,
        AutoKind.OWN_MAIL,
        None,
    ),
    (
        "from a sub-address of ours",
        make(sender="support+anything@example.com"),
        None,
        AutoKind.OWN_MAIL,
        "From: support+anything@example.com",
    ),
    (
        "envelope sender is our VERP return path",
        make(),
        "<support+bounce-1-3-abc@example.com>",
        AutoKind.OWN_MAIL,
        None,
    ),
    (
        "a customer at a look-alike address",
        make(sender="support@example.com.evil.test"),
        None,
        AutoKind.HUMAN,
        None,
    ),
    # BOUNCE
    (
        "delivery-status report",
        make(("Content-Type", DSN), content_type="multipart/report"),
        "<>",
        AutoKind.BOUNCE,
        "Content-Type: multipart/report; report-type=delivery-status",
    ),
    ("parsed DSN part", make(delivery_status=(FAILED,)), "", AutoKind.BOUNCE, None),
    (
        # RFC 6533, read from IMAP (no envelope), its report part unreadable: still a bounce.
        "global delivery-status report",
        make(("Content-Type", GLOBAL_DSN), content_type="multipart/report"),
        None,
        AutoKind.BOUNCE,
        "Content-Type: multipart/report; report-type=global-delivery-status",
    ),
    (
        "MAILER-DAEMON",
        make(subject="Returned mail: see transcript", sender="MAILER-DAEMON@mx.example.org"),
        "",
        AutoKind.BOUNCE,
        "From: mailer-daemon@mx.example.org",
    ),
    (
        "postmaster",
        make(subject="Hi", sender="postmaster@mx.example.org"),
        None,
        AutoKind.BOUNCE,
        None,
    ),
    ("mailer@", make(subject="Hi", sender="mailer@mx.example.org"), None, AutoKind.BOUNCE, None),
    (
        "MAILER-DAEMON without domain in the raw From",
        make(("From", "Mail Delivery Subsystem <MAILER-DAEMON>"), sender=""),
        None,
        AutoKind.BOUNCE,
        "From: mailer-daemon",
    ),
    (
        "Return-Path of a bounce daemon when the envelope is unknown",
        make(("Return-Path", "<MAILER-DAEMON@mx.example.org>"), subject="Delivery Status"),
        None,
        AutoKind.BOUNCE,
        "Return-Path: <MAILER-DAEMON@mx.example.org>",
    ),
]
for bounce_subject in [
    "Undelivered Mail Returned to Sender",
    "Delivery Status Notification (Failure)",
    "Mail delivery failed: returning message to sender",
    "failure notice",
    "Returned mail: see transcript for details",
    "Undeliverable: Printer on fire",
]:
    CASES.append(
        (
            f"null sender + {bounce_subject}",
            make(subject=bounce_subject, sender="someone@mx.example.org"),
            "<>",
            AutoKind.BOUNCE,
            f"Subject: {bounce_subject}",
        )
    )
CASES += [
    (
        "a person forwarding a bounce to support",
        make(subject="Fwd: Undelivered Mail Returned to Sender"),
        "alice@customer.test",
        AutoKind.HUMAN,
        None,
    ),
    (
        "bounce-like subject from a person",
        make(subject="Undeliverable items in my order"),
        "alice@customer.test",
        AutoKind.HUMAN,
        None,
    ),
    # AUTO_REPLY: header signals
    (
        "Auto-Submitted: auto-replied",
        make(("Auto-Submitted", "auto-replied")),
        None,
        AutoKind.AUTO_REPLY,
        "Auto-Submitted: auto-replied",
    ),
    (
        "Auto-Submitted: auto-generated with a comment",
        make(("Auto-Submitted", "auto-generated; owner-email=x@y")),
        None,
        AutoKind.AUTO_REPLY,
        "Auto-Submitted: auto-generated; owner-email=x@y",
    ),
    ("Auto-Submitted: no", make(("Auto-Submitted", "no")), None, AutoKind.HUMAN, None),
    ("Auto-Submitted: No", make(("Auto-Submitted", " No ")), None, AutoKind.HUMAN, None),
    (
        "Precedence: bulk",
        make(("Precedence", "bulk")),
        None,
        AutoKind.AUTO_REPLY,
        "Precedence: bulk",
    ),
    (
        "Precedence: junk",
        make(("Precedence", "junk")),
        None,
        AutoKind.AUTO_REPLY,
        "Precedence: junk",
    ),
    (
        "Precedence: auto_reply",
        make(("Precedence", "auto_reply")),
        None,
        AutoKind.AUTO_REPLY,
        "Precedence: auto_reply",
    ),
    ("X-Autoreply", make(("X-Autoreply", "yes")), None, AutoKind.AUTO_REPLY, "X-Autoreply: yes"),
    ("X-Autorespond", make(("X-Autorespond", "x")), None, AutoKind.AUTO_REPLY, "X-Autorespond: x"),
    (
        "X-Auto-Response-Suppress",
        make(("X-Auto-Response-Suppress", "All")),
        None,
        AutoKind.AUTO_REPLY,
        "X-Auto-Response-Suppress: All",
    ),
    ("Return-Path <>", make(("Return-Path", "<>")), None, AutoKind.AUTO_REPLY, "Return-Path: <>"),
    ("envelope <>", make(), "<>", AutoKind.AUTO_REPLY, "envelope sender: <>"),
    ("envelope empty", make(), "", AutoKind.AUTO_REPLY, "envelope sender: <>"),
    (
        "read receipt",
        make(("Content-Type", MDN), content_type="multipart/report"),
        None,
        AutoKind.AUTO_REPLY,
        "Content-Type: multipart/report; report-type=disposition-notification",
    ),
    (
        "read receipt for an internationalised address (RFC 6533)",
        make(("Content-Type", GLOBAL_MDN), content_type="multipart/report"),
        None,
        AutoKind.AUTO_REPLY,
        "Content-Type: multipart/report; report-type=global-disposition-notification",
    ),
]
# Subjects that alone say it is automatic.
for strong in [
    "Automatic reply: Printer on fire",
    "Out of Office AutoReply: Printer on fire",
    "Automatische Antwort: Printer on fire",
    "Réponse automatique : Printer on fire",
    "Autosvar: Printer on fire",
    "Odpowiedź automatyczna: Printer on fire",
    "Re: Printer on fire (Automatic Response)",
    "AUTO: John Smith is out of the office (returning 05/01)",
]:
    CASES.append((strong, make(subject=strong), None, AutoKind.AUTO_REPLY, f"Subject: {strong}"))
# Subjects a person may write: automatic only with a header signal.
for weak in [
    "Out of Office",
    "Abwesenheitsnotiz: Printer on fire",
    "Fuori sede",
    "Auto: Printer on fire",
    "Vacation",
]:
    CASES.append((f"{weak} alone", make(subject=weak), "a@customer.test", AutoKind.HUMAN, None))
    CASES.append(
        (
            f"{weak} + X-Auto-Response-Suppress",
            make(("X-Auto-Response-Suppress", "OOF"), subject=weak),
            "a@customer.test",
            AutoKind.AUTO_REPLY,
            f"Subject: {weak}",
        )
    )
CASES += [
    # LIST, and the Precedence: bulk question
    (
        "List-Id",
        make(("List-Id", "<users.lists.test>")),
        None,
        AutoKind.LIST,
        "List-Id: <users.lists.test>",
    ),
    (
        "List-Unsubscribe",
        make(("List-Unsubscribe", "<mailto:u@l.test>")),
        None,
        AutoKind.LIST,
        None,
    ),
    ("Precedence: list", make(("Precedence", "list")), None, AutoKind.LIST, "Precedence: list"),
    (
        "mailing-list post with Precedence: bulk",
        make(("List-Id", "<users.lists.test>"), ("Precedence", "bulk"), subject="Re: kernel bug"),
        None,
        AutoKind.LIST,
        "Precedence: bulk",
    ),
    (
        "list post about a vacation",
        make(("List-Id", "<users.lists.test>"), ("Precedence", "bulk"), subject="Vacation plans"),
        None,
        AutoKind.LIST,
        None,
    ),
    (
        "old list manager: owner- Sender and Precedence: bulk",
        make(("Sender", "owner-linux@lists.test"), ("Precedence", "bulk")),
        None,
        AutoKind.LIST,
        "Sender: owner-linux@lists.test",
    ),
    (
        "vacation reply with Precedence: bulk",
        make(("Precedence", "bulk"), subject="Out of Office: Printer on fire"),
        None,
        AutoKind.AUTO_REPLY,
        "Subject: Out of Office: Printer on fire",
    ),
    (
        "vacation reply relayed by a list",
        make(("List-Id", "<users.lists.test>"), ("Auto-Submitted", "auto-replied")),
        None,
        AutoKind.AUTO_REPLY,
        "Auto-Submitted: auto-replied",
    ),
]


@pytest.mark.parametrize(
    ("msg", "envelope", "kind", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classify(
    msg: ParsedMessage, envelope: str | None, kind: AutoKind, reason: str | None
) -> None:
    result = verdict(msg, envelope)
    assert result.kind is kind, result.reasons
    assert result.answerable is (kind is AutoKind.HUMAN)
    if kind is AutoKind.HUMAN:
        assert result.reasons == ()
    else:
        assert result.reasons, "a non-human verdict must say why"
    if reason is not None:
        assert reason in result.reasons


def test_priority_loop_over_own_over_bounce_over_auto_over_list() -> None:
    everything = [
        ("X-Maildesk-Loop", "t"),
        ("Auto-Submitted", "auto-replied"),
        ("List-Id", "<l.test>"),
        ("Content-Type", DSN),
    ]
    own = "support@example.com"
    daemon = "mailer-daemon@mx.test"

    def kind(*headers: tuple[str, str], sender: str) -> AutoKind:
        msg = make(*headers, sender=sender, content_type="multipart/report")
        return verdict(msg, "x@y.test").kind

    assert kind(*everything, sender=own) is AutoKind.LOOP
    assert kind(*everything[1:], sender=own) is AutoKind.OWN_MAIL
    assert kind(*everything[1:], sender=daemon) is AutoKind.BOUNCE
    assert kind(*everything[1:3], sender="a@b.test") is AutoKind.AUTO_REPLY
    assert kind(everything[2], sender="a@b.test") is AutoKind.LIST


def test_loop_token_must_match_when_given() -> None:
    msg = make(("X-Maildesk-Loop", "ours-123"))
    mine = classify(msg, envelope_sender=None, own_addresses=OWN, loop_token="ours-123")
    other = classify(msg, envelope_sender=None, own_addresses=OWN, loop_token="theirs")
    assert mine.kind is AutoKind.LOOP
    assert other.kind is AutoKind.HUMAN


def test_custom_loop_header() -> None:
    msg = make(("X-Helpdesk", "1"))
    kind = classify(msg, envelope_sender=None, own_addresses=OWN, loop_header="x-helpdesk").kind
    assert kind is AutoKind.LOOP
    assert verdict(msg).kind is AutoKind.HUMAN


def test_undeliverable_suppresses_only_a_dead_address_of_ours() -> None:
    msg = make(
        delivery_status=(
            DeliveryStatus("rfc822; Bob@Example.ORG", "failed", "5.1.1"),
            DeliveryStatus("RFC822;<carol@x.test>", "Failed", "5.2.2", "mailbox full"),
            DeliveryStatus("rfc822;dave@x.test", "delayed", "4.4.1"),
            DeliveryStatus("rfc822;erin@x.test", "delivered", "2.0.0"),
            DeliveryStatus("rfc822; bob@example.org", "failed", "5.1.1"),
            DeliveryStatus("rfc822;frank@x.test", "failed", "5.0.0", "550 User unknown"),
            DeliveryStatus("rfc822;gina@x.test", "failed", "5.7.1", "550 rejected as spam"),
            DeliveryStatus("rfc822;mallory@x.test", "failed", "5.1.1"),
            DeliveryStatus("", "failed", "5.0.0"),
        )
    )
    ours = ["bob@example.org", "carol@x.test", "dave@x.test", "frank@x.test", "gina@x.test"]
    assert undeliverable(msg, ours) == Undeliverable(
        dead=("bob@example.org", "frank@x.test"),
        failed=("carol@x.test: 5.2.2 mailbox full", "gina@x.test: 5.7.1 550 rejected as spam"),
        strangers=("mallory@x.test",),
    )
    assert undeliverable(make(), ours) == Undeliverable()


def test_undeliverable_says_what_failed_for_the_agent_told() -> None:
    """Dead or not, every failed recipient of ours is named with its status and words."""
    msg = make(
        delivery_status=(
            DeliveryStatus("rfc822;frank@x.test", "failed", "5.0.0", "550 User unknown"),
            DeliveryStatus("rfc822;gina@x.test", "failed", "5.7.1", "550 rejected as spam"),
            DeliveryStatus("rfc822;dave@x.test", "delayed", "4.4.1"),
            DeliveryStatus("rfc822;mallory@x.test", "failed", "5.1.1"),
        )
    )
    report = undeliverable(msg, ["frank@x.test", "gina@x.test", "dave@x.test"])
    assert report.undelivered == ("frank@x.test", "gina@x.test")
    assert report.said == (
        "frank@x.test: 5.0.0 550 User unknown",
        "gina@x.test: 5.7.1 550 rejected as spam",
    )


def test_bounced_message_ids() -> None:
    msg = make(
        returned_headers=(
            ("From", "support@example.com"),
            ("Message-ID", "<md.t.1.n.abc@example.com>"),
            ("In-Reply-To", "<q1@customer.test>"),
            ("References", "<r0@customer.test>\r\n <q1@customer.test>"),
        )
    )
    assert bounced_message_ids(msg) == (
        "md.t.1.n.abc@example.com",
        "q1@customer.test",
        "r0@customer.test",
    )
    assert bounced_message_ids(make(returned_headers=(("message-id", "bare@id.test"),))) == (
        "bare@id.test",
    )
    assert bounced_message_ids(make()) == ()


# -- the real corpus ------------------------------------------------------------


def _manifest(corpus: Path, tag: str) -> list[Path]:
    paths = []
    for line in (corpus / "fixtures" / "MANIFEST.tsv").read_text("utf-8").splitlines()[1:]:
        cols = line.rstrip("\r").split("\t")
        if len(cols) >= 4 and tag in cols[3].split():
            paths.append(corpus / "fixtures" / cols[1])
    return paths


def _classify_files(paths: list[Path]) -> collections.Counter[str]:
    parse = pytest.importorskip("maildesk.pipeline.parse", reason="the parser is not written yet")
    counts: collections.Counter[str] = collections.Counter()
    for path in paths:
        try:
            msg = parse.parse_message(path.read_bytes())
        except parse.ParseError:
            counts["unparsable"] += 1
            continue
        counts[str(classify(msg, envelope_sender=None, own_addresses=OWN).kind)] += 1
    return counts


@pytest.mark.slow
def test_corpus_delivery_reports_are_bounces(corpus: Path) -> None:
    paths = _manifest(corpus, "dsn")
    assert len(paths) > 500
    counts = _classify_files(paths)
    print(f"dsn fixtures ({len(paths)}): {dict(counts)}")
    assert counts[AutoKind.HUMAN] <= 0.01 * len(paths)
    assert counts[AutoKind.BOUNCE] >= 0.95 * len(paths)


@pytest.mark.slow
def test_corpus_auto_replies_are_never_answered(corpus: Path) -> None:
    paths = _manifest(corpus, "auto-reply")
    assert len(paths) >= 10
    counts = _classify_files(paths)
    print(f"auto-reply fixtures ({len(paths)}): {dict(counts)}")
    # One of them is a person's list post about a vacation, which is LIST.
    assert counts[AutoKind.AUTO_REPLY] >= 0.9 * len(paths)
    assert counts[AutoKind.HUMAN] == 0


@pytest.mark.slow
def test_corpus_ham_is_human_or_list(corpus: Path) -> None:
    paths = sorted((corpus / "spamassassin" / "easy-ham-1").glob("*.txt"))
    assert len(paths) > 2000
    counts = _classify_files(paths)
    print(f"easy-ham-1 ({len(paths)}): {dict(counts)}")
    automated = counts[AutoKind.AUTO_REPLY] + counts[AutoKind.BOUNCE]
    assert automated < 0.01 * len(paths)
    assert counts[AutoKind.LIST] > 0.5 * len(paths)  # it is mostly mailing-list traffic
    assert counts[AutoKind.HUMAN] > 0.2 * len(paths)
