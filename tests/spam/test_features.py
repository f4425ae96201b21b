"""Feature extraction: fixed width, deterministic, total on odd input, no collection artefacts."""

from __future__ import annotations

import dataclasses
import re
import zlib
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maildesk.domain.message import Address, ParsedAttachment, ParsedMessage
from maildesk.spam.features import (
    _RCVD_FOR,
    _WORD,
    _WORD_ASCII,
    FEATURE_VERSION,
    FeatureConfig,
    FeatureExtractor,
    _hash_distinct,
    _is_local_hop,
    _link_parts,
    field_char_ngram_indices,
    token_groups,
    tokens,
)


def message(
    subject: str = "Hello",
    text: str = "Body text",
    html: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    sender: str = "alice@example.org",
    to: tuple[Address, ...] = (Address("support@desk.test"),),
    attachments: tuple[ParsedAttachment, ...] = (),
) -> ParsedMessage:
    return ParsedMessage(
        message_id="abc@example.org",
        in_reply_to=(),
        references=(),
        subject=subject,
        from_=Address(sender, "Alice"),
        to=to,
        cc=(),
        reply_to=(),
        date=None,
        text=text,
        html=html,
        attachments=attachments,
        headers=headers,
        content_type="text/plain",
    )


odd_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=400)
header_pairs = st.lists(st.tuples(st.text(max_size=20), odd_text), max_size=8).map(tuple)


@settings(max_examples=150, deadline=None)
@given(subject=odd_text, text=odd_text, html=st.none() | odd_text, headers=header_pairs)
def test_never_raises_and_stays_in_the_fixed_space(
    subject: str, text: str, html: str | None, headers: tuple[tuple[str, str], ...]
) -> None:
    config = FeatureConfig(n_features_log2=12)
    msg = message(subject=subject, text=text, html=html, headers=headers)
    idx, values = FeatureExtractor(config).indices(msg)
    assert idx.size > 0
    assert idx.min() >= 0 and idx.max() < 4096
    assert len(set(idx.tolist())) == idx.size  # distinct
    assert values.shape == idx.shape and (values > 0).all()


@settings(max_examples=50, deadline=None)
@given(subject=odd_text, text=odd_text)
def test_deterministic(subject: str, text: str) -> None:
    extractor = FeatureExtractor(FeatureConfig())
    first, _ = extractor.indices(message(subject=subject, text=text))
    second, _ = FeatureExtractor(FeatureConfig()).indices(message(subject=subject, text=text))
    assert first.tolist() == second.tolist()


def test_url_domains_and_money_shapes_become_tokens() -> None:
    toks = tokens(
        message(text="Win $1,000 now at http://deals.cheap-pills.example.com/buy/now?x=1"),
        FeatureConfig(),
    )
    assert "url:cheap-pills.example.com" in toks
    assert "url:example.com" in toks
    assert "urlp:buy" in toks
    assert "num:$9,999" in toks


def test_html_only_body_is_tokenized_from_its_text_and_tags() -> None:
    toks = tokens(
        message(
            text="", html='<font color="red">Cheap <b>meds</b></font><a href="http://x.test/">'
        ),
        FeatureConfig(),
    )
    assert {"Cheap", "meds", "tag:font:color", "url:x.test", "body:html-only"} <= set(toks)


def test_recipient_and_filter_verdict_headers_are_not_features_by_default() -> None:
    headers = (
        ("X-Spam-Status", "Yes, hits=12.0"),
        ("Delivered-To", "zzzz@collector.test"),
        ("X-Original-Recipient", "zzzz@collector.test"),
        ("Organization", "Acme Widgets"),
    )
    toks = tokens(message(headers=headers), FeatureConfig())
    assert not any("spam" in t.lower() and t.startswith("h:") for t in toks)
    assert not any("zzzz" in t for t in toks)
    assert "h:organization:Acme" in toks


def test_trusted_verdict_headers_are_used_only_when_configured_and_only_our_mtas() -> None:
    headers = (  # newest first: our MTA's headers on top of what the mail brought
        ("X-Spam-Flag", "YES"),
        ("Authentication-Results", "relay.evil.test; dmarc=pass header.from=bank.test"),
        ("Authentication-Results", "mx.example.com; spf=fail smtp.mailfrom=bank.test; dkim=none"),
        ("X-Spam-Flag", "NO"),  # the sender's own copies, forged
        ("Authentication-Results", "mx.example.com; dmarc=pass header.from=bank.test"),
    )
    msg = message(headers=headers)
    assert not any(t.startswith("verdict:") for t in tokens(msg, FeatureConfig()))
    trusted = FeatureConfig(
        trusted_verdict_headers=("X-Spam-Flag", "Authentication-Results"),
        trusted_authserv_ids=("mx.example.com",),
    )
    verdicts = {t for t in tokens(msg, trusted) if t.startswith("verdict:")}
    assert verdicts == {"verdict:x-spam-flag:yes", "verdict:spf:fail", "verdict:dkim:none"}
    # Without our MTA's id no Authentication-Results is believed.
    unnamed = dataclasses.replace(trusted, trusted_authserv_ids=())
    assert {t for t in tokens(msg, unnamed) if t.startswith("verdict:")} == {
        "verdict:x-spam-flag:yes"
    }


def test_attachment_types_are_features() -> None:
    att = ParsedAttachment("invoice.exe", "application/octet-stream", b"MZ")
    toks = tokens(message(attachments=(att,)), FeatureConfig())
    assert "att:ext:exe" in toks and "att:application/octet-stream" in toks


def test_config_json_round_trip() -> None:
    config = FeatureConfig(n_features_log2=18, own_domains=("desk.test",), char_ngrams=0)
    assert FeatureConfig.from_json(config.to_json()) == config
    no_grams = FeatureConfig(field_char_ngrams=0)
    assert FeatureConfig.from_json(no_grams.to_json()) == no_grams
    for bad in (-1, 9):
        data = FeatureConfig().to_json()
        data["field_char_ngrams"] = bad
        with pytest.raises(ValueError):
            FeatureConfig.from_json(data)


def test_numbers_become_shapes_but_digits_inside_words_do_not() -> None:
    toks = tokens(message(subject="", text="Order 12345 of mp3 files"), FeatureConfig())
    assert "num:99999" in toks
    assert "mp3" in toks
    assert "num:9" not in toks


def test_origin_relay_shape_reads_only_the_two_oldest_hops() -> None:
    headers = (
        ("Received", "from mx.receiver.test (mx.receiver.test [10.0.0.1]) by inbox.receiver.test"),
        (
            "Received",
            "from helo.sender-isp.example (relay7.sender-isp.example [203.0.113.9]) "
            "by mx.receiver.test with ESMTP",
        ),
        (
            "Received",
            "from client (pc1.office.example [198.51.100.7]) by relay7.sender-isp.example",
        ),
        ("Received", "from localhost (localhost [127.0.0.1]) by collector.test"),
    )
    toks = set(tokens(message(headers=headers), FeatureConfig(received_chain=False)))
    assert {"rcvdhost:sender-isp.example", "rcvdip:203.0", "rcvdhost:office.example"} <= toks
    assert not any("receiver" in t or "collector" in t for t in toks if t.startswith("rcvd"))
    plain = set(
        tokens(message(headers=headers), FeatureConfig(received_hosts=False, received_chain=False))
    )
    assert not any(t.startswith(("rcvdhost:", "rcvdip:")) for t in plain)


def test_hop_shape_reads_the_reverse_name_apart_from_the_address() -> None:
    def shape(received: str) -> set[str]:
        toks = tokens(message(headers=(("Received", received),)), FeatureConfig())
        return {t for t in toks if t.startswith("rcvd0:")}

    # A well-configured relay: HELO matches its reverse name; the address is no "dynamic" name.
    assert not shape("from mail.shop.example (mail.shop.example [192.0.2.25]) by mx.test") & {
        "rcvd0:rdns-dynamic",
        "rcvd0:helo-not-rdns",
    }
    assert {"rcvd0:rdns-dynamic", "rcvd0:helo-not-rdns"} <= shape(
        "from mail.shop.example (dsl-81-2-3-4.pool.isp.example [81.2.3.4]) by mx.test"
    )
    # Our own listener's line names no reverse name: nothing to compare, nothing dynamic.
    ours = shape("from mail.shop.example ([198.51.100.7]) by maildesk with ESMTP")
    assert not ours & {"rcvd0:rdns-dynamic", "rcvd0:helo-not-rdns", "rcvd0:no-ip"}
    # How many hops there were is the receiving installation's, not the sender's.
    assert not any(t.startswith("rcvd:hops") for t in tokens(message(), FeatureConfig()))


def test_received_chain_gives_relay_words_of_every_hop_but_not_when_or_for_whom() -> None:
    headers = (
        (
            "Received",
            "from mx.receiver.test (mx.receiver.test [10.0.0.1]) by inbox.receiver.test "
            "(Postfix) with ESMTP id 4F2A1 for <zzzz@receiver.test>; Mon, 5 Aug 2002 10:11:12 +0100",
        ),
        (
            "Received",
            "from helo.sender-isp.example ([203.0.113.9]) by mx.receiver.test with SMTP; "
            "Sun, 4 Aug 2002 23:59:01 -0000",
        ),
    )
    toks = set(tokens(message(headers=headers), FeatureConfig()))
    assert {
        "rcvd:mx.receiver.test",
        "rcvd:inbox.receiver.test",
        "rcvd:Postfix",
        "rcvd:helo.sender-isp.example",
        "rcvd:203.0.113.9",
    } <= toks
    chain = [t for t in toks if t.startswith("rcvd:")]
    assert not any(word in t for t in chain for word in ("zzzz", "Aug", "Mon", "2002", "+0100"))


def test_body_beyond_the_configured_length_is_ignored() -> None:
    text = "hello " * 100 + "zebraword"
    assert "zebraword" in tokens(message(text=text), FeatureConfig(max_body_chars=1000))
    assert "zebraword" not in tokens(message(text=text), FeatureConfig(max_body_chars=300))


def test_a_subject_is_read_to_a_fixed_length() -> None:
    subject = "hello " * 150 + "zebraword"  # 909 characters
    assert "s:zebraword" in tokens(message(subject=subject), FeatureConfig())
    longer = "hello " * 200 + "zebraword"  # past the 1,000 a hostile subject is cut to
    assert "s:zebraword" not in tokens(message(subject=longer), FeatureConfig())


def test_config_from_another_feature_version_is_refused() -> None:
    data = FeatureConfig().to_json()
    data["version"] = 1
    with pytest.raises(ValueError):
        FeatureConfig.from_json(data)


@pytest.mark.parametrize("version", [3, 5])
def test_an_older_model_keeps_its_features_and_is_saved_as_the_current_version(
    version: int,
) -> None:
    # Version 5 only stopped producing some of version 3's tokens, and version 6
    # only adds field n-grams behind a switch: older weights still apply, and a
    # model saved before the switch existed goes on without the n-grams.
    data = FeatureConfig().to_json()
    data["version"] = version
    del data["field_char_ngrams"]
    del data["subject_words"]
    config = FeatureConfig.from_json(data)
    assert config == FeatureConfig(field_char_ngrams=0, subject_words=False)
    assert config.to_json()["version"] == FEATURE_VERSION
    msg = message(subject="Cheap meds here")
    old_style = FeatureExtractor(config).extract(msg)
    assert old_style.indices.tolist() == old_style.counted.tolist()  # tokens only, as before


def test_subject_sender_and_message_id_char_ngrams() -> None:
    """Case-folded 4-grams of three short fields, kept apart from each other."""
    config = FeatureConfig()
    msg = message(subject="V1AGRA  Deals")  # sender "Alice <alice@example.org>", id "abc@..."
    content, head = field_char_ngram_indices(msg, config)
    # "v1agra deals" (whitespace collapsed) has 9 four-grams; "alice alice@example.org" 20
    assert content.size == 9 + 20
    assert head.size == 0  # "abc" is shorter than one 4-gram
    same = field_char_ngram_indices(message(subject="v1agra deals"), config)[0]
    assert sorted(same.tolist()) == sorted(content.tolist())  # case and spacing do not matter
    # the same text in the subject and in the sender hashes apart
    no_subject = set(field_char_ngram_indices(message(subject=""), config)[0].tolist())
    as_subject = set(field_char_ngram_indices(message(subject="zzzz"), config)[0].tolist())
    as_subject -= no_subject
    as_sender = field_char_ngram_indices(message(subject="", sender="zzzz"), config)[0]
    assert len(as_subject) == 1
    assert not as_subject & set(as_sender.tolist())


def test_field_char_ngrams_join_the_vector_but_not_the_token_counts() -> None:
    """The learner sees the n-grams; the token statistics count word tokens only.

    Overlapping n-grams repeat one piece of evidence dozens of times, which
    Fisher combining would take as dozens of independent clues.
    """
    msg = dataclasses.replace(
        message(subject="Cheap meds here"), message_id="ABCDEF123@mailer.example"
    )
    with_grams = FeatureExtractor(FeatureConfig()).extract(msg)
    without = FeatureExtractor(FeatureConfig(field_char_ngrams=0)).extract(msg)
    content, head = field_char_ngram_indices(msg, FeatureConfig())
    assert head.size > 0
    assert set(without.indices.tolist()) | set(content.tolist()) | set(head.tolist()) == set(
        with_grams.indices.tolist()
    )
    assert with_grams.indices.size > without.indices.size
    assert with_grams.counted.tolist() == without.indices.tolist()
    assert set(with_grams.counted.tolist()) <= set(with_grams.indices.tolist())


def test_the_receiving_side_and_dates_in_headers_are_not_features() -> None:
    # What this installation's MTA adds (Exim's Delivery-date / Envelope-to, a
    # scanner's verdict) is on all of its mail; the month says when, not what.
    headers = (
        ("Delivery-date", "Tue, 05 May 2026 10:00:01 +0000"),
        ("Envelope-to", "support@helpdesk.test"),
        ("X-MailScanner", "Found to be clean"),
        ("X-Delivery-Agent", "TMDA/0.57"),
        ("X-OriginalArrivalTime", "05 May 2026 09:59:58.0123 (UTC) FILETIME=[1234ABCD:01C2]"),
        ("Return-Path", "<bounces@shop.example>"),
    )
    toks = tokens(message(headers=headers), FeatureConfig())
    header_toks = [t for t in toks if t.startswith("h:")]
    assert not any(
        name in t for t in header_toks for name in ("delivery", "envelope", "mailscanner")
    )
    assert not any(t.endswith((":May", ":Tue")) for t in header_toks)
    assert "h:x-originalarrivaltime" in header_toks  # the origin's Exchange server: kept
    assert "h:x-originalarrivaltime:FILETIME" in header_toks
    # Return-Path: the envelope sender counts, whether the installation adds the header does not.
    assert "h:return-path" not in header_toks and "h:return-path:shop" in header_toks


def test_recipients_count_only_as_a_shape() -> None:
    hidden = message(to=(), headers=(("To", "undisclosed-recipients:;"),))
    toks = set(tokens(hidden, FeatureConfig()))
    assert {"rc:n:0", "rc:undisclosed"} <= toks
    many = message(to=tuple(Address(f"user{i}@example.org") for i in range(9)))
    many_toks = set(tokens(many, FeatureConfig()))
    assert "rc:n:5" in many_toks
    assert not any("user3" in t for t in many_toks)


def test_words_also_count_case_folded() -> None:
    toks = set(tokens(message(subject="", text="FREE Viagra"), FeatureConfig()))
    assert {"FREE", "free", "Viagra", "viagra"} <= toks


def test_header_group_weighs_header_weight_against_the_content_group() -> None:
    """A long body cannot drown the sender: each group is L2-normalised on its own."""
    config = FeatureConfig(header_weight=0.5)
    extractor = FeatureExtractor(config)
    short = extractor.indices(message(text="one two"))[1]
    long = extractor.indices(message(text=" ".join(f"w{i}x" for i in range(2000))))[1]
    # squared norm = content 1 + header 0.5**2 (up to hash collisions)
    for values in (short, long):
        assert float((values**2).sum()) == pytest.approx(1.25, rel=0.05)
    assert float(long.max()) > 5 * float(long.min())  # header tokens keep their weight


def test_vector_is_the_union_of_both_groups_and_a_collision_takes_the_header_value() -> None:
    """The vector written out with sets: every index of either group once, the header
    group's value where both groups hold it (a hash collision), the body's elsewhere."""
    config = FeatureConfig(n_features_log2=10, header_weight=0.7)  # small: collisions happen
    msg = message(
        subject="Cheap meds today",
        text=" ".join(f"word{i} other{i}" for i in range(150)),
        headers=(("X-Mailer", "Bulk Sender 5.1"), ("List-Id", "deals.example.net")),
    )
    content, head = token_groups(msg, config)
    content_grams, head_grams = field_char_ngram_indices(msg, config)
    mask = config.n_features - 1
    header = set(_hash_distinct([set(head)], mask).tolist()) | set(head_grams.tolist())
    body = set(_hash_distinct([set(content)], mask).tolist()) | set(content_grams.tolist())
    assert header & body, "the test needs a collision between the groups"
    features = FeatureExtractor(config).extract(msg)
    assert features.indices.tolist() == sorted(header | body)
    expected = [
        0.7 / len(header) ** 0.5 if index in header else 1 / len(body) ** 0.5
        for index in features.indices.tolist()
    ]
    assert features.values.tolist() == pytest.approx(expected, rel=1e-12)
    words = set(_hash_distinct([set(content)], mask).tolist()) | set(
        _hash_distinct([set(head)], mask).tolist()
    )
    assert features.counted.tolist() == sorted(words)  # n-grams are not counted


# What _WORD means, written plainly: a word starts with a letter, money with
# $ £ € and a number with a digit. _WORD is written differently for speed.
_WORD_SPEC = re.compile(r"[^\W\d_][\w'\-.$]{0,40}[\w$%!]|[$£€]\s?\d[\d,.]*|\d[\d,.:/\-]*[\d%]?")


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("aZé_9٣$£€%!'-.,:/ \t\n日ß") | st.characters(), max_size=80)
)
def test_word_tokens_are_words_money_and_numbers(text: str) -> None:
    assert _WORD.findall(text) == _WORD_SPEC.findall(text)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(max_codepoint=127), max_size=80)
    | st.text(alphabet=st.sampled_from("aZ_9$%!'-.,:/ \t\n\x0b\x1c\x1f"), max_size=80)
)
def test_ascii_text_has_the_same_word_tokens_on_the_fast_path(text: str) -> None:
    # Most mail is ASCII and is scanned with _WORD_ASCII; nothing may change.
    assert _WORD_ASCII.findall(text) == _WORD_SPEC.findall(text)


def _urlsplit_parts(url: str) -> tuple[str, str, int | None, bool, str, str] | str:
    try:
        parts = urlsplit(url)
        return (
            parts.scheme, parts.hostname or "", parts.port, "@" in parts.netloc, parts.path,
            parts.query,
        )  # fmt: skip
    except ValueError:
        return "unparsable"


def _link_parts_or_unparsable(url: str) -> tuple[str, str, int | None, bool, str, str] | str:
    try:
        return _link_parts(url)
    except ValueError:
        return "unparsable"


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["http://", "https://", "HTTP://", "mailto:", "", "//"]).flatmap(
        lambda scheme: st.text(
            alphabet=st.sampled_from("ab.Z09-/?#@:%[]&= \t\x01ｈ") | st.characters(), max_size=30
        ).map(lambda rest: scheme + rest)
    )
    | st.sampled_from(
        [
            "http://a.b:80/x",
            "http://u@h/x",
            "http://[::1]/x",
            "http://[::1/x",
            "http://h:x/",
            "http://h:99999/",
            "http:///x",
            "http://h#f?q",
            "http://h?q#f",
            "http://h/p?",
            "https://H.Example.COM/Path",
            "http://h/\tx",
            "http://ｈ.com/",
            "http://h%41/",
        ]
    )
)
def test_links_are_read_as_urlsplit_reads_them(url: str) -> None:
    # _link_parts splits plain http(s) links itself, for speed; nothing may change.
    assert _link_parts_or_unparsable(url) == _urlsplit_parts(url)


# What _RCVD_FOR and _is_local_hop mean, written plainly (they are spelled for speed).
_RCVD_FOR_SPEC = re.compile(r"\bfor\s+<?[^\s;>]*>?", re.IGNORECASE)
_LOCAL_HOP_SPEC = re.compile(r"localhost|127\.0\.0\.1", re.IGNORECASE)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("fFoOrR <>;_é1 \tx") | st.characters(), max_size=40))
def test_received_for_clauses_and_local_hops_are_found_in_any_case(text: str) -> None:
    assert _RCVD_FOR.sub(" ", text) == _RCVD_FOR_SPEC.sub(" ", text)
    for hop in (text, text + "LocalHost", "127.0.0.1" + text, text + "localhoſt"):
        assert _is_local_hop(hop) == bool(_LOCAL_HOP_SPEC.search(hop))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters() | st.just("\0"), max_size=12), max_size=40))
def test_token_hashes_are_the_crc32_of_each_token_even_with_nul_inside(toks: list[str]) -> None:
    mask = (1 << 20) - 1
    expected = {zlib.crc32(token.encode("utf-8", "replace")) & mask for token in toks}
    assert set(_hash_distinct([set(toks)], mask).tolist()) == expected


def test_chinese_and_japanese_text_gives_character_bigrams() -> None:
    """Han and kana are written without spaces: a phrase is one word token, so two
    mails about the same thing would share none; their character bigrams they share."""
    found = tokens(message(subject="免费电话", text="国际长途，无限次。カタカナ"), FeatureConfig())
    assert {"s:cjk:免费", "s:cjk:费电", "s:cjk:电话"} <= set(found)
    assert {"cjk:国际", "cjk:际长", "cjk:长途", "cjk:无限", "cjk:限次"} <= set(found)
    assert {"cjk:カタ", "cjk:タカ", "cjk:カナ"} <= set(found)
    assert "cjk:途无" not in found  # not across the comma between the phrases
    # Korean is written with spaces: its words are tokens already
    assert not [t for t in tokens(message(text="요즘 뜨는 직종"), FeatureConfig()) if "cjk:" in t]


def test_latin_words_spelled_with_cyrillic_or_greek_look_alikes_are_flagged() -> None:
    def flagged(text: str) -> bool:
        return "script:mixed" in tokens(message(subject="", text=text), FeatureConfig())

    assert flagged("Verify your P\u0430ypal account")  # a Cyrillic a inside "Paypal"
    assert flagged("Your \u0391pple ID is locked")  # a Greek capital alpha
    assert not flagged("Verify your Paypal account")
    assert not flagged("Привет, Paypal и Ελλάδα")  # each word in one script


def test_a_word_disguised_with_invisible_or_full_width_letters_gives_the_plain_word() -> None:
    found = set(tokens(message(subject="", text="Buy Vi\u200bagra, ｆｒｅｅ"), FeatureConfig()))
    assert {"Viagra", "viagra", "free", "script:invisible"} <= found  # as a reader sees it
    assert {"agra", "ｆｒｅｅ"} <= found  # and as written: the disguise is evidence too
    soft = set(tokens(message(subject="", text="Café: cheap Vi\u00adagra"), FeatureConfig()))
    assert {"Viagra", "script:invisible"} <= soft  # a soft hyphen in Western text too
    plain = set(tokens(message(subject="", text="Grüße aus Köln, café"), FeatureConfig()))
    assert {"Grüße", "Köln", "café"} <= plain
    assert not [t for t in plain if t.startswith("script:")]


def test_a_version_6_model_loads_as_the_current_version_with_its_settings() -> None:
    # Version 7 adds tokens to text that is not all ASCII, which older weights know
    # nothing of, and subject words as text words behind a switch the model lacks.
    data = FeatureConfig().to_json()
    data["version"] = 6
    for key in ("subject_words", "sender_origin", "skip_our_relay_name", "link_sender"):
        del data[key]
    assert FeatureConfig.from_json(data) == FeatureConfig(
        subject_words=False, sender_origin=False, skip_our_relay_name=False, link_sender=False
    )


def test_a_version_7_model_loads_with_the_version_8_tokens_off() -> None:
    data = FeatureConfig().to_json()
    data["version"] = 7
    del data["sender_origin"], data["skip_our_relay_name"], data["link_sender"]
    loaded = FeatureConfig.from_json(data)
    assert loaded.version == FEATURE_VERSION and loaded.subject_words
    assert not (loaded.sender_origin or loaded.skip_our_relay_name or loaded.link_sender)


def _hop(helo: str, ip: str) -> tuple[str, str]:
    return (
        "Received",
        f"from {helo} ([{ip}])\tby maildesk with ESMTP; Sun, 6 Dec 2026 10:00:00 +0000",
    )


@pytest.mark.parametrize(
    ("sender", "relays", "origin"),
    [
        ("anna@customer.test", [_hop("mail.customer.test", "198.51.100.7")], "own"),
        ("anna@yahoo.com", [_hop("sonic301.consmr.mail.ir2.yahoo.com", "77.238.176.82")], "own"),
        ("anna@shop.co.uk", [_hop("smtp.shop.co.uk", "192.0.2.8")], "own"),
        ("anna@shop.co.uk", [_hop("smtp.other.co.uk", "192.0.2.8")], "other"),  # not "co.uk"
        ("anna@gmail.com", [_hop("mail-wr1-f41.google.com", "209.85.221.41")], "other"),
        ("paypal@paypal.com", [_hop("dsl-203-0-113-9.isp.example", "203.0.113.9")], "other"),
        # Look-alike relay names that merely contain the sender's domain:
        ("paypal@paypal.com", [_hop("paypal.com.secure-login.example", "203.0.113.9")], "other"),
        ("anna@example.org", [_hop("mail.notexample.org", "203.0.113.9")], "other"),
        # The two oldest hops are the origin; the sender's name further on says nothing.
        (
            "anna@customer.test",
            [
                ("Received", "from mx.customer.test by inbox.customer.test"),
                _hop("relay.isp.example", "192.0.2.1"),
                _hop("pc23.home.example", "192.0.2.23"),
            ],
            "other",
        ),
    ],
)
def test_whether_the_sender_domain_names_the_origin_relays(
    sender: str, relays: list[tuple[str, str]], origin: str
) -> None:
    found = [t for t in tokens(message(sender=sender, headers=tuple(relays)), FeatureConfig())]
    assert [t for t in found if t.startswith("from:origin:")] == ["from:origin:" + origin]
    older = tokens(
        message(sender=sender, headers=tuple(relays)), FeatureConfig(sender_origin=False)
    )
    assert not any(t.startswith("from:origin:") for t in older)


@pytest.mark.parametrize(
    ("text", "html", "expected"),
    [
        ("See https://www.shop.example.org/cart and http://shop.example.org/help", None, "all"),
        ("See https://shop.example.org/cart and https://imgur.com/a/x1", None, "some"),
        ("Claim it at http://win.example.biz/now", None, "none"),
        ("", '<a href="http://example.org.login-check.example.top/">Log in</a>', "none"),
        (
            "",
            '<a href="https://example.org/">Home</a><img src="http://cdn.example.org/a.png">',
            "all",
        ),
        ("No link here.", None, None),
        ("A broken link: http:///nothing", None, None),
    ],
)
def test_whether_the_links_go_to_the_sender_domain(
    text: str, html: str | None, expected: str | None
) -> None:
    found = [t for t in tokens(message(text=text, html=html), FeatureConfig())]
    linked = [t for t in found if t.startswith("url:sender:")]
    assert linked == ([f"url:sender:{expected}"] if expected else [])
    older = tokens(message(text=text, html=html), FeatureConfig(link_sender=False))
    assert not any(t.startswith("url:sender:") for t in older)


def test_a_sender_without_a_domain_owns_no_link() -> None:
    mail = message(sender="root@localhost", text="See http://localhost/x and http:///y")
    assert "url:sender:none" in tokens(mail, FeatureConfig())


def test_no_received_line_no_origin_token() -> None:
    assert not any(t.startswith("from:origin:") for t in tokens(message(), FeatureConfig()))


def test_our_listener_name_is_no_relay_word() -> None:
    """Every mail through our SMTP listener says "by maildesk": it is no evidence either way."""
    headers = (_hop("mail.customer.test", "198.51.100.7"),)
    found = set(tokens(message(headers=headers), FeatureConfig()))
    assert "rcvd:mail.customer.test" in found and "rcvd:maildesk" not in found
    older = set(tokens(message(headers=headers), FeatureConfig(skip_our_relay_name=False)))
    assert "rcvd:maildesk" in older


def test_subject_words_are_also_words_of_the_text() -> None:
    found = tokens(message(subject="Cheap MEDS", text="Hello"), FeatureConfig())
    assert {"s:Cheap", "s:cheap", "s:MEDS", "s:meds", "cheap", "meds"} <= set(found)
    assert "MEDS" not in found  # the case-folded word only
    older = tokens(message(subject="Cheap MEDS", text="Hello"), FeatureConfig(subject_words=False))
    assert "cheap" not in older and "s:cheap" in older
