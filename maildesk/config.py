"""Configuration: one TOML file -> one frozen, validated settings object.

Where the file comes from: ``--config``, else ``$MAILDESK_CONFIG``, else
``./maildesk.toml``; with no file at all the built-in defaults apply.
Unknown keys, wrong types and bad values raise :class:`ConfigError`, which
names the file and the dotted key; the CLI turns it into exit code 78.
Secrets may be given inline, as ``<name>_file`` (a path) or ``<name>_env``
(an environment variable name).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import secrets
import socket
import ssl
import stat
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from maildesk.domain.address import base_address
from maildesk.sla.calendar import CalendarConfig, WeeklyHours
from maildesk.sla.settings import SlaSettings, check_sla_references

EX_CONFIG = 78
DEFAULT_CONFIG_NAME = "maildesk.toml"


class ConfigError(Exception):
    """A configuration problem, reported as ``file: key: reason``."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")


# The longest time a setting may name: ten years. Beyond it, date arithmetic leaves
# datetime's range (a window of 1e300 days quarantined every mail with OverflowError).
MAX_DURATION_SECONDS = 10 * 365 * 86400
_UNIT_SECONDS = {"_seconds": 1, "_minutes": 60, "_hours": 3600, "_days": 86400}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*")
    @classmethod
    def _duration_in_range(cls, value: object, info: ValidationInfo) -> object:
        """Every ``*_seconds``/``_minutes``/``_hours``/``_days`` setting: ten years at most."""
        name = info.field_name or ""
        unit = next((s for suffix, s in _UNIT_SECONDS.items() if name.endswith(suffix)), None)
        if (
            unit is not None
            and isinstance(value, int | float)
            and value * unit > MAX_DURATION_SECONDS
        ):
            raise ValueError(f"at most {MAX_DURATION_SECONDS / unit:g} (ten years), not {value:g}")
        return value


class ThreadingSettings(_Section):
    ticket_tag: str = Field(default="Support", min_length=1, max_length=40, pattern=r"^[\w.\-]+$")
    subject_window_days: float = Field(default=14, ge=0)
    reopen_window_days: float = Field(default=14, ge=0)
    # Status given to a ticket created for auto-generated mail (bounce,
    # out-of-office) that matched no conversation: filed, never answered.
    unmatched_auto_status: str = Field(default="closed", pattern=r"^(new|open|closed)$")
    link_strangers: bool = True


class PipelineSettings(_Section):
    parse_time_limit_seconds: float = Field(default=10.0, gt=0, le=600)
    max_message_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    claim_timeout_seconds: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_delay_seconds: float = Field(default=2.0, ge=0)
    # Bulk imports parse the next batch in a second process while applying this one.
    parse_in_child: bool = True


class ListenerSettings(_Section):
    """One SMTP or LMTP listener: a TCP host/port or a unix socket."""

    protocol: str = Field(default="smtp", pattern=r"^(smtp|lmtp)$")
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    socket: Path | None = None
    max_message_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_connections: int = Field(default=100, ge=1)  # beyond: 421, the sender retries
    max_connections_per_client: int = Field(default=50, ge=1)  # per IP address; likewise
    # Postfix's smtpd_junk_command_limit and smtpd_hard_error_limit: NOOP, RSET,
    # VRFY, EXPN, HELP, HELO/EHLO/LHLO (junk) and error replies a session may
    # have before it gets 421 and is closed; a stored mail starts both counts again.
    max_junk_commands: int = Field(default=100, ge=1)
    max_errors: int = Field(default=20, ge=1)
    # Longest silence from a client; stress_timeout_seconds instead while more
    # than 3/4 of max_connections are taken (Postfix's ${stress?10}{300}), if shorter.
    timeout_seconds: float = Field(default=300, gt=0)
    stress_timeout_seconds: float = Field(default=10, gt=0)
    # A slow client cannot hold a slot (see intake.smtp.SessionClock): a command line
    # must arrive whole within that timeout (Exim's smtp_receive_timeout); DATA
    # starts with the timeout's worth of credit, each byte received earns
    # 1/min_data_rate s more, never above the timeout (Postfix's smtpd_min_data_rate
    # with smtpd_per_request_deadline); and no session lasts over max_session_seconds.
    # 7200 s fit a mail of the default max_message_bytes (50 MiB) at 7.3 KB/s (58 kbit/s).
    min_data_rate: int = Field(default=500, gt=0)  # bytes per second
    max_session_seconds: float = Field(default=7200, gt=0)
    tls_cert: Path | None = None  # enables STARTTLS (SMTP only)
    tls_key: Path | None = None
    require_auth: bool = False
    auth_users_file: Path | None = None  # lines "user:password"

    @model_validator(mode="after")
    def _auth_has_users(self) -> ListenerSettings:
        if self.require_auth and self.auth_users_file is None:
            # Without it the listener had no one to check, and let everyone in.
            raise ValueError("auth_users_file: require_auth = true needs the file of users")
        if (self.tls_cert is None) != (self.tls_key is None):
            # One without the other used to start the listener without STARTTLS, silently.
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ValueError(f"{missing}: STARTTLS needs both tls_cert and tls_key")
        if self.tls_cert is not None and self.protocol != "smtp":
            raise ValueError("tls_cert: STARTTLS is offered by smtp listeners only")
        if self.require_auth and self.tls_cert is None and not self._loopback_only():
            raise ValueError(
                f"tls_cert: require_auth on {self.host} without STARTTLS would take "
                "passwords in clear over the network (set tls_cert and tls_key, or listen "
                "on 127.0.0.1 or a socket)"
            )
        return self

    def _loopback_only(self) -> bool:
        """Only this machine can connect (a unix socket, or a loopback address)."""
        return self.socket is not None or is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address: traffic to it never leaves this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


# Signed by default (RFC 6376 5.4): the headers a reader sees and threads by.
DKIM_HEADERS = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
)
# Headers dkimpy refuses to sign (RFC 6376 5.4.1: changed in transit) and signatures.
_DKIM_UNSIGNABLE = frozenset({"return-path", "received", "comments", "keywords", "dkim-signature"})
_HOST_NAME = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$"


class DkimKeySettings(_Section):
    """One DKIM key ([[outbound.dkim]]): signs mail whose From is at ``domain`` or below it."""

    # d=: a support address's domain or a parent of it; IDNs as A-labels (xn--).
    domain: str = Field(max_length=253, pattern=_HOST_NAME)
    selector: str = Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*$")
    private_key_file: Path
    algorithm: Literal["rsa", "ed25519"] = "rsa"
    headers: tuple[str, ...] = DKIM_HEADERS
    # Signed once more than they occur, so a second one cannot be added (RFC 6376 8.15).
    oversign: tuple[str, ...] = ("From",)

    @field_validator("domain", mode="before")
    @classmethod
    def _lower_domain(cls, value: object) -> object:
        return value.strip().lower().rstrip(".") if isinstance(value, str) else value

    @field_validator("headers", "oversign")
    @classmethod
    def _header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9-]+", name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in _DKIM_UNSIGNABLE:
                raise ValueError(f"{name} must not be signed (RFC 6376 5.4.1)")
        return value

    @model_validator(mode="after")
    def _signs_from(self) -> DkimKeySettings:
        if "from" not in {name.lower() for name in self.headers}:
            raise ValueError("headers: From must be signed (RFC 6376 5.4)")
        return self


class OutboundSettings(_Section):
    """Where outbound mail goes: a local Maildir (default) or an SMTP relay."""

    transport: str = Field(default="maildir", pattern=r"^(maildir|smtp)$")
    maildir: Path | None = None  # default: <data_dir>/outbox-maildir
    relay_host: str = "127.0.0.1"
    relay_port: int = Field(default=25, ge=1, le=65535)
    relay_security: str = Field(default="none", pattern=r"^(none|starttls|tls)$")
    relay_user: str = ""
    relay_password: str = ""
    relay_password_file: Path | None = None
    relay_password_env: str | None = None
    relay_timeout_seconds: float = Field(default=30, gt=0)
    # Plus a second per 16 KB of the mail (sender.RELAY_MIN_BYTES_PER_SECOND).
    relay_deadline_seconds: float = Field(default=300, gt=0)
    from_name: str = "Support"
    drain_interval_seconds: float = Field(default=2.0, gt=0)
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    give_up_after_hours: float = Field(default=120.0, gt=0)
    suppression_days: float = Field(default=30.0, gt=0)
    # DKIM keys ([[outbound.dkim]]), one per signing domain and algorithm; none: unsigned.
    dkim: tuple[DkimKeySettings, ...] = ()

    @model_validator(mode="after")
    def _no_password_in_clear(self) -> OutboundSettings:
        # As for a listener's require_auth: a login to a relay elsewhere, without
        # TLS, sends the relay password over the network as readable text.
        if (
            self.transport == "smtp"
            and self.relay_user
            and self.relay_security == "none"
            and not is_loopback_host(self.relay_host)
        ):
            raise ValueError(
                f"relay_security: logging in to {self.relay_host} as {self.relay_user!r} "
                "without TLS would send the relay password in clear over the network "
                '(set relay_security = "starttls" or "tls")'
            )
        return self


class AcknowledgementSettings(_Section):
    enabled: bool = True
    # Mail older than this when processed (an import of old mail) is not acknowledged.
    max_age_hours: float = Field(default=24.0, gt=0)
    per_sender_per_hour: int = Field(default=5, ge=0)
    per_sender_per_day: int = Field(default=20, ge=0)
    # No acknowledgement (a ticket all the same) when our own MTA's
    # Authentication-Results (agent_mail.trusted_authserv_ids) say dmarc=fail:
    # the From is likely forged, and the mail would go to the forged address.
    skip_dmarc_fail: bool = True
    # Whether the acknowledgement quotes the customer's message. "verified": only
    # when our MTA found dmarc=pass for the From (agent_mail.trusted_authserv_ids)
    # or an agent has answered this sender before. Anyone can write any From, and
    # a quote would carry a stranger's text to that address from our domain.
    quote_message: Literal["always", "verified", "never"] = "verified"


class SpamSettings(_Section):
    """The learning spam filter (a pipeline stage for mail that starts a new ticket)."""

    enabled: bool = True
    model_path: Path | None = None  # the live model; default <data_dir>/spam-model.npz
    seed_path: Path | None = None  # default: the seed shipped in spam_model/
    unsure_at: float | None = Field(default=None, ge=0, le=1)  # default: the model's own
    spam_at: float | None = Field(default=None, ge=0, le=1)
    allow_addresses: tuple[str, ...] = ()  # never filtered
    allow_domains: tuple[str, ...] = ()  # never filtered (subdomains too)
    # Feedback is learned (and the live model saved) this often, and on shutdown.
    learn_interval_seconds: float = Field(default=60.0, gt=0)
    retention_days: float = Field(default=30.0, ge=0)  # spam quarantine expiry; 0: keep
    digest_to: str | None = None  # daily list of quarantined spam to this address
    digest_at: str = Field(default="07:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    digest_timezone: str = "UTC"
    # Our own MTA's verdicts read as features, e.g. ["X-Spam-Flag", "Authentication-Results"]:
    # the topmost copy of each; Authentication-Results only by agent_mail.trusted_authserv_ids.
    trusted_verdict_headers: tuple[str, ...] = ()

    @field_validator("trusted_verdict_headers")
    @classmethod
    def _header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9-]+", name):
                raise ValueError(f"{name!r} is not a header name")
        return value

    @field_validator("digest_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value

    @field_validator("digest_to")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value.count("@") != 1 or any(ch in value for ch in ' \t\r\n<>,;"'):
            raise ValueError(f"{value!r} is not a plain mail address")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> SpamSettings:
        unsure, spam = self.unsure_at, self.spam_at
        if unsure is not None and spam is not None and unsure > spam:
            raise ValueError("unsure_at must not be above spam_at")
        return self

    @field_validator("allow_addresses", "allow_domains")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.strip().lower().lstrip("@.") for v in value)


def _imap_folder(name: str) -> str:
    """A folder name as IMAP compares it: INBOX in any case is INBOX (RFC 3501 5.1)."""
    return "INBOX" if name.upper() == "INBOX" else name


class ImapSecurity(enum.StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"  # implicit TLS (IMAPS)


class ImapPostAction(enum.StrEnum):
    """What happens to a message on the server once it is stored (never before)."""

    FLAG = "flag"  # set \Seen
    MOVE = "move"  # move to ``move_to``
    DELETE = "delete"  # \Deleted + UID EXPUNGE
    NONE = "none"


class OversizeNotice(enum.StrEnum):
    """Whom to tell when an IMAP message is over ``max_message_bytes`` (never to automated mail)."""

    NONE = "none"  # quarantine only
    SENDER = "sender"  # the From address, once, rate-limited like every notice


class ImapAuth(enum.StrEnum):
    PASSWORD = "password"
    OAUTH2 = "oauth2"  # access tokens from token_endpoint with a refresh token


class OAuth2Mechanism(enum.StrEnum):
    XOAUTH2 = "xoauth2"  # Gmail, Microsoft 365
    OAUTHBEARER = "oauthbearer"  # RFC 7628


class RetentionSettings(_Section):
    """How long tickets are kept once done with (``maildesk privacy purge`` does it daily)."""

    # Tickets closed (or resolved and left so) longer ago than this are deleted
    # with all their mail. 0: keep forever.
    closed_ticket_days: float = Field(default=0, ge=0)


class ImapMailboxSettings(_Section):
    """One IMAP mailbox maildesk reads; each folder gets its own poller."""

    name: str = Field(default="", max_length=100, pattern=r"^[^/\s]*$")  # default: user@host
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)  # default: 993 (tls), else 143
    security: ImapSecurity = ImapSecurity.TLS
    verify_tls: bool = True
    ca_file: Path | None = None  # CA bundle to verify the server with; default: the system's
    user: str = Field(min_length=1)
    password: str = ""
    password_file: Path | None = None
    password_env: str | None = None
    auth: ImapAuth = ImapAuth.PASSWORD
    oauth2_mechanism: OAuth2Mechanism = OAuth2Mechanism.XOAUTH2
    token_endpoint: str = Field(default="", pattern=r"^(https?://\S+)?$")
    client_id: str = ""
    client_secret: str = ""
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    client_secret_expires: date | None = None  # warned about oauth2_warn_days before
    refresh_token: str = ""
    refresh_token_file: Path | None = None
    scope: str = ""  # e.g. "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access"
    oauth2_warn_days: float = Field(default=14.0, gt=0)
    folders: tuple[str, ...] = Field(default=("INBOX",), min_length=1)
    post_action: ImapPostAction = ImapPostAction.FLAG
    move_to: str = ""
    junk_folder: str = ""  # messages agents move in (out) are spam (ham) feedback
    idle: bool = True
    poll_interval_seconds: float = Field(default=60.0, gt=0)
    max_message_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    oversize_notice: OversizeNotice = OversizeNotice.NONE
    lease_seconds: float = Field(default=60.0, ge=5)
    timeout_seconds: float = Field(default=60.0, gt=0)
    command_deadline_seconds: float = Field(default=300.0, gt=0)
    # A post-action refused for a reason that may pass (NO [OVERQUOTA], say) is
    # tried again after this wait, doubling up to an hour, for this long at most.
    post_action_retry_seconds: float = Field(default=60.0, gt=0)
    post_action_retry_for_seconds: float = Field(default=86400.0, gt=0)

    @model_validator(mode="after")
    def _move_needs_target(self) -> ImapMailboxSettings:
        if self.post_action is ImapPostAction.MOVE and not self.move_to:
            raise ValueError("post_action = 'move' needs move_to")
        read = {_imap_folder(name) for name in self.folders}
        if self.move_to and _imap_folder(self.move_to) in read:
            raise ValueError("move_to must not be one of the folders read")
        if self.junk_folder and _imap_folder(self.junk_folder) in {
            *read,
            _imap_folder(self.move_to),
        }:
            raise ValueError("junk_folder must not be one of the folders read nor move_to")
        if self.auth is ImapAuth.OAUTH2 and not (self.token_endpoint and self.client_id):
            raise ValueError("auth = 'oauth2' needs token_endpoint and client_id")
        if self.auth is ImapAuth.OAUTH2 and not (self.refresh_token or self.refresh_token_file):
            raise ValueError("auth = 'oauth2' needs refresh_token or refresh_token_file")
        loopback = ("http://127.0.0.1:", "http://127.0.0.1/", "http://localhost:", "http://[::1]:")
        if self.token_endpoint.startswith("http://") and not self.token_endpoint.startswith(
            loopback
        ):
            raise ValueError("token_endpoint must use https:// (http only on loopback)")
        return self

    @property
    def key(self) -> str:
        """The mailbox's name in the state table, source refs and logs."""
        return self.name or f"{self.user}@{self.host}"

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 993 if self.security is ImapSecurity.TLS else 143


class RoutingSettings(_Section):
    """The route stage (issue 7): rules folder, learned models, group and fallback choice."""

    enabled: bool = True
    rules_dir: Path | None = None  # default: ./rules
    business_calendar: str | None = None  # a [calendars.<name>]; default Mon-Fri 09-17 UTC
    category_model: Path | None = None  # default <data_dir>/category-model.npz (if present)
    queue_model: Path | None = None  # optional learned queue model; default: none
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    learn_corrections: bool = True  # agents' #category / queue moves train the models
    default_group: str | None = None  # group of a new ticket no rule gave one
    queue_groups: dict[str, str] = Field(default_factory=dict)  # queue -> group
    default_responsible: dict[str, str] = Field(default_factory=dict)  # queue -> agent
    # wall-clock bound on one message's rules (a backtracking regex on a hostile subject)
    rules_time_limit_seconds: float = Field(default=2.0, gt=0, le=60)
    # how often tickets nobody could take are offered again to the agents eligible now
    waiting_interval_seconds: float = Field(default=60.0, gt=0, le=86400)


class AddressSettings(_Section):
    """Defaults for tickets that arrive at one support address (its queue)."""

    address: str = Field(pattern=r"^[^@\s<>,]+@[^@\s<>,]+$")
    queue: str | None = None
    category: str | None = None
    from_name: str | None = None  # display name on mail sent for its tickets
    language: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[A-Za-z]{2})?$")


_NAME = r"^[A-Za-z0-9][\w.\-]*$"
_ADDRESS = r"^[^@\s<>,]+@[^@\s<>,]+$"


class NotificationPreferences(_Section):
    """Which notifications an agent receives by mail."""

    new_ticket: bool = True  # a new ticket assigned to them or their group
    customer_reply: bool = True  # a customer wrote on a ticket they own or watch
    assignment: bool = True  # a ticket was assigned to or taken from them


class AgentMailSettings(_Section):
    """How agents work by mail (issue 5): what proves a mail is an agent's, notes, ratings."""

    # Authentication-Results from our own receiving MTA that must show a pass
    # for the agent's domain; only headers whose authserv-id is listed count.
    require_dmarc: bool = False
    require_dkim: bool = False
    require_spf: bool = False
    trusted_authserv_ids: tuple[str, ...] = ()
    dkim_verify_fallback: bool = False  # verify DKIM in-process (dkimpy) when no trusted header
    internal_addresses: tuple[str, ...] = ()  # mail to these is an internal note
    reply_to_cc: bool = True  # customer-side Cc participants receive agent replies
    # Beyond this many Cc participants on a ticket, a customer's Cc is not added.
    max_cc_participants: int = Field(default=48, ge=0, le=1000)
    rating_scores: int = Field(default=5, ge=2, le=10)  # rating addresses 1..N in resolved mail
    confirm_hours: float = Field(default=72.0, gt=0)  # "reply to apply" requests expire

    @field_validator("internal_addresses")
    @classmethod
    def _plain_internal(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_plain_address(a) for a in value)

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _lower_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.strip().lower() for v in value if v.strip())


class RetiredSecretSettings(_Section):
    """A previous installation secret, still accepted (never used to sign) until ``until``."""

    secret: str = Field(min_length=8)
    until: datetime

    @field_validator("until")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-06-01T00:00:00Z")
        return value


class AbsenceSettings(_Section):
    """A period an agent is away (inclusive dates): never assigned, and not notified
    (their tickets' notices go to the group; they do not get them on return)."""

    start: date
    end: date
    note: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> AbsenceSettings:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class AgentSettings(_Section):
    """One agent: who they are and from which addresses they write."""

    name: str = Field(min_length=1, max_length=120, pattern=_NAME)  # the id used in commands
    display_name: str = ""
    addresses: tuple[str, ...] = Field(min_length=1)
    groups: tuple[str, ...] = ()
    language: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[A-Za-z]{2})?$")
    notify: NotificationPreferences = NotificationPreferences()
    timezone: str = "UTC"
    hours: WeeklyHours | None = None  # working hours; None: always on shift
    absences: tuple[AbsenceSettings, ...] = ()
    skills: tuple[str, ...] = ()  # categories they handle (assignment by skill)
    max_open_tickets: int | None = Field(default=None, ge=1)

    @field_validator("addresses")
    @classmethod
    def _plain_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_plain_address(a) for a in value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return _known_zone(value)


class GroupSettings(_Section):
    """A team such as L1/L2/L3; ``escalates_to`` names the next tier up."""

    name: str = Field(min_length=1, max_length=120, pattern=_NAME)
    address: str | None = Field(default=None, pattern=_ADDRESS)  # a list address, if any
    lead: str | None = None  # an agent name: receives escalations for the group
    tier: int = Field(default=1, ge=1, le=9)
    escalates_to: str | None = None
    # Assignment (issue 7): how a new ticket for this group picks an agent.
    strategy: str = Field(default="round_robin", pattern=r"^(round_robin|least_open|skill|none)$")
    max_open: int | None = Field(default=None, ge=1)  # per-agent cap unless the agent sets one
    default_responsible: str | None = None  # an agent: gets the ticket when nobody qualifies
    sticky: bool = False  # a customer's new ticket goes to the agent of their last one


class OrganisationSettings(_Section):
    """A customer organisation, recognised by its mail domains (for SLA tiers and rules)."""

    name: str = Field(min_length=1, max_length=200)
    domains: tuple[str, ...] = Field(min_length=1)
    tier: str | None = None  # e.g. "gold": rules and SLA policies select on it
    sla_policy: str | None = None

    @field_validator("domains")
    @classmethod
    def _lower_domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for domain in value:
            if not domain or any(c in domain for c in " @\r\n<>,"):
                raise ValueError(f"not a mail domain: {domain!r}")
        return tuple(d.lower().lstrip(".") for d in value)


class MetricsSettings(_Section):
    """The Prometheus endpoint of `maildesk run` ([metrics]); off unless ``listen`` is set.

    Plain HTTP, no authentication: the figures name nobody, but show volumes,
    so an address other ops' machines can reach needs ``allow_remote = true``.
    """

    listen: str = ""  # "127.0.0.1:9477", "[::1]:9477"; empty: no endpoint
    allow_remote: bool = False

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        if value:
            parse_listen_address(value)
        return value

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> MetricsSettings:
        if self.listen and not self.allow_remote:
            host, _port = parse_listen_address(self.listen)
            if not is_loopback_host(host):
                raise ValueError(
                    f"listen: {host} is reachable from other machines and the endpoint is "
                    "plain HTTP without a password; listen on 127.0.0.1 (scrape through a "
                    "proxy or an SSH tunnel) or set allow_remote = true"
                )
        return self

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_listen_address(self.listen) if self.listen else None


def parse_listen_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) with an IP address or ``localhost``; ValueError if not."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # an IPv6 address without brackets: where does the port start?
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9477 or [::1]:9477)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} of {value!r} is not between 1 and 65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} of {value!r} is not an IP address (or localhost)") from None
    return host, port


def _plain_address(addr: str) -> str:
    """``local@domain`` as written in a config: both parts there, no name, no brackets."""
    local, _, domain = addr.rpartition("@")
    labels = domain.split(".")
    if not local or not domain or any(c in addr for c in " \t\r\n<>,") or "" in labels:
        raise ValueError(f"not a plain address: {addr!r}")
    return addr.lower()


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
    return value


def _check_people(
    agents: tuple[AgentSettings, ...],
    groups: tuple[GroupSettings, ...],
    organisations: tuple[OrganisationSettings, ...],
) -> None:
    """Names unique, every reference resolves, no address or domain claimed twice.

    Each error starts with the dotted key of the table that holds the problem.
    """
    agent_names = _unique("agents", "name", [[a.name] for a in agents])
    group_names = _unique("groups", "name", [[g.name] for g in groups])
    for index, group in enumerate(groups):
        if group.name in agent_names:
            raise ValueError(f"groups.{index}.name: {group.name!r} names both an agent and a group")
    _unique("agents", "addresses", [a.addresses for a in agents], "agent address")
    _unique("organisations", "domains", [o.domains for o in organisations], "organisation domain")
    for index, agent in enumerate(agents):
        for group_name in agent.groups:
            if group_name not in group_names:
                raise ValueError(
                    f"agents.{index}.groups: agent {agent.name!r} is in unknown group "
                    f"{group_name!r}"
                )
    for index, group in enumerate(groups):
        key = f"groups.{index}"
        if group.lead is not None and group.lead not in agent_names:
            raise ValueError(f"{key}.lead: group {group.name!r} has unknown lead {group.lead!r}")
        fallback = group.default_responsible
        if fallback is not None and fallback not in agent_names:
            raise ValueError(
                f"{key}.default_responsible: group {group.name!r} has unknown "
                f"default_responsible {fallback!r}"
            )
        if group.escalates_to is not None and group.escalates_to not in group_names:
            raise ValueError(
                f"{key}.escalates_to: group {group.name!r} escalates to unknown group "
                f"{group.escalates_to!r}"
            )
    _check_escalation_chains(groups)


def _check_escalation_chains(groups: tuple[GroupSettings, ...]) -> None:
    """Escalation goes up: a chain that comes back to a group it left is a typo."""
    up = {g.name: g.escalates_to for g in groups}
    for index, group in enumerate(groups):
        chain = [group.name]
        while (nxt := up.get(chain[-1])) is not None:
            chain.append(nxt)
            if nxt == group.name:
                raise ValueError(
                    f"groups.{index}.escalates_to: escalation from {group.name!r} comes "
                    f"back to it ({' -> '.join(chain)})"
                )
            if chain.count(nxt) > 1:
                break  # a loop further up: reported for a group on it


def _check_routing(settings: Settings) -> None:
    """Groups, agents and the calendar the routing section names exist."""
    routing = settings.routing
    groups = {g.name for g in settings.groups}
    agents = {a.name for a in settings.agents}
    if routing.default_group is not None and routing.default_group not in groups:
        raise ValueError(f"routing.default_group: unknown group {routing.default_group!r}")
    for queue, group in routing.queue_groups.items():
        if group not in groups:
            raise ValueError(f"routing.queue_groups.{queue}: unknown group {group!r}")
    for queue, agent in routing.default_responsible.items():
        if agent not in agents:
            raise ValueError(f"routing.default_responsible.{queue}: unknown agent {agent!r}")
    calendar = routing.business_calendar
    if calendar is not None and calendar not in settings.calendars:
        raise ValueError(f"routing.business_calendar: unknown calendar {calendar!r}")


def _unique(table: str, field: str, values: Iterable[Iterable[str]], what: str = "") -> set[str]:
    """The values of ``field`` across the ``[[table]]`` entries; ValueError on a repeat."""
    seen: set[str] = set()
    for index, names in enumerate(values):
        for name in names:
            if name in seen:
                label = f"{what} {name!r}" if what else repr(name)
                raise ValueError(f"{table}.{index}.{field}: {label} appears twice")
            seen.add(name)
    return seen


class Settings(_Section):
    """The whole configuration. ``source`` is the file it came from (or "<defaults>")."""

    data_dir: Path = Path("./var")
    database_url: str = ""
    support_addresses: tuple[str, ...] = ("support@localhost",)
    mail_domain: str = "localhost"
    installation_secret: str = ""
    installation_secret_file: Path | None = None
    installation_secret_env: str | None = None
    retired_secrets: tuple[RetiredSecretSettings, ...] = ()  # rotation grace
    node_name: str = ""
    templates_dir: Path | None = None  # default: ./templates, else the shipped ones
    threading: ThreadingSettings = ThreadingSettings()
    pipeline: PipelineSettings = PipelineSettings()
    listeners: tuple[ListenerSettings, ...] = (ListenerSettings(),)
    outbound: OutboundSettings = OutboundSettings()
    acknowledgements: AcknowledgementSettings = AcknowledgementSettings()
    spam: SpamSettings = SpamSettings()
    retention: RetentionSettings = RetentionSettings()
    imap: tuple[ImapMailboxSettings, ...] = ()
    address: tuple[AddressSettings, ...] = ()  # per-address defaults ([[address]] tables)
    agents: tuple[AgentSettings, ...] = ()  # [[agents]] tables
    groups: tuple[GroupSettings, ...] = ()  # [[groups]] tables
    organisations: tuple[OrganisationSettings, ...] = ()  # [[organisations]] tables
    calendars: dict[str, CalendarConfig] = Field(default_factory=dict)  # [calendars.<name>]
    sla: SlaSettings = SlaSettings()
    routing: RoutingSettings = RoutingSettings()
    agent_mail: AgentMailSettings = AgentMailSettings()
    metrics: MetricsSettings = MetricsSettings()
    source: str = "<defaults>"

    @model_validator(mode="after")
    def _people_consistent(self) -> Settings:
        _check_people(self.agents, self.groups, self.organisations)
        return self

    @model_validator(mode="after")
    def _routing_consistent(self) -> Settings:
        _check_routing(self)
        return self

    @model_validator(mode="after")
    def _verdicts_have_a_source(self) -> Settings:
        names = {name.lower() for name in self.spam.trusted_verdict_headers}
        if "authentication-results" in names and not self.agent_mail.trusted_authserv_ids:
            raise ValueError(
                "spam.trusted_verdict_headers: Authentication-Results is believed only from "
                "our own MTA; name it in agent_mail.trusted_authserv_ids"
            )
        return self

    @model_validator(mode="after")
    def _calendars_open(self) -> Settings:
        # A calendar may close for a while (holidays, exceptions), but one without
        # weekly hours never opens: every due time on it would fail in the sweep.
        def never_open(hours: WeeklyHours) -> bool:
            return not any(hours.for_weekday(day) for day in range(7))

        for name, calendar in self.calendars.items():
            if never_open(calendar.hours):
                raise ValueError(f"calendars.{name}.hours: never open (no weekday has hours)")
        # Likewise an agent's shift: mail held for it would wait for an hour that never comes.
        for index, agent in enumerate(self.agents):
            if agent.hours is not None and never_open(agent.hours):
                raise ValueError(
                    f"agents.{index}.hours: {agent.name} is never on shift (no weekday has "
                    "hours); leave hours out for always"
                )
        return self

    @model_validator(mode="after")
    def _sla_consistent(self) -> Settings:
        check_sla_references(
            self.sla,
            self.calendars,
            (g.name for g in self.groups),
            (a.name for a in self.agents),
            [(o.name, o.sla_policy) for o in self.organisations],
        )
        names = {o.name for o in self.organisations}
        tiers = {o.tier for o in self.organisations if o.tier}
        for i, rule in enumerate(self.sla.rules):
            # A typo would select no ticket at all, silently (as in the routing rules).
            for field, value, known in (
                ("organisation", rule.organisation, names),
                ("tier", rule.tier, tiers),
            ):
                if value is not None and names and value not in known:
                    raise ValueError(f"sla.rules.{i}.{field}: unknown {field} {value!r}")
        return self

    @model_validator(mode="after")
    def _dkim_keys_consistent(self) -> Settings:
        keys = self.outbound.dkim
        _unique(
            "outbound.dkim", "selector", [[f"{k.selector}._domainkey.{k.domain}"] for k in keys]
        )
        # A key for a domain none of our addresses send from signs nothing: a typo.
        ours = {address.rpartition("@")[2] for address in self.own_addresses}
        for index, key in enumerate(self.outbound.dkim):
            if not any(d == key.domain or d.endswith("." + key.domain) for d in ours):
                raise ValueError(
                    f"outbound.dkim.{index}.domain: no support address is at {key.domain!r} "
                    f"or below it (ours: {', '.join(sorted(ours))}); it would sign nothing"
                )
        return self

    @model_validator(mode="after")
    def _listeners_apart(self) -> Settings:
        # Two on one port: the second could not bind, and `run` stopped with exit 75 as if
        # another program held it, after `check` had passed.
        seen: dict[object, int] = {}
        for index, listener in enumerate(self.listeners):
            where: object = listener.socket or (listener.host.lower(), listener.port)
            if listener.socket is None and listener.port == 0:
                continue  # any free port: never the same one twice
            if where in seen:
                shown = listener.socket or f"{listener.host}:{listener.port}"
                raise ValueError(
                    f"listeners.{index}: listens on {shown}, as listeners.{seen[where]} does"
                )
            seen[where] = index
        return self

    @model_validator(mode="after")
    def _no_mail_loops(self) -> Settings:
        # Mail to one of our own addresses comes back in as our own mail: stored, never read.
        own = self.own_addresses | set(self.agent_mail.internal_addresses)
        for index, agent in enumerate(self.agents):
            for address in agent.addresses:
                if base_address(address) in own:
                    raise ValueError(
                        f"agents.{index}.addresses: {address!r} is one of our own support or "
                        "internal addresses; notifications sent there would come back as mail"
                    )
        digest_to = self.spam.digest_to
        if digest_to and base_address(digest_to) in own:
            raise ValueError(
                f"spam.digest_to: {digest_to!r} is one of our own support or internal "
                "addresses; the digest would come back as mail instead of reaching a person"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        """A URL SQLAlchemy can open with an installed driver (checked without connecting)."""
        if not value:
            return value
        example = "e.g. postgresql+psycopg://user@host/db or sqlite:////path/db.sqlite3"
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL ({example})") from None
        try:
            dialect = url.get_dialect()
        except NoSuchModuleError:
            raise ValueError(f"unknown database kind {url.drivername!r} ({example})") from None
        try:
            dialect.import_dbapi()
        except ImportError as exc:
            raise ValueError(
                f"no driver for {url.drivername!r} is installed ({exc}; {example})"
            ) from None
        return value

    @field_validator("support_addresses")
    @classmethod
    def _lower_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one address is needed: the one customers write to")
        return tuple(_plain_address(a) for a in value)

    @property
    def effective_node_name(self) -> str:
        """Stable across restarts, so a restarted node takes back its own claims at once."""
        return self.node_name or socket.gethostname()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'maildesk.sqlite3').as_posix()}"

    @property
    def receiving_addresses(self) -> tuple[str, ...]:
        """The addresses we take mail for, in config order: support first, then [[address]]."""
        listed = [*self.support_addresses, *(a.address.lower() for a in self.address)]
        return tuple(dict.fromkeys(listed))

    @property
    def own_addresses(self) -> frozenset[str]:
        return frozenset(self.receiving_addresses)

    def is_own_address(self, address: str) -> bool:
        """Ours, never a customer: a support address or a sub-address of one
        (``support+…``, signed reply and rating addresses), or an internal one."""
        plain = base_address(address)
        return plain in self.own_addresses or plain in self.agent_mail.internal_addresses

    def address_defaults(self, address: str) -> AddressSettings | None:
        address = address.lower()
        return next((a for a in self.address if a.address.lower() == address), None)

    def first_address_default(
        self, addresses: Iterable[str], name: Literal["queue", "category"]
    ) -> tuple[str, str] | None:
        """The first of ``addresses`` whose ``[[address]]`` table sets ``name``, and the value.

        Each default is looked up on its own: a mail to support@ (which only names
        our sender) and billing@ (which has a queue) takes billing's queue.
        """
        for address in addresses:
            defaults = self.address_defaults(address)
            value = getattr(defaults, name) if defaults is not None else None
            if value:
                return address, value
        return None


@dataclass(frozen=True)
class ConfigLocation:
    path: Path | None  # None: no file, built-in defaults


def locate_config(explicit: str | None) -> ConfigLocation:
    """Find the config file per the documented order; a named file must exist."""
    if explicit == "":  # `--config "$UNSET_VARIABLE"`: not a request for the defaults
        raise ConfigError("--config", "", "an empty path names no file")
    if explicit:
        return ConfigLocation(Path(explicit))
    env = os.environ.get("MAILDESK_CONFIG")
    if env:
        return ConfigLocation(Path(env))
    default = Path(DEFAULT_CONFIG_NAME)
    return ConfigLocation(default if default.exists() else None)


def load_settings(explicit: str | None = None, data_dir: str | None = None) -> Settings:
    """Load, validate and return the settings. Raises ConfigError."""
    location = locate_config(explicit)
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if location.path is not None:
        source = str(location.path)
        try:
            raw = tomllib.loads(location.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(source, "", "file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(source, "", f"cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    override = data_dir or os.environ.get("MAILDESK_DATA_DIR")
    if override:
        raw["data_dir"] = override
    raw["source"] = source
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        reason = first["msg"]
        if first["type"] == "extra_forbidden":
            reason = "unknown key"
        elif first["type"] == "value_error" and "error" in first.get("ctx", {}):
            reason = str(first["ctx"]["error"])  # without pydantic's "Value error, " prefix
        if not key and (named := re.fullmatch(r"([a-z_]+(?:\.[\w-]+)+): (.+)", reason, re.S)):
            key, reason = named.groups()  # a check across sections names its key first
        elif key and (named := re.fullmatch(r"([a-z_]+): (.+)", reason, re.S)):
            key, reason = f"{key}.{named[1]}", named[2]  # and one within a section, its own
        raise ConfigError(source, key, reason) from None
    _check_directories(settings)
    _check_files(settings)
    return settings


def _check_directories(settings: Settings) -> None:
    """Folders named in the config exist: a missing one would run without templates or rules."""
    named = {
        "templates_dir": settings.templates_dir,
        "routing.rules_dir": settings.routing.rules_dir,
    }
    for key, path in named.items():
        if path is not None and not path.is_dir():
            raise ConfigError(settings.source, key, _missing(path, "directory"))


def _check_files(settings: Settings) -> None:
    """Files named in the config are there and are what they should be: found out at the
    first mail (a spam filter that turns itself off, an IMAP connection that fails
    forever on a CA bundle it cannot read) they would be found out too late."""
    seed = settings.spam.seed_path
    if seed is not None and not seed.is_file():
        raise ConfigError(settings.source, "spam.seed_path", _missing(seed, "file"))
    maildir = settings.outbound.maildir
    if maildir is not None and maildir.exists() and not maildir.is_dir():
        raise ConfigError(settings.source, "outbound.maildir", f"not a directory: {maildir}")
    for index, mailbox in enumerate(settings.imap):
        if mailbox.ca_file is None:
            continue
        key = f"imap.{index}.ca_file"
        if not mailbox.ca_file.is_file():
            raise ConfigError(settings.source, key, _missing(mailbox.ca_file, "file"))
        try:
            ssl.create_default_context(cafile=str(mailbox.ca_file))
        except (ssl.SSLError, OSError) as exc:
            reason = f"no CA certificate (PEM) can be read from {mailbox.ca_file}: {exc}"
            raise ConfigError(settings.source, key, reason) from None


def _missing(path: Path, kind: str) -> str:
    reason = f"no such {kind}" if not path.exists() else f"not a {kind}"
    reason = f"{reason}: {path}"
    if not path.is_absolute():  # under systemd that is /, not where ops ran `check`
        reason += f" (relative to the working directory {Path.cwd()})"
    return reason


def refuse_world_readable(source: str, key: str, path: Path) -> None:
    """ConfigError if every user of the machine may read or write ``path``.

    A password or private key in such a file is no secret, whatever maildesk
    does with it, so ops hear of it at start, as ssh refuses such a key.
    Group access is allowed: ``root:maildesk`` mode 0640 is the usual way to
    hand the daemon's user a file it may read.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it says what is wrong
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        reason = f"{path} is open to every user (mode {stat.S_IMODE(mode):04o}): chmod o-rwx {path}"
        raise ConfigError(source, key, reason)


def resolve_secret(
    source: str, key: str, inline: str, file: Path | None, env: str | None
) -> str | None:
    """A secret given inline, as ``<key>_file`` or as ``<key>_env``; None if not given."""
    if inline:
        return inline
    if file is not None:
        refuse_world_readable(source, f"{key}_file", file)
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            reason = f"cannot read {file}: {exc.strerror}"
            raise ConfigError(source, f"{key}_file", reason) from None
        if not value:
            raise ConfigError(source, f"{key}_file", f"{file} is empty")
        return value
    if env:
        value = os.environ.get(env, "")
        if not value:
            raise ConfigError(source, f"{key}_env", f"environment variable {env} is unset or empty")
        return value
    return None


def resolve_installation_secret(settings: Settings) -> bytes:
    """The HMAC installation secret: inline, file, env, or generated once in the data dir."""
    value = resolve_secret(
        settings.source,
        "installation_secret",
        settings.installation_secret,
        settings.installation_secret_file,
        settings.installation_secret_env,
    )
    return value.encode() if value else _generated_secret(settings.data_dir)


def resolve_relay_password(settings: Settings) -> str:
    out = settings.outbound
    value = resolve_secret(
        settings.source,
        "outbound.relay_password",
        out.relay_password,
        out.relay_password_file,
        out.relay_password_env,
    )
    return value or ""


def _generated_secret(data_dir: Path) -> bytes:
    """The secret in ``data_dir``, made on first use.

    Two processes may both start first (the daemon, and ``ingest -`` run by the MTA):
    the file appears whole and only once (a hard link, which fails if it exists), and
    the one that loses reads the winner's, so every process signs with the secret on
    disk.
    """
    path = data_dir / "installation-secret"
    if path.exists():
        return path.read_text(encoding="utf-8").strip().encode()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(value + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_text(encoding="utf-8").strip().encode()
    finally:
        tmp.unlink(missing_ok=True)
    return value.encode()
