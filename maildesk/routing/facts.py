"""Build the :class:`Facts` rules test from a parsed message and its context."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from maildesk.config import Settings
from maildesk.domain.address import base_address
from maildesk.domain.authresults import failed_dmarc
from maildesk.domain.message import ParsedMessage
from maildesk.people import Directory
from maildesk.routing.match import Facts
from maildesk.sla.calendar import BusinessCalendar, CalendarConfig, WeeklyHours

# Used for `business_hours` when [routing].business_calendar names no calendar.
DEFAULT_HOURS = WeeklyHours.model_validate(
    {day: "09:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}
)


def business_calendar(settings: Settings) -> BusinessCalendar:
    name = settings.routing.business_calendar
    if name is not None and name in settings.calendars:
        return BusinessCalendar(settings.calendars[name])
    return BusinessCalendar(CalendarConfig(timezone="UTC", hours=DEFAULT_HOURS))


def queue_for(settings: Settings, recipients: tuple[str, ...]) -> str | None:
    """The queue of the first support address (with a queue default) the mail was sent to."""
    found = settings.first_address_default(recipients, "queue")
    return found[1] if found else None


def build_facts(
    msg: ParsedMessage,
    *,
    envelope_to: tuple[str, ...],
    settings: Settings,
    directory: Directory,
    calendar: BusinessCalendar,
    at: datetime,
    spam: Any = None,
    follow_up: bool = False,
) -> Facts:
    recipients = tuple(
        dict.fromkeys(
            base_address(a) for a in (*envelope_to, *(x.addr for x in (*msg.to, *msg.cc))) if a
        )
    )
    sender = (msg.from_.addr if msg.from_ else "").lower()
    trusted = settings.agent_mail.trusted_authserv_ids
    forged = failed_dmarc(msg.header_all("Authentication-Results"), trusted) if trusted else None
    org = directory.organisation_for(sender) if sender and forged is None else None
    band = getattr(getattr(spam, "band", None), "value", None) or "unknown"
    text = msg.text or ""
    return Facts(
        recipients=recipients,
        queue=queue_for(settings, recipients),
        sender=sender,
        sender_forged=forged,
        organisation=org.name if org else None,
        tier=org.tier if org else None,
        subject=msg.subject or "",
        body=text,
        headers=tuple((name.lower(), value) for name, value in msg.headers),
        attachments=tuple((a.filename, a.content_type) for a in msg.attachments),
        spam_band=band,
        business_hours=calendar.is_open(at),
        follow_up=follow_up,
    )
