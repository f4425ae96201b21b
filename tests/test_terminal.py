"""Mail text printed on an operator's terminal: control characters shown, never obeyed."""

from __future__ import annotations

import logging
import sys

from maildesk.logs import TextFormatter
from maildesk.terminal import printable, printable_text


def test_one_line_escapes_every_unprintable_character() -> None:
    assert printable("Invoice\x1b[2J\x1b[31mURGENT\x07") == "Invoice\\x1b[2J\\x1b[31mURGENT\\x07"
    assert printable("two\nlines\rover\ttab") == "two\\x0alines\\x0dover\\x09tab"
    assert printable("a\u2028b\u202ec\U000e0001") == "a\\u2028b\\u202ec\\U000e0001"
    assert printable("naïve 日本語 Grüße — ok") == "naïve 日本語 Grüße — ok"  # text stays text


def test_a_body_keeps_its_lines_and_tabs_but_no_escape_sequence() -> None:
    body = "Pay now\x1b]0;pwned\x07\n\tindented\r\nlast"
    assert printable_text(body) == "Pay now\\x1b]0;pwned\\x07\n\tindented\\x0d\nlast"


def test_a_text_log_line_cannot_be_forged_by_mail_text() -> None:
    formatter = TextFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "maildesk.pipeline", logging.INFO, __file__, 1, "subject %s", ("hi\nERROR forged",), None
    )
    assert formatter.format(record) == "INFO subject hi\\x0aERROR forged"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    lines = formatter.format(record).splitlines()
    assert lines[0] == "INFO subject hi\\x0aERROR forged"
    assert lines[1] == "Traceback (most recent call last):"  # a traceback keeps its lines
