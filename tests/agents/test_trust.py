"""Reading Authentication-Results: only our MTA's header counts, and only aligned passes."""

from __future__ import annotations

from maildesk.agents.trust import aligned, check_auth
from maildesk.config import AgentMailSettings
from maildesk.domain.authresults import trusted_results
from maildesk.domain.message import ParsedMessage


def _msg(*results: str) -> ParsedMessage:
    return ParsedMessage(
        message_id="x@y",
        in_reply_to=(),
        references=(),
        subject="",
        from_=None,
        to=(),
        cc=(),
        reply_to=(),
        date=None,
        text="",
        html=None,
        attachments=(),
        headers=tuple(("Authentication-Results", r) for r in results),
        content_type="text/plain",
    )


def test_only_the_topmost_trusted_header_counts() -> None:
    headers = [
        "mx.example.com; dkim=pass (good) header.d=agents.test; dmarc=fail header.from=agents.test",
        "mx.example.com; dmarc=pass header.from=agents.test",  # below ours: forged by the sender
    ]
    assert trusted_results(headers, ["mx.example.com"]) == [
        ("dkim", "pass", "agents.test"),
        ("dmarc", "fail", "agents.test"),
    ]
    assert trusted_results(headers, ["other.example"]) == []


def test_alignment() -> None:
    assert aligned("agents.test", "agents.test")
    assert aligned("mail.agents.test", "agents.test")
    assert not aligned("evilagents.test", "agents.test")
    assert not aligned("", "agents.test")


def test_requirements() -> None:
    settings = AgentMailSettings(require_dmarc=True, trusted_authserv_ids=("mx.example.com",))
    ok = check_auth(
        settings, _msg("mx.example.com; dmarc=pass header.from=agents.test"), "agents.test"
    )
    assert ok.ok and ok.passed == ("dmarc",)
    other = check_auth(
        settings, _msg("mx.example.com; dmarc=pass header.from=evil.test"), "agents.test"
    )
    assert not other.ok and "no aligned dmarc pass" in other.reason
    none = check_auth(settings, _msg(), "agents.test")
    assert not none.ok and "no Authentication-Results from a trusted host" in none.reason
    fallback = AgentMailSettings(require_dkim=True, dkim_verify_fallback=True)
    assert check_auth(fallback, _msg(), "agents.test", lambda: "agents.test").ok
    assert not check_auth(fallback, _msg(), "agents.test", lambda: None).ok
