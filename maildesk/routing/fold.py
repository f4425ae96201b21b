"""How rule keywords and the text they are looked for in are compared."""

from __future__ import annotations

import re
import unicodedata

_SPACE_RUN = re.compile(r"\s+")


def fold_text(text: str) -> str:
    """The form keywords and the text searched for them are compared in.

    Compatibility-normalised (full-width letters, ligatures, composed or decomposed
    accents all read alike), case-folded (``Straße`` is ``STRASSE``), and with every
    run of white space one space, so a phrase still matches where the sender's
    client wrapped the line between its words.
    """
    once = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE_RUN.sub(" ", unicodedata.normalize("NFKC", once))
