"""The spam stage: what the filter's score means for a message.

The score itself is computed beside parsing (:func:`score_message`, in the
parse child for a bulk import). The decision runs after threading, because
what it exempts depends on it: a message that joins an existing ticket (it
names one of our Message-IDs, a signed address, or comes from a participant)
is part of a conversation and is never filtered; nor is a new mail from a
customer an agent has answered before, or an agent's authenticated mail.
For mail that would start a new ticket: spam is quarantined (no ticket, so
no acknowledgement and no notification of any kind), unsure becomes a ticket
flagged "possible spam" that is not acknowledged, ham goes on. Every
decision is an event.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.db.queries import answered_customer
from maildesk.domain.address import base_address
from maildesk.domain.message import ParsedMessage
from maildesk.pipeline.context import MessageContext, Stop, StopKind
from maildesk.spam.bands import Band
from maildesk.spam.scoring import ScorerSpec, scorer_for

if TYPE_CHECKING:
    from maildesk.pipeline.stages import StageDeps
    from maildesk.spam.scoring import SpamScore, SpamScorer

log = logging.getLogger("maildesk.spam")


def score_message(ctx: MessageContext, scorer: SpamScorer) -> None:
    """Score a parsed message; a scoring failure is noted, never fatal."""
    try:
        ctx.spam = scorer.score(ctx.message)
    except Exception as exc:  # a hostile message must not stop the pipeline
        log.warning("intake=%s spam scoring failed: %s", ctx.intake_id, exc)
        ctx.note("spam", f"not scored: {type(exc).__name__}: {exc}")


def _described(score: SpamScore) -> tuple[dict[str, object], str]:
    facts: dict[str, object] = {
        "probability": round(score.probability, 6),
        "band": str(score.band),
        "model": score.model.split(" ", 1)[0],
        "model_version": score.version,
    }
    return facts, f"p={score.probability:.3f} ({score.band}) by the {score.model} model"


def _quarantined_as_spam(
    ctx: MessageContext, facts: dict[str, object], summary: str, why: str = ""
) -> Stop:
    ctx.note("spam", f"{summary}: quarantined as spam, no mail of any kind{why}", **facts)
    return Stop(StopKind.QUARANTINE, f"spam: {summary}")


def spam_posing_as_an_agent(ctx: MessageContext, settings: Settings, why: str) -> Stop | None:
    """The quarantine of mail the filter calls spam that only looks like an agent's, or None.

    For the agent stage, before it holds a mail that is not proven an agent's (no
    reference signed for the agent, or one that does not verify) and warns the real
    agent, or asks them to confirm its commands: such a mail is a stranger's, and a
    stranger's spam makes no mail of any kind, nor a note on anyone's ticket.
    """
    score = ctx.spam
    if score is None or not settings.spam.enabled or ctx.forced or score.band is not Band.SPAM:
        return None
    sender = ctx.message.from_.addr if ctx.message.from_ else ""
    if exemption(settings, sender):
        return None
    facts, summary = _described(score)
    return _quarantined_as_spam(ctx, facts, summary, f" ({why})")


def objection_to_answering(session: Session, settings: Settings, msg: ParsedMessage) -> str | None:
    """Why the filter forbids mail to the sender of ``msg`` that answers no ticket, or None.

    For the IMAP over-size notice, scored on the header alone (the rest was never
    fetched): spam gets no mail of any kind, and unsure none until released, which
    mail that was never fetched never is. Exempt as in :func:`spam_stage`.
    """
    spec = ScorerSpec.from_settings(settings)
    if spec is None:
        return None
    try:
        score = scorer_for(spec).score(msg)
    except Exception as exc:  # as score_message: a hostile header must not stop the pass
        log.warning("spam scoring of a header failed: %s", exc)
        return None
    if score is None or score.band is Band.HAM:
        return None
    sender = msg.from_.addr if msg.from_ else ""
    if _exempt_sender(session, settings, sender, score.band):
        return None
    return f"the spam filter's verdict on its header, {_described(score)[1]}"


def _exempt_sender(session: Session, settings: Settings, sender: str, band: Band) -> str | None:
    """Why mail from ``sender`` is not filtered (allow-listed, or a customer an agent
    answered), or None."""
    exempt = exemption(settings, sender)
    if (
        exempt is None
        and sender
        and band is not Band.HAM  # a query per message only where it changes the outcome
        and (known := answered_customer(session, sender))
    ):
        exempt = f"{sender.lower()} is a customer we answered on ticket #{known}"
    return exempt


def spam_stage(ctx: MessageContext, _session: Session, deps: StageDeps) -> Stop | None:
    score = ctx.spam
    if score is None or not deps.settings.spam.enabled:
        return None
    facts, summary = _described(score)
    if ctx.forced:
        ctx.note("spam", f"{summary}; not filtered: released from quarantine by ops", **facts)
        return None
    thread = ctx.thread
    if thread is not None and thread.ticket_id is not None:
        ctx.note("spam", f"{summary}; not filtered: joins an existing ticket", **facts)
        return None
    sender = ctx.message.from_.addr if ctx.message.from_ else ""
    exempt = (
        f"authenticated mail from agent {ctx.authenticated_agent}"
        if ctx.authenticated_agent is not None
        else _exempt_sender(_session, deps.settings, sender, score.band)
    )
    if exempt:
        ctx.note("spam", f"{summary}; not filtered: {exempt}", **facts)
        return None
    if score.band is Band.SPAM:
        return _quarantined_as_spam(ctx, facts, summary)
    if score.band is Band.UNSURE:
        ctx.possible_spam = True
        ctx.note("spam", f"{summary}: possible spam, not acknowledged until released", **facts)
        return None
    ctx.note("spam", summary, **facts)
    return None


def exemption(settings: Settings, sender: str) -> str | None:
    """Why mail from ``sender`` is never filtered, or None.

    An agent's From address is not on this list: anyone can write it. Only
    the agent stage's authenticated sender (``ctx.authenticated_agent``) is.
    """
    address = sender.lower()
    if not address:
        return None
    own = base_address(address)
    if address in settings.spam.allow_addresses or own in settings.spam.allow_addresses:
        return f"{address} is on spam.allow_addresses"
    domain = address.rpartition("@")[2]
    for allowed in settings.spam.allow_domains:
        if domain == allowed or domain.endswith("." + allowed):
            return f"{domain} is on spam.allow_domains"
    return None
