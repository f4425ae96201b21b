"""Signed tokens: Message-IDs, body markers, reply addresses (MAIL-RULES §2, §5)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maildesk.domain.signing import RefPurpose, SignedRef, Signer
from tests.conftest import FrozenClock

SECRET = b"installation-secret-1"
OLD_SECRET = b"installation-secret-0"

tickets = st.integers(min_value=0, max_value=10**12)
nonces = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=24)
agents = st.text(max_size=30)


@pytest.fixture
def signer() -> Signer:
    return Signer([SECRET])


def test_a_signer_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        Signer([])
    with pytest.raises(ValueError):
        Signer([b""])


def test_repr_does_not_show_the_secret(signer: Signer) -> None:
    assert "secret-1" not in repr(signer)


# -- generic tokens -------------------------------------------------------------


def test_token_is_short_lower_case_base32(signer: Signer) -> None:
    assert re.fullmatch(r"[a-z2-7]{12}", signer.sign("a", "b"))
    assert re.fullmatch(r"[a-z2-7]{20}", signer.sign("a", length=20))


def test_fields_are_joined_unambiguously(signer: Signer) -> None:
    sig = signer.sign("ab", "c")
    assert signer.verify(sig, "ab", "c")
    assert not signer.verify(sig, "a", "bc")
    assert not signer.verify(sig, "abc")
    assert not signer.verify(sig, "ab", "c", "")


def test_rotation_old_secret_verifies_while_listed() -> None:
    old = Signer([OLD_SECRET])
    rotated = Signer([SECRET, OLD_SECRET])
    token = old.sign("ticket", "5")
    assert rotated.verify(token, "ticket", "5")
    assert rotated.sign("ticket", "5") == Signer([SECRET]).sign("ticket", "5")
    assert not Signer([SECRET]).verify(token, "ticket", "5")  # grace period over


def test_other_secret_fails(signer: Signer) -> None:
    assert not Signer([b"someone else"]).verify(signer.sign("x"), "x")


def test_case_folded_token_verifies(signer: Signer) -> None:
    assert signer.verify(signer.sign("x").upper(), "x")


@pytest.mark.parametrize("sig", ["", "short", "a" * 53, "KKKKKKKKKKKK", "1234567890ab", "é" * 12])
def test_malformed_signatures_fail(signer: Signer, sig: str) -> None:
    # "K" is the Kelvin sign, which lower-cases to an ASCII "k".
    assert not signer.verify(sig, "x")


@given(st.text(max_size=60), st.lists(st.text(max_size=10), max_size=3))
def test_verify_random_strings_never_raises(sig: str, fields: list[str]) -> None:
    Signer([SECRET]).verify(sig, *fields)


@given(st.lists(st.text(max_size=20), max_size=5), st.integers(min_value=8, max_value=52))
def test_sign_verify_round_trip(fields: list[str], length: int) -> None:
    signer = Signer([SECRET])
    assert signer.verify(signer.sign(*fields, length=length), *fields)


# -- Message-IDs ----------------------------------------------------------------


def test_outbound_message_id_shape(signer: Signer) -> None:
    mid = signer.outbound_message_id(123, "example.com", nonce="abc123")
    assert re.fullmatch(r"md\.t\.123\.abc123\.[a-z2-7]{12}@example\.com", mid)
    assert signer.parse_outbound_message_id(mid) == SignedRef("t", 123)
    assert signer.parse_outbound_message_id(f"<{mid}>") == SignedRef("t", 123)


@given(tickets, nonces, st.sampled_from(list(RefPurpose)), agents)
def test_outbound_message_id_round_trip(
    ticket: int, nonce: str, purpose: RefPurpose, agent: str
) -> None:
    signer = Signer([SECRET])
    mid = signer.outbound_message_id(ticket, "mail.example.org", nonce=nonce, purpose=purpose)
    mid_agent = signer.outbound_message_id(ticket, "x.test", nonce=nonce, agent=agent)
    assert signer.parse_outbound_message_id(mid) == SignedRef(purpose, ticket)
    assert signer.parse_outbound_message_id(mid_agent, agent=agent) == SignedRef("t", ticket)


def test_tampered_message_id_ticket_fails(signer: Signer) -> None:
    mid = signer.outbound_message_id(123, "example.com", nonce="abc123")
    assert signer.parse_outbound_message_id(mid.replace(".123.", ".124.")) is None
    assert signer.parse_outbound_message_id(mid.replace(".123.", ".0123.")) is None
    assert signer.parse_outbound_message_id(mid.replace("md.t.", "md.a.")) is None
    assert signer.parse_outbound_message_id(mid.replace("abc123", "abc124")) is None


def test_message_id_agent_is_signed_not_written(signer: Signer) -> None:
    mid = signer.outbound_message_id(9, "example.com", nonce="n1", purpose="a", agent="alice")
    assert "alice" not in mid
    assert signer.parse_outbound_message_id(mid, agent="alice") == SignedRef("a", 9)
    assert signer.parse_outbound_message_id(mid, agent="bob") is None
    assert signer.parse_outbound_message_id(mid) is None


def test_message_id_survives_case_folding_and_other_domain_case(signer: Signer) -> None:
    mid = signer.outbound_message_id(77, "Example.COM", nonce="Nonce7")
    assert signer.parse_outbound_message_id(mid.upper()) == SignedRef("t", 77)
    assert signer.parse_outbound_message_id(mid.lower()) == SignedRef("t", 77)


def test_message_id_from_old_secret_still_parses() -> None:
    mid = Signer([OLD_SECRET]).outbound_message_id(5, "example.com", nonce="n")
    assert Signer([SECRET, OLD_SECRET]).parse_outbound_message_id(mid) == SignedRef("t", 5)
    assert Signer([SECRET]).parse_outbound_message_id(mid) is None


@pytest.mark.parametrize(
    "mid",
    [
        "",
        "@",
        "CAF=abc@mail.gmail.com",
        "md.t.123.abc@example.com",
        "md.t.123.abc.def.ghi@example.com",
        "md.t.-1.abc.aaaaaaaaaaaa@example.com",
        "md.t.١٢٣.abc.aaaaaaaaaaaa@example.com",  # Arabic-Indic digits
        "md.t.123.abc.aaaaaaaaaaaa@example.com",  # well-formed but unsigned
    ],
)
def test_foreign_message_ids_are_not_ours(signer: Signer, mid: str) -> None:
    assert signer.parse_outbound_message_id(mid) is None


@given(st.text(max_size=120))
def test_parse_message_id_never_raises(mid: str) -> None:
    assert Signer([SECRET]).parse_outbound_message_id(mid) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ticket": -1, "domain": "example.com", "nonce": "n"},
        {"ticket": 1, "domain": "example.com", "nonce": "has.dot"},
        {"ticket": 1, "domain": "example.com", "nonce": ""},
        {"ticket": 1, "domain": "", "nonce": "n"},
        {"ticket": 1, "domain": "ex>ample.com", "nonce": "n"},
        {"ticket": 1, "domain": "example.com", "nonce": "n", "purpose": "two words"},
    ],
)
def test_outbound_message_id_rejects_bad_input(signer: Signer, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        signer.outbound_message_id(**kwargs)  # type: ignore[arg-type]


# -- body marker ----------------------------------------------------------------


def test_body_marker_round_trip(signer: Signer) -> None:
    marker = signer.body_marker(123)
    assert re.fullmatch(r"\[ref:md-123-[a-z2-7]{12}\]", marker)
    assert signer.find_body_marker(f"Thanks!\n\n-- \n{marker}\n") == 123


def test_body_marker_found_in_quoted_text(signer: Signer) -> None:
    text = f"New answer\n\nOn Monday you wrote:\n> old text\n> > {signer.body_marker(42)}\n"
    assert signer.find_body_marker(text) == 42


def test_last_valid_body_marker_wins(signer: Signer) -> None:
    forged = signer.body_marker(8).replace("md-8-", "md-9-")
    text = f"{signer.body_marker(7)}\n> {signer.body_marker(8)}\n{forged}\n"
    assert signer.find_body_marker(text) == 8


def test_body_marker_upper_cased_by_a_client(signer: Signer) -> None:
    assert signer.find_body_marker(signer.body_marker(5).upper()) == 5


def test_body_marker_other_secret_or_tampered_fails(signer: Signer) -> None:
    other = Signer([b"other installation"]).body_marker(5)
    assert signer.find_body_marker(other) is None
    assert signer.find_body_marker(signer.body_marker(5).replace("-5-", "-6-")) is None
    assert signer.find_body_marker("no marker here [ref:md-5-]") is None


@given(tickets)
def test_body_marker_round_trip_property(ticket: int) -> None:
    signer = Signer([SECRET])
    assert signer.find_body_marker("x\n> " + signer.body_marker(ticket) + "\ny") == ticket


@given(st.text(max_size=300))
def test_find_body_marker_never_raises(text: str) -> None:
    assert Signer([SECRET]).find_body_marker(text) is None


# -- reply local-parts ----------------------------------------------------------


def test_reply_local_part_shapes(signer: Signer) -> None:
    assert re.fullmatch(
        r"support\+t-123-[a-z2-7]{12}", signer.reply_local_part("support", "t", 123)
    )
    rate = signer.reply_local_part("support", RefPurpose.RATE, 123, extra=("5",))
    assert re.fullmatch(r"support\+rate-123-5-[a-z2-7]{12}", rate)
    assert signer.parse_reply_local_part(rate) == SignedRef("rate", 123, ("5",))
    bounce = signer.reply_local_part("help-desk", "bounce", 9, extra=("4711",))
    assert signer.parse_reply_local_part(bounce) == SignedRef("bounce", 9, ("4711",))


@given(
    st.sampled_from(["support", "help-desk", "a.b"]),
    tickets,
    st.sampled_from(
        [
            (RefPurpose.TICKET, ()),
            (RefPurpose.AGENT, ()),
            (RefPurpose.RATE, ("3",)),
            (RefPurpose.BOUNCE, ("123456",)),
        ]
    ),
    agents,
)
def test_reply_local_part_round_trip(
    base: str, ticket: int, purpose_extra: tuple[str, tuple[str, ...]], agent: str
) -> None:
    purpose, extra = purpose_extra
    signer = Signer([SECRET])
    local = signer.reply_local_part(base, purpose, ticket, agent, extra=extra)
    assert signer.parse_reply_local_part(local, agent=agent) == SignedRef(purpose, ticket, extra)
    assert signer.parse_reply_local_part(local.upper(), agent=agent) is not None


def test_reply_local_part_tampering_fails(signer: Signer) -> None:
    rate = signer.reply_local_part("support", "rate", 123, extra=("1",))
    assert signer.parse_reply_local_part(rate.replace("-1-", "-5-")) is None
    assert signer.parse_reply_local_part(rate.replace("-123-", "-124-")) is None
    assert signer.parse_reply_local_part(rate.replace("+rate-", "+t-")) is None
    assert Signer([b"other"]).parse_reply_local_part(rate) is None


def test_reply_local_part_agent_mismatch_fails(signer: Signer) -> None:
    local = signer.reply_local_part("support", "a", 5, "alice")
    assert "alice" not in local
    assert signer.parse_reply_local_part(local, agent="alice") == SignedRef("a", 5)
    assert signer.parse_reply_local_part(local, agent="bob") is None
    assert signer.parse_reply_local_part(local) is None


def test_reply_local_part_with_another_delimiter(signer: Signer) -> None:
    local = signer.reply_local_part("support", "t", 5, delimiter="=")
    assert local.startswith("support=t-5-")
    assert signer.parse_reply_local_part(local, delimiter="=") == SignedRef("t", 5)


@pytest.mark.parametrize(
    ("base", "purpose", "extra"),
    [
        ("support", "rate", ()),  # a rating needs its score
        ("support", "t", ("x",)),  # a ticket reply takes none
        ("support", "bounce", ("a-b",)),
        ("sup port", "t", ()),
        ("a+b", "t", ()),
        ("", "t", ()),
    ],
)
def test_reply_local_part_rejects_bad_input(
    signer: Signer, base: str, purpose: str, extra: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError):
        signer.reply_local_part(base, purpose, 1, extra=extra)


@pytest.mark.parametrize(
    "local",
    ["support", "support+", "support+t", "support+t-1", "support+t-x-aaaaaaaaaaaa", "+t-1-zz"],
)
def test_foreign_local_parts_are_not_ours(signer: Signer, local: str) -> None:
    assert signer.parse_reply_local_part(local) is None


@given(st.text(max_size=80))
def test_parse_local_part_never_raises(local: str) -> None:
    assert Signer([SECRET]).parse_reply_local_part(local) is None


def test_token_contexts_do_not_mix(signer: Signer) -> None:
    """A signature cut from one place does not verify in another."""
    marker_sig = signer.body_marker(5).split("-")[-1].rstrip("]")
    assert signer.parse_reply_local_part(f"support+t-5-{marker_sig}") is None


def test_a_running_daemon_stops_accepting_a_retired_secret_when_its_time_ends(
    tmp_path: Path, clock: FrozenClock
) -> None:
    """`[[retired_secrets]] until`: accepted until then, by the clock of each check. The
    daemon judged it once, at start, and accepted the old secret for as long as it ran."""
    from maildesk.app import App
    from tests.conftest import make_settings

    until = (clock() + timedelta(days=1)).isoformat()
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'maildesk.sqlite3'}",
        installation_secret="the-new-one",
        retired_secrets=[{"secret": "the-old-secret", "until": until}],
    )
    app = App.build(settings, clock=clock)
    try:
        old = Signer([b"the-old-secret"])
        marker = old.body_marker(7)
        assert app.signer.find_body_marker(marker) == 7  # in the grace period
        clock.advance(days=2)  # the daemon runs on past `until`
        assert app.signer.find_body_marker(marker) is None
        assert app.signer.find_body_marker(app.signer.body_marker(7)) == 7  # the new one signs
    finally:
        app.db.dispose()
