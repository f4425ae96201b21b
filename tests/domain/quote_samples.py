"""Synthetic agent replies in the style of each mail client and language.

Shared by tests/domain/test_quotes.py and bench/quotes. Each sample answers a
maildesk notification whose first line is the reply marker; ``expected`` is
the agent's new text exactly. The attribution lines and header blocks are the
ones these clients write (copied by hand from real mails of each client).
"""

from __future__ import annotations

import email
import email.policy
import html as htmlmod
import textwrap
from dataclasses import dataclass
from pathlib import Path

from maildesk.domain.quotes import REPLY_MARKER_TEMPLATE

MARKER = REPLY_MARKER_TEMPLATE.format(ref="[ref:md-42-abcdefghijkl]")
LANGUAGES = ("en", "ru", "no", "nl", "de", "fr", "es")
STYLES = ("thunderbird", "outlook", "outlook-classic", "gmail", "apple", "mutt", "mutt-bottom")
SUPPORT = "Maildesk Support <support@example.com>"
NOTE_TEXT = "INTERNAL NOTE: customer is on the watch list"

NOTIFICATION = [
    MARKER,
    "Ticket #42 (open, normal): Printer on fire",
    "",
    "Alice <alice@example.org> wrote:",
    "Hello, my printer is on fire. What should I do?",
    "",
    NOTE_TEXT,
    "[ref:md-42-abcdefghijkl]",
]

ANSWERS = {
    "en": ["#status resolved", "Hello Alice,", "", "please unplug it first.", "", "Bob"],
    "ru": ["#status resolved", "Здравствуйте, Алиса!", "", "Сначала выключите принтер из сети."],
    "no": ["Hei Alice,", "", "trekk ut kontakten først.", "", "Hilsen Bob"],
    "nl": ["Hallo Alice,", "", "haal eerst de stekker eruit."],
    "de": ["#priority high", "Hallo Alice,", "", "bitte ziehen Sie zuerst den Stecker."],
    "fr": ["Bonjour Alice,", "", "débranchez-la d'abord, s'il vous plaît."],
    "es": ["Hola Alice:", "", "primero desenchúfela, por favor.", "", "Saludos"],
}

# Attribution lines: Thunderbird, Gmail, Apple Mail, mutt.
THUNDERBIRD = {
    "en": "On 02.04.2026 18:26, Maildesk Support wrote:",
    "ru": "02.04.2026 18:26, Maildesk Support пишет:",
    "no": "Den 02.04.2026 18:26, skrev Maildesk Support:",
    "nl": "Op 02-04-2026 om 18:26 schreef Maildesk Support:",
    "de": "Am 02.04.26 um 18:26 schrieb Maildesk Support:",
    "fr": "Le 02/04/2026 à 18:26, Maildesk Support a écrit :",
    "es": "El 2/4/26 a las 18:26, Maildesk Support escribió:",
}
GMAIL = {
    "en": f"On Thu, Apr 2, 2026 at 6:26 PM {SUPPORT} wrote:",
    "ru": f"чт, 2 апр. 2026 г. в 18:26, {SUPPORT}:",
    "no": f"tor. 2. apr. 2026 kl. 18:26 skrev {SUPPORT}:",
    "nl": f"Op do 2 apr 2026 om 18:26 schreef {SUPPORT}:",
    "de": f"Am Do., 2. Apr. 2026 um 18:26 Uhr schrieb {SUPPORT}:",
    "fr": f"Le jeu. 2 avr. 2026 à 18:26, {SUPPORT} a écrit :",
    "es": "El jue, 2 abr 2026 a las 18:26, Maildesk Support (<support@example.com>) escribió:",
}
APPLE = {
    "en": f"On 2 Apr 2026, at 18:26, {SUPPORT} wrote:",
    "ru": f"2 апр. 2026 г., в 18:26, {SUPPORT} написал(а):",
    "no": f"2. apr. 2026 kl. 18:26 skrev {SUPPORT}:",
    "nl": f"Op 2 apr. 2026 om 18:26 heeft {SUPPORT} het volgende geschreven:",
    "de": f"Am 02.04.2026 um 18:26 schrieb {SUPPORT}:",
    "fr": f"Le 2 avr. 2026 à 18:26, {SUPPORT} a écrit :",
    "es": f"El 2 abr 2026, a las 18:26, {SUPPORT} escribió:",
}
MUTT = {
    "en": "On Thu, Apr 02, 2026 at 06:26:00PM +0200, Maildesk Support wrote:",
    "ru": "02.04.2026 18:26 пользователь Maildesk Support написал:",
    "no": "Den 02.04.2026 kl. 18:26 skrev Maildesk Support:",
    "nl": "Op 02-04-2026 18:26 schreef Maildesk Support:",
    "de": "Am Do, 02. Apr 2026 um 18:26 +0200 schrieb Maildesk Support:",
    "fr": "Le jeu. 02 avr. 2026 à 18:26 +0200, Maildesk Support a écrit :",
    "es": "El jue, 02 abr 2026 a las 18:26 +0200, Maildesk Support escribió:",
}
# Outlook header blocks: From, Sent, To, Subject.
OUTLOOK = {
    "en": ("From", "Sent", "To", "Subject", "Thursday, April 2, 2026 6:26 PM"),
    "ru": ("От", "Отправлено", "Кому", "Тема", "2 апреля 2026 г. 18:26"),
    "no": ("Fra", "Sendt", "Til", "Emne", "torsdag 2. april 2026 18:26"),
    "nl": ("Van", "Verzonden", "Aan", "Onderwerp", "donderdag 2 april 2026 18:26"),
    "de": ("Von", "Gesendet", "An", "Betreff", "Donnerstag, 2. April 2026 18:26"),
    "fr": ("De ", "Envoyé ", "À ", "Objet ", "jeudi 2 avril 2026 18:26"),
    "es": ("De", "Enviado el", "Para", "Asunto", "jueves, 2 de abril de 2026 18:26"),
}
ORIGINAL = {
    "en": "-----Original Message-----",
    "ru": "-----Исходное сообщение-----",
    "no": "-----Opprinnelig melding-----",
    "nl": "-----Oorspronkelijk bericht-----",
    "de": "-----Ursprüngliche Nachricht-----",
    "fr": "-----Message d'origine-----",
    "es": "-----Mensaje original-----",
}


@dataclass(frozen=True)
class Sample:
    style: str
    language: str
    text: str
    html: str | None
    expected: str

    @property
    def name(self) -> str:
        return f"{self.style}-{self.language}"


def _quoted(lines: list[str]) -> list[str]:
    return [f"> {line}".rstrip() for line in lines]


def _p(lines: list[str]) -> str:
    return "".join(f"<div>{htmlmod.escape(line) or '<br>'}</div>" for line in lines)


def _outlook_block(lang: str) -> list[str]:
    frm, sent, to, subject, date = OUTLOOK[lang]
    return [
        f"{frm}: {SUPPORT}",
        f"{sent}: {date}",
        f"{to}: Bob Agent <bob@agents.example.net>",
        f"{subject}: [#42] Printer on fire",
    ]


def build(style: str, lang: str) -> Sample:
    """One reply of ``style`` in ``lang`` to the notification."""
    answer = ANSWERS[lang]
    expected = "\n".join(answer).strip()
    note = NOTIFICATION
    html: str | None = None
    if style == "thunderbird":
        text = [*answer, "", THUNDERBIRD[lang], *_quoted(note), ""]
        html = (
            f"<html><body>{_p(answer)}<br>"
            f'<div class="moz-cite-prefix">{htmlmod.escape(THUNDERBIRD[lang])}<br></div>'
            f'<blockquote type="cite" cite="mid:md.a.42.x@example.com">{_p(note)}</blockquote>'
            "</body></html>"
        )
    elif style == "gmail":
        # Gmail wraps the attribution in its text part at about 76 columns.
        attribution = textwrap.wrap(GMAIL[lang], 76)
        text = [*answer, "", *attribution, "", *_quoted(note), ""]
        html = (
            f'<div dir="ltr">{_p(answer)}</div><br>'
            '<div class="gmail_quote gmail_quote_container">'
            f'<div dir="ltr" class="gmail_attr">{htmlmod.escape(GMAIL[lang])}<br></div>'
            '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;'
            f'border-left:1px solid rgb(204,204,204);padding-left:1ex">{_p(note)}</blockquote></div>'
        )
    elif style == "outlook":
        text = [*answer, "", "________________________________", *_outlook_block(lang), "", *note]
        html = (
            f'<html><body><div dir="ltr">{_p(answer)}</div>'
            '<hr style="display:inline-block;width:98%" tabindex="-1">'
            f'<div id="divRplyFwdMsg" dir="ltr">{_p(_outlook_block(lang))}</div>'
            f"<div>{_p(note)}</div></body></html>"
        )
    elif style == "outlook-classic":
        text = [*answer, "", ORIGINAL[lang], *_outlook_block(lang), "", *note]
        html = (
            f'<html><body><div class="WordSection1">{_p(answer)}'
            '<div><div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">'
            f"{_p(_outlook_block(lang))}</div></div>{_p(note)}</div></body></html>"
        )
    elif style == "apple":
        # Apple Mail quotes its own attribution line.
        text = [*answer, "", *_quoted([APPLE[lang], "", *note]), ""]
        html = (
            f'<html><body style="overflow-wrap: break-word;">{_p(answer)}<div><br>'
            f'<blockquote type="cite"><div>{htmlmod.escape(APPLE[lang])}</div><br>'
            f"{_p(note)}</blockquote></div></body></html>"
        )
    elif style == "mutt":
        sig = ["-- ", "Bob Agent", "bob@private.example.net, +47 555 12 345"]
        text = [*answer, "", *sig, "", MUTT[lang], *_quoted(note), ""]
    elif style == "mutt-bottom":
        sig = ["-- ", "Bob Agent", "bob@private.example.net"]
        text = [MUTT[lang], *_quoted(note), "", *answer, "", *sig, ""]
    else:
        raise ValueError(style)
    return Sample(style, lang, "\n".join(text), html, expected)


def all_samples() -> list[Sample]:
    return [build(style, lang) for style in STYLES for lang in LANGUAGES]


# -- the real replies in the corpus (talon's fixtures) ---------------------------

TALON_PATH = Path("fixtures/mailgun-talon/tests/fixtures")
# Talon's convention: "<name>_reply_text" holds the expected text, else "Hello".
# The corpus has no such files; talon's repository has one, for sparrow, which
# keeps the "-- " signature (maildesk cuts it on purpose).
TALON_EXPECTED = {
    "sparrow": "Hello \n\n-- \nxxx\nSent with Sparrow (http://www.sparrowmailapp.com/?sig)"
}
# outlook.eml's HTML part has other new text than its plain part (talon's HTML tests agree).
HTML_EXPECTED = {"outlook": "Allo! Follow up MIME!"}
# reply-quotations-share-block.eml has no expected text; talon checks "non-empty,
# no 'From' left"; we also want its first line.
SHARE_BLOCK_FIRST_LINE = "Hi Katharine."


def read_parts(path: Path) -> tuple[str, str | None]:
    """The first text/plain and text/html bodies of a message file."""
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    text, html = "", None
    for part in msg.walk():
        if part.get_content_maintype() == "multipart":
            continue
        kind = part.get_content_type()
        if kind == "text/plain" and not text:
            text = str(part.get_content())
        elif kind == "text/html" and html is None:
            html = str(part.get_content())
    return text, html


def normalise(text: str) -> str:
    """Compare texts without trailing spaces or surrounding blank lines."""
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").strip().split("\n"))
