"""SpamFilter: learning, bands, persistence without pickle, seed fallback."""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maildesk.domain.message import Address, ParsedMessage
from maildesk.spam.model import (
    Band,
    LearnerConfig,
    ModelLoadError,
    SpamFilter,
    Thresholds,
    TrainPolicy,
)
from maildesk.spam.tokenstats import TokenStatsConfig


def message(subject: str, text: str, sender: str = "bob@example.org") -> ParsedMessage:
    return ParsedMessage(
        message_id=f"{abs(hash(subject + text))}@example.org",
        in_reply_to=(),
        references=(),
        subject=subject,
        from_=Address(sender),
        to=(Address("support@desk.test"),),
        cc=(),
        reply_to=(),
        date=None,
        text=text,
        html=None,
        attachments=(),
        headers=(("Subject", subject),),
        content_type="text/plain",
    )


SPAMMY = [
    message("Cheap meds!!!", "Buy viagra now $99.99 http://pills.example.biz/buy", "x1@pills.biz"),
    message(
        "You WON $1,000,000", "Claim your lottery prize at http://win.example.biz", "w@win.biz"
    ),
    message("Hot singles", "Click here http://dating.example.biz/now unsubscribe", "d@dating.biz"),
]
HAMMY = [
    message(
        "Printer broken", "Hi, the office printer shows error 42 since Monday.", "ann@corp.org"
    ),
    message(
        "Re: invoice 2231", "Thanks, the invoice was paid yesterday. Regards, Tom", "t@corp.org"
    ),
    message(
        "VPN access", "Could you reset my VPN token? I am travelling next week.", "eve@corp.org"
    ),
]


def trained(rounds: int = 3, model: SpamFilter | None = None) -> SpamFilter:
    model = model if model is not None else SpamFilter()
    for _ in range(rounds):
        for s, h in zip(SPAMMY, HAMMY, strict=True):
            model.learn(s, True)
            model.learn(h, False)
    return model


def save_as_an_older_release(
    model: SpamFilter, path: Path, edit_meta: Callable[[dict[str, Any]], None], drop: str = ""
) -> Path:
    """Save ``model`` as an older release wrote it: ``edit_meta`` turns today's metadata
    into that release's, and the arrays whose names start with ``drop`` are left out."""
    model.save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files if not (drop and k.startswith(drop))}
    meta = json.loads(bytes(arrays["meta"]).decode())
    edit_meta(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    return path


def test_learning_a_message_moves_its_score_toward_the_label() -> None:
    model = trained(1)
    target = message("Limited offer", "Cheap watches http://watch.example.biz", "o@watch.biz")
    before = model.score(target).probability
    model.learn(target, True)
    assert model.score(target).probability > before
    before = model.score(target).probability
    model.learn(target, False)
    assert model.score(target).probability < before


def test_trained_model_separates_the_classes() -> None:
    model = trained()
    assert all(
        model.score(s).probability > model.score(h).probability for s in SPAMMY for h in HAMMY
    )


@pytest.mark.parametrize(
    ("probability", "band"),
    [(0.0, Band.HAM), (0.49, Band.HAM), (0.5, Band.UNSURE), (0.98, Band.UNSURE), (0.99, Band.SPAM)],
)
def test_bands_follow_thresholds(probability: float, band: Band) -> None:
    assert Thresholds(unsure_at=0.5, spam_at=0.99).band(probability) is band


def test_inconsistent_thresholds_are_rejected() -> None:
    with pytest.raises(ValueError):
        Thresholds(unsure_at=0.9, spam_at=0.5)


def test_save_load_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    model = trained()
    path = tmp_path / "live.npz"
    model.save(path)
    loaded = SpamFilter.load(path)
    for msg in SPAMMY + HAMMY:
        assert loaded.score(msg) == model.score(msg)
    assert (loaded.trained_spam, loaded.trained_ham) == (model.trained_spam, model.trained_ham)
    assert [p.name for p in tmp_path.iterdir()] == ["live.npz"]  # no temp file left behind


def test_loaded_model_keeps_learning_like_the_original(tmp_path: Path) -> None:
    model = trained()
    model.save(tmp_path / "m.npz")
    loaded = SpamFilter.load(tmp_path / "m.npz")
    extra = message("Free money", "Wire fee needed http://scam.example.biz", "s@scam.biz")
    model.learn(extra, True)
    loaded.learn(extra, True)
    assert loaded.score(extra).probability == pytest.approx(model.score(extra).probability)


def test_a_live_model_learned_before_field_ngrams_loads_and_scores_as_before(
    tmp_path: Path,
) -> None:
    """A deployment's version 5 model keeps what agents taught it after an upgrade."""
    from maildesk.spam.features import FeatureConfig

    old = trained(model=SpamFilter(FeatureConfig(field_char_ngrams=0)))

    def as_version_5_wrote_it(meta: dict[str, Any]) -> None:
        meta["features"]["version"] = 5  # no field n-gram key
        del meta["features"]["field_char_ngrams"]

    path = save_as_an_older_release(old, tmp_path / "live.npz", as_version_5_wrote_it)
    loaded = SpamFilter.load(path)
    assert loaded.features.field_char_ngrams == 0
    for msg in SPAMMY + HAMMY:
        assert loaded.score(msg) == old.score(msg)
    assert SpamFilter().features.field_char_ngrams == 4  # a new model has them


def test_a_live_model_of_feature_version_6_scores_as_before(tmp_path: Path) -> None:
    """Subject words as text words are switched on for new models only."""
    from maildesk.spam.features import FeatureConfig

    old = trained(model=SpamFilter(FeatureConfig(subject_words=False)))

    def as_version_6_wrote_it(meta: dict[str, Any]) -> None:
        meta["features"]["version"] = 6
        del meta["features"]["subject_words"]

    loaded = SpamFilter.load(
        save_as_an_older_release(old, tmp_path / "m.npz", as_version_6_wrote_it)
    )
    assert not loaded.features.subject_words
    for msg in SPAMMY + HAMMY:
        assert loaded.score(msg) == old.score(msg)
    assert SpamFilter().features.subject_words  # a new model has them


def test_a_live_model_of_feature_version_7_scores_as_before(tmp_path: Path) -> None:
    """The sender-origin and link tokens, and the skipped "by maildesk", are for new
    models only."""
    from maildesk.spam.features import FeatureConfig

    def through_our_listener(msg: ParsedMessage) -> ParsedMessage:
        domain = msg.from_.addr.rpartition("@")[2] if msg.from_ else "unknown.test"
        hop = f"from mail.{domain} ([198.51.100.7])\tby maildesk with ESMTP; Sun, 6 Dec 2026"
        return dataclasses.replace(msg, headers=(("Received", hop), *msg.headers))

    spammy, hammy = map(through_our_listener, SPAMMY), map(through_our_listener, HAMMY)
    mails = [*spammy, *hammy]
    old = SpamFilter(
        FeatureConfig(sender_origin=False, skip_our_relay_name=False, link_sender=False)
    )
    for _ in range(3):
        for spam_mail, ham_mail in zip(mails[:3], mails[3:], strict=True):
            old.learn(spam_mail, True)
            old.learn(ham_mail, False)

    def as_version_7_wrote_it(meta: dict[str, Any]) -> None:
        meta["features"]["version"] = 7
        for key in ("sender_origin", "skip_our_relay_name", "link_sender"):
            del meta["features"][key]

    loaded = SpamFilter.load(
        save_as_an_older_release(old, tmp_path / "m.npz", as_version_7_wrote_it)
    )
    features = loaded.features
    assert not (features.sender_origin or features.skip_our_relay_name or features.link_sender)
    for msg in mails:
        assert loaded.score(msg) == old.score(msg)
    new = SpamFilter()  # reads the mails differently, so the old weights would not fit it
    assert any(
        not np.array_equal(new.features_of(m).indices, loaded.features_of(m).indices) for m in mails
    )


def test_a_live_model_saved_before_the_evidence_scaled_learner_scores_as_before(
    tmp_path: Path,
) -> None:
    """Upgrading keeps an installation's verdicts; the new learner then starts learning."""
    old = trained(model=SpamFilter(learner=LearnerConfig(nb_weight=0.0)))

    def without_the_learner(meta: dict[str, Any]) -> None:
        for key in ("nb_weight", "nb_eta0", "nb_smoothing"):
            del meta["learner"][key]
        del meta["nb_intercept"], meta["nb_sgd_t"]

    path = save_as_an_older_release(old, tmp_path / "live.npz", without_the_learner, "nb_")
    loaded = SpamFilter.load(path)
    assert loaded.learner.nb_weight == LearnerConfig().nb_weight > 0
    for msg in SPAMMY + HAMMY:
        assert loaded.score(msg) == old.score(msg)
    released = message("Free money", "Wire fee needed http://scam.example.biz", "s@scam.biz")
    loaded.learn(released, False)  # a mistake, so both learners train
    old.learn(released, False)
    assert loaded.margin(released) != old.margin(released)  # the new learner took part


def test_the_evidence_scaled_learner_separates_near_duplicates_further() -> None:
    """After one learned spam and one learned ham, their near-duplicates lie further
    apart with the evidence-scaled learner than without it."""
    spam_again = message("Cheap meds!!!", "Buy viagra now $89.99 http://pills.example.biz/buy")
    ham_again = message("Printer broken again", "Hi, the office printer shows error 43 today.")
    gaps = {}
    for weight in (0.0, 1.0):
        model = SpamFilter(learner=LearnerConfig(nb_weight=weight))
        model.learn(SPAMMY[0], True)
        model.learn(HAMMY[0], False)
        gaps[weight] = model.margin(spam_again) - model.margin(ham_again)
    assert gaps[1.0] > gaps[0.0] + 1.0 > 1.0


def test_missing_live_file_falls_back_to_seed_with_a_note(tmp_path: Path) -> None:
    seed = tmp_path / "seed.npz"
    trained().save(seed)
    model, note = SpamFilter.load_or_seed(tmp_path / "absent.npz", seed)
    assert "does not exist" in note and "seed" in note
    assert model.score(SPAMMY[0]) == SpamFilter.load(seed).score(SPAMMY[0])


def test_corrupt_live_file_falls_back_to_seed_with_a_note(tmp_path: Path) -> None:
    seed = tmp_path / "seed.npz"
    trained().save(seed)
    live = tmp_path / "live.npz"
    trained().save(live)
    live.write_bytes(live.read_bytes()[:200])  # truncated write
    model, note = SpamFilter.load_or_seed(live, seed)
    assert "falling back to the seed" in note
    assert model.trained_spam == SpamFilter.load(seed).trained_spam


def test_good_live_file_is_preferred_over_seed(tmp_path: Path) -> None:
    seed = tmp_path / "seed.npz"
    SpamFilter().save(seed)
    live = tmp_path / "live.npz"
    trained().save(live)
    model, note = SpamFilter.load_or_seed(live, seed)
    assert model.trained_spam == 9 and "loaded" in note


class _Boom:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_pickle_is_rejected_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(ModelLoadError):
        SpamFilter.load(path)
    assert not marker.exists()


def test_an_npz_with_object_arrays_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.npz"
    arr = np.empty(1, dtype=object)
    arr[0] = _Boom(marker)
    with path.open("wb") as handle:
        np.savez(handle, indices=arr, values=arr, meta=arr, allow_pickle=True)
    with pytest.raises(ModelLoadError):
        SpamFilter.load(path)
    assert not marker.exists()


def test_a_foreign_npz_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    with path.open("wb") as handle:
        np.savez(handle, weights=np.zeros(3))
    with pytest.raises(ModelLoadError):
        SpamFilter.load(path)


def test_learner_config_json_round_trip() -> None:
    config = LearnerConfig(
        alpha=1e-4,
        policy=TrainPolicy.THICK,
        learning_rate="optimal",
        eta0=0.5,
        token_weight=3.0,
        token_stats=TokenStatsConfig(robs=0.2, robx=0.4, min_dev=0.05),
        nb_weight=0.5,
        nb_eta0=2.0,
        nb_smoothing=0.3,
    )
    assert LearnerConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "bad",
    [
        {"learning_rate": "turbo"},
        {"eta0": 0},
        {"eta0": -1.0},
        {"eta0": True},
        {"nb_weight": -1.0},
        {"nb_eta0": 0},
        {"nb_smoothing": 0.0},
        {"nb_smoothing": "0.1"},
    ],
)
def test_learner_config_refuses_bad_step_settings(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LearnerConfig.from_json({**LearnerConfig().to_json(), **bad})


@pytest.mark.parametrize("token_weight", [0.0, 8.0])
def test_with_and_without_token_statistics_the_model_learns_and_round_trips(
    tmp_path: Path, token_weight: float
) -> None:
    model = SpamFilter(learner=LearnerConfig(token_weight=token_weight))
    for _ in range(3):
        for s, h in zip(SPAMMY, HAMMY, strict=True):
            model.learn(s, True)
            model.learn(h, False)
    assert min(model.margin(s) for s in SPAMMY) > max(model.margin(h) for h in HAMMY)
    model.save(tmp_path / "m.npz")
    loaded = SpamFilter.load(tmp_path / "m.npz")
    assert [loaded.margin(m) for m in SPAMMY + HAMMY] == [model.margin(m) for m in SPAMMY + HAMMY]


def test_token_statistics_add_evidence_after_a_single_example() -> None:
    """One learned spam makes its near-duplicate spammier than with SGD alone."""
    probe = message(
        "Cheap meds!!!", "Buy viagra now $89.99 http://pills.example.biz/buy", "x@p.biz"
    )
    with_stats = SpamFilter()
    sgd_only = SpamFilter(learner=LearnerConfig(token_weight=0.0))
    for model in (with_stats, sgd_only):
        model.learn(SPAMMY[0], True)
        model.learn(HAMMY[0], False)
    assert with_stats.margin(probe) > sgd_only.margin(probe)


def test_a_model_file_of_an_older_format_falls_back_to_the_seed(tmp_path: Path) -> None:
    seed = tmp_path / "seed.npz"
    trained().save(seed)
    old = tmp_path / "old.npz"
    meta = json.dumps({"kind": "maildesk-spam-sgd", "format_version": 1}).encode()
    with old.open("wb") as handle:
        np.savez(
            handle,
            indices=np.zeros(0, np.int32),
            values=np.zeros(0),
            meta=np.frombuffer(meta, dtype=np.uint8),
        )
    with pytest.raises(ModelLoadError):
        SpamFilter.load(old)
    model, note = SpamFilter.load_or_seed(old, seed)
    assert "falling back to the seed" in note and model.trained_spam == 9


def test_the_seed_model_lets_short_plain_support_requests_through() -> None:
    """What a helpdesk mostly receives: short plain requests from unknown customers.

    Field character n-grams counted by the token statistics (feature version
    4) put 19 of 1,000 such mails in "unsure" (no acknowledgement) when they
    came through the SMTP listener; since version 6 only the learner sees
    them. This guards against that kind of regression.
    Short billing mail is the seed's known weak spot (its 2002 spam is full of
    invoices and amounts): it may land in "unsure" (a ticket, flagged), but
    must never be held as spam.
    """
    from datetime import UTC, datetime

    from maildesk.intake.smtp import trace_header
    from maildesk.pipeline.parse import parse_message
    from maildesk.spam.scoring import SEED_MODEL
    from tests.mailfactory import make_mail

    model = SpamFilter.load(SEED_MODEL)
    subjects = ["request", "Printer on fire", "Invoice question", "Login fails", "VPN drops"]
    plain = [
        "Hello, my printer is on fire.\n",
        "Hi,\n\nI cannot log in since this morning. Can you help?\n\nThanks, Dana\n",
        "The VPN disconnects every ten minutes.\n",
    ]
    billing = "Our invoice 4711 shows the wrong amount, please check.\n"
    # What the SMTP listener prepends for the load test's client on 127.0.0.1.
    trace = trace_header("client.example", "127.0.0.1", "smtp", datetime.now(UTC)).encode()
    worst = {"plain": 0.0, "billing": 0.0}
    for n in range(200):
        kind, body = ("billing", billing) if n % 4 == 3 else ("plain", plain[n % 4])
        raw = make_mail(
            sender=f"c{n}@customer.test",
            message_id=f"load-{n}@customer.test",
            subject=f"{subjects[n % len(subjects)]} {n}",
            body=body,
        )
        verdict = model.score(parse_message(trace + raw))
        worst[kind] = max(worst[kind], verdict.probability)
    assert worst["plain"] < model.thresholds.unsure_at, worst
    assert worst["billing"] < model.thresholds.spam_at, worst


def test_the_receiving_mta_and_the_month_do_not_move_the_seed_verdict() -> None:
    """A helpdesk behind Exim gets Delivery-date / Envelope-to on every message.

    The seed's corpus had Delivery-date on most of its spam and a few of its
    ham, so a model that read it leaned all of such an installation's mail
    towards spam, and more so in the months its spam was collected.
    """
    from maildesk.pipeline.parse import parse_message
    from maildesk.spam.scoring import SEED_MODEL
    from tests.mailfactory import make_mail

    model = SpamFilter.load(SEED_MODEL)
    raw = make_mail(
        sender="anna@customer.test",
        subject="Our invoice 4711 shows the wrong amount",
        body="Hello, our invoice 4711 shows the wrong amount, please check.\n",
    )
    plain = model.score(parse_message(raw)).probability
    for month in ("May", "Jun", "Sep"):
        delivered = (
            f"Envelope-to: support@helpdesk.test\r\n"
            f"Delivery-date: Tue, 05 {month} 2026 10:00:01 +0000\r\n"
            f"X-MailScanner: Found to be clean\r\n"
        ).encode()
        assert model.score(parse_message(delivered + raw)).probability == pytest.approx(plain)


@pytest.mark.parametrize(
    "relays",
    [
        pytest.param(b"", id="sent-straight-to-our-listener"),
        pytest.param(
            b"Received: from [10.0.0.23] (pc23.customer.test [10.0.0.23])\r\n"
            b"\tby mail.customer.test (Postfix) with ESMTPSA id 99AB;"
            b" Sun, 06 Dec 2026 01:19:40 +0100\r\n",
            id="through-the-customers-own-server",
        ),
    ],
)
def test_plain_requests_through_our_listener_from_a_public_address_are_not_flagged(
    relays: bytes,
) -> None:
    """The listener's own Received line is the oldest hop of mail sent straight to us.

    Written as ``from HELO (IP)``, the seed read every such line as a dynamic,
    mismatched relay and scored a plain "cannot log in" 0.71 ("possible spam",
    no acknowledgement): only tests from 127.0.0.1, whose hop is skipped as
    local, looked fine.
    """
    requests = {
        "Cannot log in since yesterday": "Hello, since yesterday I cannot log in to my account. "
        "Can you help? Thanks, Anna\n",
        "VPN drops": "The VPN disconnects every ten minutes.\n",
        "Invoice question": "Our invoice 4711 shows the wrong amount, please check.\n",
    }
    model, scores = seed_scores_through_our_listener(
        "anna@customer.test", "mail.customer.test", "198.51.100.7", requests, relays
    )
    for subject, probability in scores.items():
        limit = model.thresholds.spam_at if "Invoice" in subject else model.thresholds.unsure_at
        assert probability < limit, (subject, probability)


@pytest.mark.parametrize(
    ("sender", "helo", "peer_ip"),
    [
        ("anna.berg@gmail.com", "mail-wr1-f41.google.com", "209.85.221.41"),
        ("anna.berg@yahoo.com", "sonic301-20.consmr.mail.ir2.yahoo.com", "77.238.176.82"),
        ("anna.berg@outlook.com", "EUR05-AM6-obe.outbound.protection.outlook.com", "40.107.22.98"),
        ("anna@acme-corp.test", "mail-ed1-f48.google.com", "209.85.208.48"),  # hosted at Google
        # Providers the seed's made-up customers never write from:
        ("anna.berg@fastmail.com", "out3-smtp.messagingengine.com", "66.111.4.27"),
        ("anna.berg@mail.ru", "smtp45.i.mail.ru", "94.100.177.5"),
    ],
)
def test_plain_requests_from_mailbox_provider_customers_are_not_flagged(
    sender: str, helo: str, peer_ip: str
) -> None:
    """The seed's 2002 spam is full of Yahoo and Hotmail senders: a seed whose
    requests all came from organisations held a Yahoo customer's invoice
    question as spam (0.99) and flagged her log-in request (0.95)."""
    requests = {
        "Cannot log in since yesterday": "Hello, since yesterday I cannot log in to my account. "
        "Can you help? Thanks, Anna\n",
        "VPN drops": "The VPN disconnects every ten minutes.\n",
        "Invoice question": "Our invoice 4711 shows the wrong amount, please check.\n",
        # A link to a third party's site: the seed's ham (ticket texts) has none, so
        # this may be flagged (a ticket, no acknowledgement), but never held.
        "Download link broken": "The download link https://downloads.vendor.example/setup.exe "
        "in your last mail gives 404.\n",
    }
    model, scores = seed_scores_through_our_listener(sender, helo, peer_ip, requests)
    for subject, probability in scores.items():
        plain = subject not in {"Invoice question", "Download link broken"}
        limit = model.thresholds.unsure_at if plain else model.thresholds.spam_at
        assert probability < limit, (subject, probability)


def test_the_seed_still_holds_or_flags_plain_modern_spam_sent_to_our_listener() -> None:
    """The other side of teaching the seed what requests look like (see the model card)."""
    spam = {
        "URGENT: Business proposal": (
            "Dear Sir/Madam,\n\nI am Mr. John Williams, a bank manager. I have a business "
            "proposal of $15,500,000 USD which I want to transfer to your account. Please reply "
            "with your full name, address and phone number. This transaction is 100% risk free.\n"
        ),
        "Investment opportunity: 300% returns": (
            "Dear Friend,\n\nMake money fast with our bitcoin trading platform. Our clients earn "
            "300% returns every month. Limited offer! Invest just $250 today and start earning. "
            "Click here: http://crypto-profit.example.biz\n\nDon't miss out!\n"
        ),
        "Your account has been suspended": (
            "Dear Customer,\n\nWe detected unusual activity on your account. Your account has "
            "been suspended. To restore access, click the link below and verify your information "
            "within 24 hours:\n\nhttp://secure-verify-account.example.top/login\n\n"
            "Failure to verify will result in permanent closure.\n\nSecurity Team\n"
        ),
    }
    model, scores = seed_scores_through_our_listener(
        "noreply@notify-mail.example.top", "mail.bulk.test", "203.0.113.77", spam
    )
    assert scores["URGENT: Business proposal"] >= model.thresholds.spam_at, scores
    assert scores["Investment opportunity: 300% returns"] >= model.thresholds.spam_at, scores
    assert scores["Your account has been suspended"] >= model.thresholds.unsure_at, scores


def seed_scores_through_our_listener(
    sender: str, helo: str, peer_ip: str, mails: dict[str, str], relays: bytes = b""
) -> tuple[SpamFilter, dict[str, float]]:
    """The seed's probability for each ``subject: body`` mail, as our listener receives it."""
    from datetime import UTC, datetime

    from maildesk.intake.smtp import trace_header
    from maildesk.pipeline.parse import parse_message
    from maildesk.spam.scoring import SEED_MODEL
    from tests.mailfactory import make_mail

    model = SpamFilter.load(SEED_MODEL)
    ours = trace_header(helo, peer_ip, "smtp", datetime.now(UTC)).encode()
    domain = sender.rpartition("@")[2]
    scores = {}
    for n, (subject, body) in enumerate(mails.items()):
        raw = make_mail(sender=sender, message_id=f"{n}.mail@{domain}", subject=subject, body=body)
        scores[subject] = model.score(parse_message(ours + relays + raw)).probability
    return model, scores


def test_a_model_that_learned_chinese_spam_knows_new_chinese_spam_of_its_kind() -> None:
    """New Chinese mail shares no phrase with what was learned, only words (here
    written as character pairs): the model must still tell the kinds apart."""
    spam = [
        "免费国际长途电话，无限次任打，立即注册",
        "优惠促销，免费注册会员，赢取大奖",
        "低价推广服务，群发邮件，免费试用",
    ]
    ham = [
        "你好，办公室的打印机坏了，显示错误代码",
        "请帮我重置密码，我无法登录系统",
        "发票金额有误，请核对一下",
    ]
    model = SpamFilter()
    for _ in range(2):
        for s, h in zip(spam, ham, strict=True):
            model.learn(message("", s, "sales@example.cn"), True)
            model.learn(message("", h, "sales@example.cn"), False)
    new_spam = model.margin(message("", "免费注册，无限次国际长途电话优惠", "sales@example.cn"))
    new_ham = model.margin(message("", "打印机无法登录系统，请帮我看一下错误", "sales@example.cn"))
    assert new_spam > 0 > new_ham
