"""A light language guess from stopword counts: good enough to route by language.

No model files, no dependency: each language's most frequent function words are
counted and the language with the most hits wins, if it has at least a few.
Returns None when the text gives too little evidence.
"""

from __future__ import annotations

import re

_WORDS: dict[str, str] = {
    "en": (
        "the and is are was were to of in that it for on with you this have not be "
        "we my your please can i will would from thanks hello"
    ),
    "de": (
        "der die das und ist nicht ich sie wir ein eine mit auf für von zu den dem "
        "bitte danke hallo haben wird sind auch noch kann"
    ),
    "fr": (
        "le la les et est pas je vous nous un une avec pour dans des du que qui "
        "merci bonjour sur ce sont avez être"
    ),
    "es": (
        "el la los las y es no yo usted un una con para en que por del gracias "
        "hola está son tengo pero muy"
    ),
    "nl": (
        "de het een en is niet ik wij jij met op voor van te dat zijn bedankt "
        "hallo alstublieft graag ook nog"
    ),
    "it": (
        "il lo la gli le e è non io noi un una con per che di del grazie ciao sono ho questo anche"
    ),
    "no": ("og er ikke jeg vi en et med på for av til det som har takk hei kan vil skal også"),
    "sv": ("och är inte jag vi en ett med på för av till det som har tack hej kan vill ska också"),
    "pt": (
        "o a os as e é não eu você um uma com para em que por do da obrigado olá está são tenho mas"
    ),
}
STOPWORDS: dict[str, frozenset[str]] = {k: frozenset(v.split()) for k, v in _WORDS.items()}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
MIN_HITS = 3
SAMPLE_CHARS = 5000


def detect_language(text: str) -> str | None:
    """The most likely language code, or None when there is too little evidence."""
    words = [w.lower() for w in _WORD.findall(text[:SAMPLE_CHARS])]
    if not words:
        return None
    scores = {lang: sum(1 for w in words if w in stop) for lang, stop in STOPWORDS.items()}
    best = max(scores, key=lambda lang: scores[lang])
    ranked = sorted(scores.values(), reverse=True)
    if ranked[0] < MIN_HITS or ranked[0] == ranked[1]:
        return None
    return best
