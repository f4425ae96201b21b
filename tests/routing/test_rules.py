"""Routing rules: loading, precise validation errors, match semantics, real corpus mail."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from maildesk.config import Settings
from maildesk.people import Directory
from maildesk.pipeline.parse import parse_message
from maildesk.routing.facts import build_facts, business_calendar
from maildesk.routing.language import detect_language
from maildesk.routing.match import Facts, evaluate
from maildesk.routing.rules import KnownNames, RuleHolder, RulesError, load_rules, parse_rules

REPO = Path(__file__).resolve().parents[2]
MONDAY_10 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SATURDAY_22 = datetime(2026, 3, 7, 22, 0, tzinfo=UTC)


def rules_from(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.toml").write_text(text, encoding="utf-8")
    return folder


def facts_of(raw: bytes, settings: Settings | None = None, at: datetime = MONDAY_10) -> Facts:
    settings = settings or Settings.model_validate(
        {
            "support_addresses": ["support@example.com", "billing@example.com"],
            "address": [{"address": "billing@example.com", "queue": "billing"}],
            "organisations": [{"name": "ACME", "domains": ["acme.example"], "tier": "gold"}],
        }
    )
    msg = parse_message(raw, time_limit=10)
    return build_facts(
        msg,
        envelope_to=("support@example.com",),
        settings=settings,
        directory=Directory.from_settings(settings),
        calendar=business_calendar(settings),
        at=at,
    )


def mail(
    subject: str = "Hello",
    body: str = "Some text.\n",
    sender: str = "bob@customer.test",
    to: str = "support@example.com",
    extra: str = "",
) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <x@y>\r\n{extra}"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


# -- validation: errors name file, rule and key ------------------------------------


@pytest.mark.parametrize(
    ("text", "rule", "key", "reason"),
    [
        (
            '[[rule]]\nname = "a"\nwhen = { subjekt_regex = "x" }\n',
            "a",
            "when.subjekt_regex",
            "unknown condition",
        ),
        (
            '[[rule]]\nname = "b"\nwhen = { subject_regex = "(" }\n',
            "b",
            "when.subject_regex",
            "bad regular expression",
        ),
        (
            '[[rule]]\nname = "c"\nwhen = {}\nthen = { priority = "asap" }\n',
            "c",
            "then.priority",
            "must be one of",
        ),
        (
            '[[rule]]\nname = "d"\nwhen = {}\nthen = { agent = "zed" }\n',
            "d",
            "then.agent",
            "unknown name 'zed'",
        ),
        ('[[rule]]\nname = "e"\nwhen = { any = [] }\n', "e", "when.any", "non-empty array"),
        (
            '[[rule]]\nname = "f"\nwhen = { not = { language = "german" } }\n',
            "f",
            "when.not.language",
            "not a two-letter language code",
        ),
        ('[[rule]]\nname = "g"\nthen = { queue = "x" }\n', "g", "when", "missing"),
        ("[[rule]]\nwhen = {}\n", "#1", "name", "every rule needs a name"),
        (
            '[[rule]]\nname = "h"\nwhen = {}\nthen = { colour = "red" }\n',
            "h",
            "then.colour",
            "unknown action",
        ),
        (
            '[[rule]]\nname = "i"\nwhen = { spam_band = "maybe" }\n',
            "i",
            "when.spam_band",
            "is not one of",
        ),
        (
            '[[rule]]\nname = "j"\nwhen = { all = [{ has_attachment = "yes" }] }\n',
            "j",
            "when.all[0].has_attachment",
            "must be true or false",
        ),
        # A typo here made a VIP rule that never matched, silently.
        (
            '[[rule]]\nname = "k"\nwhen = { any = [{ organisation = "ACME Inc" }] }\n',
            "k",
            "when.any[0].organisation",
            "unknown organisation 'ACME Inc' (known: ACME)",
        ),
        ('[[rule]]\nname = "l"\nwhen = { tier = "Gold" }\n', "l", "when.tier", "unknown tier"),
    ],
)
def test_broken_rule_is_rejected_naming_file_rule_and_key(
    text: str, rule: str, key: str, reason: str
) -> None:
    known = KnownNames(
        agents=frozenset({"alice"}), organisations=frozenset({"ACME"}), tiers=frozenset({"gold"})
    )
    with pytest.raises(RulesError) as error:
        parse_rules(text, "rules/10-x.toml", known)
    assert (error.value.file, error.value.rule, error.value.key) == ("rules/10-x.toml", rule, key)
    assert reason in error.value.reason
    assert str(error.value).startswith(f"rules/10-x.toml: rule {rule!r}: {key}: ")


def test_bad_toml_and_duplicate_names_across_files(tmp_path: Path) -> None:
    folder = rules_from(tmp_path, a='[[rule]]\nname = "x"\nwhen = {}\n', b="[[rule]\n")
    with pytest.raises(RulesError) as error:
        load_rules(folder)
    assert error.value.file.endswith("b.toml") and "not valid TOML" in str(error.value)
    (folder / "b.toml").write_text('[[rule]]\nname = "x"\nwhen = {}\n')
    with pytest.raises(RulesError, match=r"b\.toml: rule 'x': name: rule name already used in"):
        load_rules(folder)


def test_shipped_examples_are_valid_and_not_active(tmp_path: Path) -> None:
    rule_set = load_rules(REPO / "rules" / "examples")
    assert len(rule_set.rules) >= 8
    assert load_rules(REPO / "rules").rules == ()  # examples/ is not read


def test_reload_keeps_the_last_good_rules(tmp_path: Path) -> None:
    folder = rules_from(tmp_path, a='[[rule]]\nname = "one"\nwhen = {}\nthen = {queue = "q"}\n')
    holder = RuleHolder(folder)
    assert holder.reload() is None and [r.name for r in holder.current.rules] == ["one"]
    (folder / "b.toml").write_text('[[rule]]\nname = "two"\nwhen = { from = [] }\n')
    error = holder.reload()
    assert error is not None and error.key == "when.from" and error.rule == "two"
    assert [r.name for r in holder.current.rules] == ["one"]
    (folder / "b.toml").write_text('[[rule]]\nname = "two"\nwhen = { from = "*@x" }\n')
    assert holder.reload() is None and [r.name for r in holder.current.rules] == ["one", "two"]


# -- semantics ---------------------------------------------------------------------


def test_files_in_name_order_later_rules_override_tags_accumulate(tmp_path: Path) -> None:
    folder = rules_from(
        tmp_path,
        **{
            "20-late": '[[rule]]\nname = "late"\nwhen = {}\nthen = { queue = "late", tags = ["b"] }\n',
            "10-early": '[[rule]]\nname = "early"\nwhen = {}\n'
            'then = { queue = "early", priority = "high", tags = ["a"] }\n',
        },
    )
    result = evaluate(load_rules(folder), facts_of(mail()))
    assert [m.rule.name for m in result.matched] == ["early", "late"]
    assert result.fields == {"queue": "late", "priority": "high"}
    assert result.set_by == {"queue": "late", "priority": "early"}
    assert result.tags == ["a", "b"]


def test_first_match_file_and_stop(tmp_path: Path) -> None:
    folder = rules_from(
        tmp_path,
        a='match = "first"\n[[rule]]\nname = "a1"\nwhen = {}\nthen = { tags = ["1"] }\n'
        '[[rule]]\nname = "a2"\nwhen = {}\nthen = { tags = ["2"] }\n',
        b='[[rule]]\nname = "b1"\nwhen = {}\nthen = { tags = ["3"] }\nstop = true\n'
        '[[rule]]\nname = "b2"\nwhen = {}\nthen = { tags = ["4"] }\n',
        c='[[rule]]\nname = "c1"\nwhen = {}\nthen = { tags = ["5"] }\n',
    )
    result = evaluate(load_rules(folder), facts_of(mail()))
    assert [m.rule.name for m in result.matched] == ["a1", "b1"]
    assert result.tags == ["1", "3"] and result.stopped_by == "b1"


def test_follow_ups_only_for_rules_that_ask(tmp_path: Path) -> None:
    folder = rules_from(
        tmp_path,
        a='[[rule]]\nname = "new-only"\nwhen = {}\nthen = { tags = ["n"] }\n'
        '[[rule]]\nname = "also-replies"\nwhen = {}\nfollow_ups = true\nthen = { tags = ["r"] }\n',
    )
    from dataclasses import replace

    facts = replace(facts_of(mail()), follow_up=True)
    assert [m.rule.name for m in evaluate(load_rules(folder), facts).matched] == ["also-replies"]


def test_queue_condition_sees_queue_set_by_earlier_rule(tmp_path: Path) -> None:
    folder = rules_from(
        tmp_path,
        a='[[rule]]\nname = "to-billing"\nwhen = { subject_keywords = "invoice" }\n'
        'then = { queue = "billing" }\n'
        '[[rule]]\nname = "billing-group"\nwhen = { queue = "billing" }\nthen = { group = "L1" }\n',
    )
    result = evaluate(load_rules(folder), facts_of(mail(subject="My invoice")))
    assert result.fields == {"queue": "billing", "group": "L1"}
    assert evaluate(load_rules(folder), facts_of(mail(subject="invoices"))).fields == {}


def test_conditions_and_their_evidence(tmp_path: Path) -> None:
    folder = rules_from(
        tmp_path,
        a="""
[[rule]]
name = "gold-outage-after-hours"
when = { all = [
  { tier = "gold" },
  { organisation = "ACME" },
  { from_domain = "acme.example" },
  { from = "*@eu.acme.example" },
  { business_hours = false },
  { any = [ { subject_regex = '\\bdown\\b' }, { body_keywords = "outage" } ] },
  { not = { has_attachment = true } },
  { subject_token = 'SUP-[A-Z0-9]{6}' },
  { header = { name = "X-Priority", regex = "^1" } },
  { to = "support@example.com" },
] }
then = { priority = "urgent" }
""",
    )
    raw = mail(
        subject="Portal down SUP-7Q2K9X",
        sender="ops@eu.acme.example",
        extra="X-Priority: 1 (Highest)\r\n",
    )
    result = evaluate(load_rules(folder), facts_of(raw, at=SATURDAY_22))
    (matched,) = result.matched
    assert "customer tier is gold" in matched.reasons
    assert "outside business hours" in matched.reasons
    assert "subject carries token 'SUP-7Q2K9X'" in matched.reasons
    assert any(r.startswith("subject matches /\\bdown\\b/") for r in matched.reasons)
    assert "sent to support@example.com" in matched.reasons
    # The same mail on Monday morning is inside business hours: no match.
    assert evaluate(load_rules(folder), facts_of(raw, at=MONDAY_10)).matched == []


def test_spam_band_is_unknown_without_a_score(tmp_path: Path) -> None:
    folder = rules_from(
        tmp_path, a='[[rule]]\nname = "u"\nwhen = { spam_band = "unknown" }\nthen = {tags=["u"]}\n'
    )
    assert evaluate(load_rules(folder), facts_of(mail())).tags == ["u"]


def test_address_default_queue_and_plus_tags(tmp_path: Path) -> None:
    facts = facts_of(mail(to="Billing <billing+abc@example.com>"))
    assert facts.queue == "billing" and "billing@example.com" in facts.recipients


def test_language_detector() -> None:
    assert detect_language("Hallo, ich habe die Rechnung nicht bekommen, bitte danke") == "de"
    assert detect_language("Hello, I have not received the invoice, please help") == "en"
    assert detect_language("Bonjour, je n'ai pas reçu la facture pour le mois, merci") == "fr"
    assert detect_language("404") is None


# -- real corpus messages ----------------------------------------------------------

CORPUS_RULES = """
[[rule]]
name = "pdf-documents"
when = { attachment_type = ["application/pdf"] }
then = { tags = ["document"] }

[[rule]]
name = "german"
when = { language = "de" }
then = { queue = "dach", tags = ["de"] }

[[rule]]
name = "mailing-lists"
when = { header = { name = "List-Id", regex = "exmh-workers" } }
then = { ack = false, priority = "low" }

[[rule]]
name = "attachment-no-text"
when = { all = [ { has_attachment = true }, { not = { body_regex = '\\w' } } ] }
then = { tags = ["attachment-only"] }

[[rule]]
name = "from-czech-helpdesk"
when = { from_domain = "auto-mat.cz" }
then = { group = "L1" }
"""


@pytest.mark.parametrize(
    ("path", "matched", "fields", "tags"),
    [
        (
            "fixtures/mailgun-flanker/tests/fixtures/messages/attached-pdf.eml",
            ["pdf-documents"],
            {},
            ["document"],
        ),
        (
            "fixtures/james-mime4j/core/src/test/resources/mimetools-testmsgs/german-qp.msg",
            ["german"],
            {"queue": "dach"},
            ["de"],
        ),
        (
            "spamassassin/easy-ham-1/00001.7c53336b37003a9286aba55d2945844c.txt",
            ["mailing-lists"],
            {"priority": "low"},
            [],
        ),
        (
            "fixtures/django-helpdesk/tests/test_files/blank-body-with-attachment.eml",
            ["attachment-no-text", "from-czech-helpdesk"],
            {"group": "L1"},
            ["attachment-only"],
        ),
    ],
)
def test_rules_on_real_corpus_messages(
    corpus: Path,
    tmp_path: Path,
    path: str,
    matched: list[str],
    fields: dict[str, str],
    tags: list[str],
) -> None:
    folder = rules_from(tmp_path, corpus=CORPUS_RULES)
    result = evaluate(load_rules(folder), facts_of((corpus / path).read_bytes()))
    assert [m.rule.name for m in result.matched] == matched
    assert result.fields == fields
    assert result.tags == tags
    if path.endswith("00001.7c53336b37003a9286aba55d2945844c.txt"):
        assert result.ack_suppressed_by == "mailing-lists"


# -- names checked against the configuration, also when it configures none ---------


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('then = { agent = "bob" }', "then.agent", "unknown name 'bob' (no agents configured)"),
        (
            'then = { watchers = ["bob"] }',
            "then.watchers",
            "unknown name 'bob' (no agents configured)",
        ),
        ('then = { group = "Nope" }', "then.group", "unknown name 'Nope' (no groups configured)"),
        ('then = { escalate = "L2" }', "then.escalate", "unknown name 'L2' (no groups configured)"),
        (
            'then = { sla_policy = "gold" }',
            "then.sla_policy",
            "unknown name 'gold' (no SLA policies configured)",
        ),
        (
            'then = { ack_template = "ack_vip" }',
            "then.ack_template",
            "unknown name 'ack_vip' (known: ack, ",
        ),
    ],
)
def test_names_a_config_without_any_are_unknown_not_unchecked(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    """An empty [[agents]] list used to mean "not checked": a rule gave tickets to "bob"."""
    from maildesk.routing.router import known_names

    settings = Settings.model_validate({"support_addresses": ["support@example.com"]})
    known = known_names(settings, REPO / "templates")
    with pytest.raises(RulesError) as error:
        parse_rules(f'[[rule]]\nname = "r"\nwhen = {{}}\n{text}\n', "rules/10-x.toml", known)
    assert (error.value.key, error.value.rule) == (key, "r")
    assert reason in error.value.reason
    with pytest.raises(
        RulesError, match=r"unknown organisation 'ACME' \(no organisations configured\)"
    ):
        parse_rules('[[rule]]\nname = "o"\nwhen = { organisation = "ACME" }\n', "x", known)
    assert parse_rules(f'[[rule]]\nname = "r"\nwhen = {{}}\n{text}\n', "x").rules, (
        "without a configuration (KnownNames()) names are not checked"
    )


def test_a_first_load_that_fails_keeps_no_last_good_rules_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing was loaded before: "keeping the last good rules" was untrue."""
    from maildesk.config import ConfigError
    from maildesk.routing.router import Router

    folder = rules_from(tmp_path, a="[[rule]\n")
    settings = Settings.model_validate(
        {"support_addresses": ["support@example.com"], "routing": {"rules_dir": folder}}
    )
    router = Router(settings, lambda: Directory.from_settings(settings))
    with caplog.at_level("INFO", logger="maildesk.routing"):
        error = router.reload()
    assert isinstance(error, ConfigError), "a CLI command that routes exits 78 with it"
    assert not router.holder.loaded and router.rules.rules == ()
    assert "keeping the last good rules" not in caplog.text
    (folder / "a.toml").write_text('[[rule]]\nname = "one"\nwhen = {}\n')
    assert router.reload() is None and router.holder.loaded
    (folder / "a.toml").write_text("[[rule]\n")
    with caplog.at_level("INFO", logger="maildesk.routing"):
        assert router.reload() is not None
    assert "keeping the last good rules" in caplog.text
    assert [r.name for r in router.rules.rules] == ["one"]
