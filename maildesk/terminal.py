"""Text from mail, made safe to print on an operator's terminal.

Subjects, addresses, reasons and bodies come from whoever sent the mail and
keep any control character they were given (an escape sequence in an encoded
word decodes to a real ESC). Printed raw, they could recolour, clear or
rewrite the operator's screen, or break a one-line listing in two. The CLI's
human-readable output passes them through here; JSON output is escaped by
the encoder.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """One line: every character that is not printable (newline and tab too) escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def printable_text(text: str) -> str:
    """Several lines (a body): newlines and tabs kept, anything else unprintable escaped."""
    return "\n".join(
        "\t".join(printable(piece) for piece in line.split("\t")) for line in text.split("\n")
    )


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
