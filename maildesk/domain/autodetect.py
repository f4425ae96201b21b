"""The inbound guard (MAIL-RULES §3): is this mail from a person we may answer?

``classify`` looks at headers and subject only and names the exact header and
value that decided, so ``maildesk explain`` can show why a mail got no
acknowledgement. Order of the verdicts, first match wins:

LOOP > OWN_MAIL > BOUNCE > AUTO_REPLY > LIST > HUMAN

The subtle part is ``Precedence: bulk``: vacation responders and mailing lists
both send it. When list headers are present it is the list's doing (LIST);
without them it marks an automated reply. Strong auto-reply evidence
(``Auto-Submitted``, ``X-Autoreply``, a null sender, an unmistakable subject)
wins over list headers, so a vacation reply relayed by a list is AUTO_REPLY.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from maildesk.domain.address import base_address
from maildesk.domain.message import ParsedMessage

_MAX_REASON_VALUE = 120


class AutoKind(StrEnum):
    HUMAN = "human"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    LIST = "list"
    OWN_MAIL = "own_mail"
    LOOP = "loop"


@dataclass(frozen=True)
class AutoVerdict:
    kind: AutoKind
    reasons: tuple[str, ...] = ()

    @property
    def answerable(self) -> bool:
        """Only mail from a person may get an acknowledgement or any automatic answer."""
        return self.kind is AutoKind.HUMAN


# Local-parts of the senders that only ever send delivery reports.
_BOUNCE_LOCALS = frozenset(
    {"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster", "mailer", "double-bounce"}
)

# Subjects of delivery reports, at the start of the subject (a customer who
# forwards a bounce to support writes "Fwd: Undelivered ...", which stays human).
_BOUNCE_SUBJECT_RE = re.compile(
    r"^\W{0,3}(?:"
    r"undeliver(?:ed|able)\b|"
    r"delivery status\b|"
    r"(?:mail )?delivery (?:has )?failed|"
    r"delivery (?:failure|notification|problem)|"
    r"mail delivery (?:failure|problem|error)|"
    r"failure notice|"
    r"returned mail\b|"
    r"returned to sender|"
    r"message (?:not delivered|delivery failed|could not be delivered)|"
    r"non[- ]?delivery|"
    r"could not send message|"
    r"warning: (?:could not send|message .* delayed)|"
    r"delayed mail|"
    r"mail system error|"
    r"unzustellbar|nicht zustellbar|"
    r"non remis|non distribuable|"
    r"onbestelbaar|"
    r"olevererbart|"
    r"niedostarczon"
    r")",
    re.IGNORECASE,
)

# Subjects that alone say "automatic reply" (they name the automation, not a topic).
_STRONG_AUTO_SUBJECT_RE = re.compile(
    r"(?:^\W{0,3}(?:"
    r"automatic reply|automated reply|automatic response|automated response|"
    r"auto[- ]?reply|auto[- ]?response|auto[- ]?respond|autoanswer|auto[- ]?antwort|"
    r"out of (?:the )?office auto[- ]?reply|auto:.*\bout of (?:the )?office|"
    r"automatische antwort|automatisches antwortschreiben|"
    r"r[ée]ponse automatique|respuesta autom[áa]tica|resposta autom[áa]tica|"
    r"risposta automatica|automatisch antwoord|"
    r"autosvar|automatisk svar|automatisk besked|automaattinen vastaus|"
    r"odpowied[źz] automatyczna|automatyczna odpowied[źz]|"
    r"automatická odpověď|otomatik yanıt|automatikus válasz|"
    r"автоответ|автоматический ответ|"
    r"自动回复|自動回覆|自動回復|自動応答|자동 ?응답|자동 ?회신"
    r"))|\((?:automatic|auto)[- ]?(?:reply|response)\)",
    re.IGNORECASE,
)

# Subjects that may be a person's topic ("Vacation plans"): automatic only
# together with a header signal.
_WEAK_AUTO_SUBJECT_RE = re.compile(
    r"out of (?:the )?office|^\W{0,3}auto:|abwesenheit|abwesend|au[ßs]er haus|"
    r"nicht im b[üu]ro|fuori sede|assente|vacation|on leave|away from|i am away|i'm away|"
    r"absence|absent|en cong[ée]|fuera de la oficina|ausente|afwezig|"
    r"fr[åa]nvar|frav[æa]r|poissa|nieobecno|thank you for your (?:e-?mail|message)",
    re.IGNORECASE,
)

_NULL_PATH_RE = re.compile(r"^\s*<\s*>\s*$")
_REPORT_TYPE_RE = re.compile(r"report-type\s*=\s*\"?([a-z0-9-]+)", re.IGNORECASE)
_ANGLE_ID_RE = re.compile(r"<([^<>\s]+)>")
_EMPTY_ANGLE_RE = re.compile(r"<\s*>\s*$")

_AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoreply-From", "X-Mail-Autoreply")
_LIST_HEADERS = (
    "List-Id",
    "List-Unsubscribe",
    "List-Post",
    "List-Help",
    "List-Subscribe",
    "List-Archive",
    "List-Owner",
    "Mailing-List",
    "X-Mailing-List",
    "X-List",
    "X-ML-Name",
    "X-BeenThere",
)
# Old list managers (Majordomo, ezmlm, listserv) send no List-* headers but a
# list bounce address as Sender or Return-Path.
_LIST_SENDER_RE = re.compile(
    r"^<?(?:owner-[^@]+|[^@]+-(?:owner|bounces?|request|admin)(?:\+[^@]*)?)@", re.IGNORECASE
)


def _reason(name: str, value: str) -> str:
    flat = " ".join(value.split())
    if len(flat) > _MAX_REASON_VALUE:
        flat = flat[: _MAX_REASON_VALUE - 3] + "..."
    return f"{name}: {flat}"


def _local_part(addr: str) -> str:
    return addr.rpartition("@")[0] if "@" in addr else addr


def _is_bounce_sender(addr: str | None) -> bool:
    if not addr:
        return False
    return _local_part(addr.strip().strip("<>").lower()) in _BOUNCE_LOCALS


def _from_addr(msg: ParsedMessage) -> str:
    """The From address; for "Name <MAILER-DAEMON>" (no domain) taken from the raw header,
    and for "MAILER-DAEMON <>" (a null address, DragonFly's dma) the name."""
    if msg.from_ is not None and msg.from_.addr:
        return msg.from_.addr
    raw = _EMPTY_ANGLE_RE.sub("", msg.header("From") or "").strip()
    angle = _ANGLE_ID_RE.findall(raw)
    return (angle[-1] if angle else raw).strip().lower()


def _first_token(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _null_sender_reasons(msg: ParsedMessage, envelope_sender: str | None) -> list[str]:
    reasons: list[str] = []
    if envelope_sender is not None and (
        not envelope_sender.strip() or _NULL_PATH_RE.match(envelope_sender)
    ):
        reasons.append("envelope sender: <>")
    for name in ("Return-Path", "From"):
        if any(_NULL_PATH_RE.match(value) for value in msg.header_all(name)):
            reasons.append(f"{name}: <>")
    return reasons


def _report_type(msg: ParsedMessage) -> str | None:
    if msg.content_type != "multipart/report":
        return None
    match = _REPORT_TYPE_RE.search(msg.header("Content-Type") or "")
    return match.group(1).lower() if match else ""


def _loop_reasons(msg: ParsedMessage, loop_header: str, loop_token: str | None) -> list[str]:
    for value in msg.header_all(loop_header):
        if loop_token is None or value.strip() == loop_token:
            return [_reason(loop_header, value)]
    return []


def _own_reasons(
    msg: ParsedMessage, envelope_sender: str | None, own_addresses: frozenset[str]
) -> list[str]:
    own = {a.strip().lower() for a in own_addresses}

    def ours(address: str) -> bool:
        # A sub-address (support+t-1-..., our VERP return path) is ours too.
        address = address.strip().strip("<>").lower()
        return address in own or ("@" in address and base_address(address) in own)

    reasons: list[str] = []
    if msg.from_ is not None and ours(msg.from_.addr):
        reasons.append(_reason("From", msg.from_.addr))
    if envelope_sender and ours(envelope_sender):
        reasons.append(_reason("envelope sender", envelope_sender))
    return reasons


def _bounce_reasons(
    msg: ParsedMessage, envelope_sender: str | None, null_sender: list[str]
) -> list[str]:
    reasons: list[str] = []
    report = _report_type(msg)
    # RFC 6533 names the reports for internationalised addresses "global-...".
    if report in ("delivery-status", "global-delivery-status", "feedback-report"):
        reasons.append(f"Content-Type: multipart/report; report-type={report}")
    if msg.delivery_status:
        reasons.append(f"delivery-status part with {len(msg.delivery_status)} recipient(s)")
    sender = _from_addr(msg)
    if _is_bounce_sender(sender):
        reasons.append(_reason("From", sender))
    if envelope_sender is not None:
        if _is_bounce_sender(envelope_sender):
            reasons.append(_reason("envelope sender", envelope_sender))
    else:
        # Without an envelope (IMAP, files) the Return-Path the MTA wrote stands in.
        path = msg.header("Return-Path")
        if path is not None and _is_bounce_sender(path):
            reasons.append(_reason("Return-Path", path))
    evidence = null_sender or reasons or msg.returned_headers or report is not None
    if _BOUNCE_SUBJECT_RE.match(msg.subject) and evidence:
        reasons.append(_reason("Subject", msg.subject))
        reasons.extend(null_sender)
    return reasons


def _list_reasons(msg: ParsedMessage) -> list[str]:
    reasons = [_reason(name, v) for name in _LIST_HEADERS for v in msg.header_all(name)[:1]]
    for name in ("Sender", "Return-Path"):
        value = msg.header(name)
        if not reasons and value is not None and _LIST_SENDER_RE.match(value.strip()):
            reasons.append(_reason(name, value))
    return reasons


def _auto_reply_reasons(
    msg: ParsedMessage, null_sender: list[str], has_list_headers: bool
) -> list[str]:
    strong: list[str] = []
    weak: list[str] = []
    for value in msg.header_all("Auto-Submitted"):
        token = _first_token(value)
        if token and token != "no":
            strong.append(_reason("Auto-Submitted", value))
    for name in _AUTO_HEADERS:
        strong.extend(_reason(name, value) for value in msg.header_all(name)[:1])
    for value in msg.header_all("X-Autogenerated"):
        strong.append(_reason("X-Autogenerated", value))
    for value in msg.header_all("Precedence"):
        token = _first_token(value)
        if token == "auto_reply":
            strong.append(_reason("Precedence", value))
        elif token in ("bulk", "junk") and not has_list_headers:
            weak.append(_reason("Precedence", value))
    strong.extend(null_sender)
    mdn = _report_type(msg)
    if mdn in ("disposition-notification", "global-disposition-notification"):
        strong.append(f"Content-Type: multipart/report; report-type={mdn}")
    weak.extend(
        _reason("X-Auto-Response-Suppress", v)
        for v in msg.header_all("X-Auto-Response-Suppress")[:1]
    )

    subject = msg.subject
    if _STRONG_AUTO_SUBJECT_RE.search(subject):
        strong.append(_reason("Subject", subject))
    elif (strong or weak) and _WEAK_AUTO_SUBJECT_RE.search(subject):
        weak.append(_reason("Subject", subject))
    return strong + weak


def classify(
    msg: ParsedMessage,
    *,
    envelope_sender: str | None,
    own_addresses: frozenset[str],
    loop_header: str = "X-Maildesk-Loop",
    loop_token: str | None = None,
) -> AutoVerdict:
    """Decide whether ``msg`` came from a person (the only kind we answer) and why.

    ``envelope_sender`` is the SMTP MAIL FROM ("" or "<>" for the null sender),
    None when the intake does not know it (then Return-Path stands in).
    With ``loop_token``, only our own loop header value counts as a loop.
    """
    loop = _loop_reasons(msg, loop_header, loop_token)
    if loop:
        return AutoVerdict(AutoKind.LOOP, tuple(loop))
    own = _own_reasons(msg, envelope_sender, own_addresses)
    if own:
        return AutoVerdict(AutoKind.OWN_MAIL, tuple(own))
    null_sender = _null_sender_reasons(msg, envelope_sender)
    bounce = _bounce_reasons(msg, envelope_sender, null_sender)
    if bounce:
        return AutoVerdict(AutoKind.BOUNCE, tuple(bounce))
    listed = _list_reasons(msg)
    auto = _auto_reply_reasons(msg, null_sender, has_list_headers=bool(listed))
    if auto:
        return AutoVerdict(AutoKind.AUTO_REPLY, tuple(auto))
    listed += [
        _reason("Precedence", v) for v in msg.header_all("Precedence") if _first_token(v) == "list"
    ]
    if listed:
        precedence = [_reason("Precedence", v) for v in msg.header_all("Precedence")]
        return AutoVerdict(AutoKind.LIST, tuple(dict.fromkeys(listed + precedence)))
    return AutoVerdict(AutoKind.HUMAN)
