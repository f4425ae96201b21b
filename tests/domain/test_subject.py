"""Subject normalisation and the ticket tag (MAIL-RULES §2 rules 4 and 6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maildesk.domain.subject import (
    add_ticket_tag,
    find_ticket_numbers,
    format_ticket_tag,
    normalize_subject,
)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Printer on fire", "printer on fire"),
        ("Re: Printer on fire", "printer on fire"),
        ("RE: RE: Re:Printer on fire", "printer on fire"),
        ("RE[2]: Printer on fire", "printer on fire"),
        ("Re[3]: Re(2): Re^2: Printer on fire", "printer on fire"),
        ("Fwd: Fw: FW: Printer on fire", "printer on fire"),
        ("AW: WG: Printer on fire", "printer on fire"),  # German Outlook
        ("SV: VS: Printer on fire", "printer on fire"),  # Scandinavian
        ("Antw: Doorst: Printer on fire", "printer on fire"),  # Dutch
        ("Réf : TR: RE : Printer on fire", "printer on fire"),  # French spacing
        ("R: I: RIF: Printer on fire", "printer on fire"),  # Italian
        ("Odp: PD: Printer on fire", "printer on fire"),  # Polish
        ("YNT: Printer on fire", "printer on fire"),  # Turkish
        ("İLT: YNT: İlt: Printer on fire", "printer on fire"),  # Turkish Outlook, dotted İ
        ("Ответ: Отв: Пересл: Принтер горит", "принтер горит"),
        ("回复：转发：答复: 打印机着火了", "打印机着火了"),  # full-width colon
        ("[users] Re: [users] Printer on fire", "printer on fire"),
        ("[Support #12] Re: Printer on fire", "printer on fire"),
        ("Re: [Support #12] Printer on fire", "printer on fire"),
        ("Ｒｅ：ＦＷ： Printer on fire", "printer on fire"),  # CJK clients' full width
        ("Printer on fire [Support #12]", "printer on fire"),  # our tag moved to the end
        ("Re: Printer on fire ［Support ＃12］ (fwd)", "printer on fire"),
        ("Printer on fire (fwd)", "printer on fire"),
        ("Re: Printer on fire (FWD) (fwd)", "printer on fire"),
        ("  Printer\t on \n fire  ", "printer on fire"),
        ("PRINTER ON FIRE", "printer on fire"),
        ("Straße", "strasse"),  # casefolded, not just lower-cased
        ("Re:", ""),
        ("", ""),
    ],
)
def test_normalize_subject_strips_prefixes_tags_and_case(subject: str, expected: str) -> None:
    assert normalize_subject(subject) == expected


@pytest.mark.parametrize(
    "subject",
    [
        "Resume attached",  # starts like "Re" but no colon follows
        "Training schedule",  # "Tr"
        "Review: quarterly numbers",  # a word that only begins with a prefix
        "Invoice [draft] for March",  # brackets not at the start
        "Invoice [2024]",  # a bracket at the end that is no ticket tag
        "Call me re: the invoice",  # prefix not at the start
    ],
)
def test_normalize_subject_leaves_ordinary_words_alone(subject: str) -> None:
    assert normalize_subject(subject) == subject.casefold()


def test_reply_and_original_normalise_equal() -> None:
    original = "Printer on fire"
    replies = ["Re: Printer on fire", "AW: Printer  on fire", "[Support #7] RE: printer on FIRE"]
    assert {normalize_subject(r) for r in replies} == {normalize_subject(original)}


def test_many_prefixes_do_not_blow_up() -> None:
    assert normalize_subject("Re: " * 20_000 + "x") == "x"
    assert normalize_subject("x" + " (fwd)" * 20_000) == "x"


@given(st.text())
def test_normalize_never_raises_and_is_idempotent(subject: str) -> None:
    once = normalize_subject(subject)
    assert normalize_subject(once) == once


_PREFIXES = st.sampled_from(["Re: ", "RE[2]: ", "Fwd: ", "AW: ", "SV: ", "[list] ", "Ответ: "])


@given(st.lists(_PREFIXES, max_size=6), st.text(alphabet="abcdefgh xyz", min_size=1))
def test_any_prefix_chain_normalises_to_the_bare_subject(prefixes: list[str], core: str) -> None:
    assert normalize_subject("".join(prefixes) + core) == normalize_subject(core)


def test_format_ticket_tag() -> None:
    assert format_ticket_tag("Support", 12) == "[Support #12]"
    with pytest.raises(ValueError):
        format_ticket_tag("Support", -1)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[Support #12] Printer", [12]),
        ("Re: Printer [support #12]", [12]),
        ("[ Support  #12 ] Printer", [12]),
        ("[Support# 12]", [12]),
        ("Ｒｅ：Printer ［Support ＃12］", [12]),  # typed in full width
        ("[Support #12] Re: [Support #7] [SUPPORT #12]", [12, 7]),
        ("[Billing #12] Printer", []),  # another tag
        ("[Supporter #12]", []),  # a longer tag is another tag
        ("[MySupport #12]", []),
        ("Support #12", []),  # not bracketed
        ("[Support #]", []),
        ("[Support #12a]", []),
        ("[Support #" + "9" * 40 + "]", []),  # absurd numbers are not tickets
        ("", []),
    ],
)
def test_find_ticket_numbers(subject: str, expected: list[int]) -> None:
    assert find_ticket_numbers(subject, "Support") == expected


def test_find_ticket_numbers_with_spaces_and_regex_characters_in_tag() -> None:
    assert find_ticket_numbers("Re: [ACME  Help.Desk #5]", "ACME Help.Desk") == [5]
    assert find_ticket_numbers("[ACME HelpXDesk #5]", "ACME Help.Desk") == []


_TAGS = st.text(
    alphabet=st.characters(categories=("Lu", "Ll", "Nd"), include_characters="-_."),
    min_size=1,
    max_size=20,
)
_NUMBERS = st.integers(min_value=0, max_value=10**15)


@given(_TAGS, _NUMBERS, st.text(max_size=40), st.text(max_size=40))
def test_format_then_find_round_trip(tag: str, number: int, before: str, after: str) -> None:
    # Text around the tag must not create a second tag of ours for this to hold.
    subject = before.replace("[", "") + format_ticket_tag(tag, number) + after.replace("[", "")
    assert find_ticket_numbers(subject, tag) == [number]


@given(_TAGS, _NUMBERS, st.text())
def test_add_ticket_tag_then_find(tag: str, number: int, subject: str) -> None:
    tagged = add_ticket_tag(subject, tag, number)
    assert number in find_ticket_numbers(tagged, tag)
    assert "\r" not in tagged and "\n" not in tagged
    assert add_ticket_tag(tagged, tag, number) == tagged


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Printer on fire", "[Support #12] Printer on fire"),
        ("Re: [Support #12] Printer on fire", "Re: [Support #12] Printer on fire"),
        ("Re: [support  #12 ] Printer", "Re: [support  #12 ] Printer"),
        ("[Support #7] Printer", "[Support #12] [Support #7] Printer"),  # another ticket
        ("", "[Support #12]"),
        ("Hi\r\nBcc: victim@example.com", "[Support #12] Hi Bcc: victim@example.com"),
        ("Hi\nthere\u2028x", "[Support #12] Hi there x"),
    ],
)
def test_add_ticket_tag(subject: str, expected: str) -> None:
    assert add_ticket_tag(subject, "Support", 12) == expected
