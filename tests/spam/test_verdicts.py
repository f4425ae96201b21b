"""Our own MTA's verdict headers as features: the installation says which to trust."""

from __future__ import annotations

from pathlib import Path

from maildesk.config import Settings
from maildesk.pipeline.parse import parse_message
from maildesk.spam.model import SpamFilter
from maildesk.spam.scoring import ScorerSpec
from tests.mailfactory import make_mail

TEXTS = [
    "Please see the attached document and reply today.",
    "Following up on our call, details below.",
    "Your request has been received and will be processed.",
    "Here is the information you asked for last week.",
]


def mail(n: int, flag: str | None) -> bytes:
    headers = {"X-Spam-Flag": flag} if flag else None
    return make_mail(
        sender=f"sender{n}@example.org",
        subject=f"Update {n}",
        body=TEXTS[n % len(TEXTS)] + "\n",
        message_id=f"v{n}@example.org",
        headers=headers,
    )


def test_a_live_model_reads_the_verdicts_the_installation_trusts_not_what_its_file_says(
    tmp_path: Path,
) -> None:
    # Learned where X-Spam-Flag was trusted: the same texts, spam flagged YES, ham NO.
    trained = SpamFilter()
    trained.read_verdicts(("X-Spam-Flag",), ())
    for n in range(40):
        trained.learn(parse_message(mail(n, "YES")), True)
        trained.learn(parse_message(mail(n + 1000, "NO")), False)
    live = tmp_path / "spam-model.npz"
    trained.save(live)

    flagged, clean = parse_message(mail(7777, "YES")), parse_message(mail(7777, "NO"))

    def margins(settings: Settings) -> tuple[float, float]:
        spec = ScorerSpec.from_settings(settings)
        assert spec is not None
        model, note = spec.load()
        assert "loaded" in note
        return model.margin(flagged), model.margin(clean)

    base = {"data_dir": tmp_path, "spam": {"model_path": str(live)}}
    trusting = Settings.model_validate(
        {**base, "spam": {**base["spam"], "trusted_verdict_headers": ["X-Spam-Flag"]}}
    )
    yes, no = margins(trusting)
    assert yes > 0 > no  # the verdict decides between otherwise alike mails
    # This installation trusts no such header: the file's setting does not count.
    yes, no = margins(Settings.model_validate(base))
    assert yes == no
