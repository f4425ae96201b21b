"""Outlook Thread-Index conversation keys (MAIL-RULES §2 rule 5)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maildesk.domain.threadindex import conversation_key

# A conversation header as Outlook builds it: reserved byte, 5 bytes of FILETIME, a GUID.
# The GUID bytes are chosen so the base64 holds "+" and "/" (see the alphabet tests).
ROOT = (
    bytes.fromhex("01")
    + bytes.fromhex("d3f26e5188")
    + bytes.fromhex("fbefbeffffff0123456789eaeaeaeaea")
)
OTHER_ROOT = bytes.fromhex("01") + bytes.fromhex("d3f26e5188") + bytes.fromhex("eb" * 16)
CHILD_1 = ROOT + bytes.fromhex("a44012d0f2")
CHILD_2 = CHILD_1 + bytes.fromhex("0000123456")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_key_is_the_hex_of_the_22_byte_header() -> None:
    assert len(ROOT) == 22
    assert conversation_key(b64(ROOT)) == ROOT.hex()


@pytest.mark.parametrize("child", [CHILD_1, CHILD_2])
def test_reply_has_the_same_key_as_its_root(child: bytes) -> None:
    assert conversation_key(b64(child)) == conversation_key(b64(ROOT))


def test_another_conversation_has_another_key() -> None:
    assert conversation_key(b64(OTHER_ROOT)) != conversation_key(b64(ROOT))


@pytest.mark.parametrize(
    "value",
    [
        b64(ROOT).rstrip("="),  # padding dropped
        " " + b64(ROOT) + " ",
        b64(CHILD_1)[:20] + "\r\n\t" + b64(CHILD_1)[20:],  # folded header
        b64(ROOT).replace("=", "=3D"),  # quoted-printable left in the header
        b64(ROOT).replace("+", "&#43;"),  # an HTML entity for "+"
        b64(ROOT).replace("+", "-").replace("/", "_"),  # URL-safe alphabet
    ],
)
def test_damaged_but_recognisable_values(value: str) -> None:
    assert conversation_key(value) == ROOT.hex()


def test_values_with_plus_and_slash_decode() -> None:
    # Make sure the alphabet cases above were exercised by the chosen bytes.
    assert "+" in b64(ROOT) and "/" in b64(ROOT)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        b64(ROOT[:21]),  # one byte short of a conversation header
        "AQHT8m5R",
        "not base64 at all!",
        b64(ROOT)[:10] + "*" + b64(ROOT)[10:],
        "=" * 40,
        "ünïcödé" * 10,
    ],
)
def test_invalid_or_short_values_give_none(value: str) -> None:
    assert conversation_key(value) is None


@given(st.text(max_size=300))
def test_any_string_never_raises(value: str) -> None:
    key = conversation_key(value)
    assert key is None or len(key) == 44


@given(
    st.binary(min_size=22, max_size=22),
    st.lists(st.binary(min_size=5, max_size=5), max_size=20),
)
def test_child_blocks_keep_the_root_key(root: bytes, blocks: list[bytes]) -> None:
    child = root + b"".join(blocks)
    assert conversation_key(b64(child)) == conversation_key(b64(root)) == root.hex()


@given(st.binary(min_size=22, max_size=22), st.binary(min_size=22, max_size=22))
def test_different_roots_give_different_keys(a: bytes, b: bytes) -> None:
    assert (conversation_key(b64(a)) == conversation_key(b64(b))) == (a == b)
