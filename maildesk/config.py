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
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

EX_CONFIG = 78
DEFAULT_CONFIG_NAME = "maildesk.toml"


class ConfigError(Exception):
    """A configuration problem, reported as ``file: key: reason``."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    tls_cert: Path | None = None  # enables STARTTLS (SMTP only)
    tls_key: Path | None = None
    require_auth: bool = False
    auth_users_file: Path | None = None  # lines "user:password"


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
    from_name: str = "Support"
    drain_interval_seconds: float = Field(default=2.0, gt=0)
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    give_up_after_hours: float = Field(default=120.0, gt=0)
    suppression_days: float = Field(default=30.0, gt=0)


class AcknowledgementSettings(_Section):
    enabled: bool = True
    # Mail older than this when processed (an import of old mail) is not acknowledged.
    max_age_hours: float = Field(default=24.0, gt=0)
    per_sender_per_hour: int = Field(default=5, ge=0)
    per_sender_per_day: int = Field(default=20, ge=0)


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


class ImapMailboxSettings(_Section):
    """One IMAP mailbox maildesk reads; each folder gets its own poller."""

    name: str = Field(default="", max_length=100, pattern=r"^[^/\s]*$")  # default: user@host
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)  # default: 993 (tls), else 143
    security: ImapSecurity = ImapSecurity.TLS
    verify_tls: bool = True
    user: str = Field(min_length=1)
    password: str = ""
    password_file: Path | None = None
    password_env: str | None = None
    folders: tuple[str, ...] = Field(default=("INBOX",), min_length=1)
    post_action: ImapPostAction = ImapPostAction.FLAG
    move_to: str = ""
    idle: bool = True
    poll_interval_seconds: float = Field(default=60.0, gt=0)
    max_message_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    lease_seconds: float = Field(default=60.0, ge=5)
    timeout_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _move_needs_target(self) -> ImapMailboxSettings:
        if self.post_action is ImapPostAction.MOVE and not self.move_to:
            raise ValueError("post_action = 'move' needs move_to")
        if self.move_to and self.move_to in self.folders:
            raise ValueError("move_to must not be one of the folders read")
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


class AddressSettings(_Section):
    """Defaults for tickets that arrive at one support address (its queue)."""

    address: str = Field(pattern=r"^[^@\s<>,]+@[^@\s<>,]+$")
    queue: str | None = None
    category: str | None = None
    from_name: str | None = None  # display name on mail sent for its tickets
    language: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[A-Za-z]{2})?$")


class Settings(_Section):
    """The whole configuration. ``source`` is the file it came from (or "<defaults>")."""

    data_dir: Path = Path("./var")
    database_url: str = ""
    support_addresses: tuple[str, ...] = ("support@localhost",)
    mail_domain: str = "localhost"
    installation_secret: str = ""
    installation_secret_file: Path | None = None
    installation_secret_env: str | None = None
    node_name: str = ""
    templates_dir: Path | None = None  # default: ./templates, else the shipped ones
    threading: ThreadingSettings = ThreadingSettings()
    pipeline: PipelineSettings = PipelineSettings()
    listeners: tuple[ListenerSettings, ...] = (ListenerSettings(),)
    outbound: OutboundSettings = OutboundSettings()
    acknowledgements: AcknowledgementSettings = AcknowledgementSettings()
    imap: tuple[ImapMailboxSettings, ...] = ()
    address: tuple[AddressSettings, ...] = ()  # per-address defaults ([[address]] tables)
    source: str = "<defaults>"

    @field_validator("support_addresses")
    @classmethod
    def _lower_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for addr in value:
            if "@" not in addr or any(c in addr for c in " \r\n<>,"):
                raise ValueError(f"not a plain address: {addr!r}")
        return tuple(a.lower() for a in value)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'maildesk.sqlite3').as_posix()}"

    @property
    def own_addresses(self) -> frozenset[str]:
        return frozenset(self.support_addresses) | {a.address.lower() for a in self.address}

    def address_defaults(self, address: str) -> AddressSettings | None:
        address = address.lower()
        return next((a for a in self.address if a.address.lower() == address), None)


@dataclass(frozen=True)
class ConfigLocation:
    path: Path | None  # None: no file, built-in defaults


def locate_config(explicit: str | None) -> ConfigLocation:
    """Find the config file per the documented order; a named file must exist."""
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
        raise ConfigError(source, key, reason) from None
    return settings


def resolve_secret(
    source: str, key: str, inline: str, file: Path | None, env: str | None
) -> str | None:
    """A secret given inline, as ``<key>_file`` or as ``<key>_env``; None if not given."""
    if inline:
        return inline
    if file is not None:
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
    path = data_dir / "installation-secret"
    if path.exists():
        return path.read_text(encoding="utf-8").strip().encode()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    os.replace(tmp, path)
    return value.encode()
