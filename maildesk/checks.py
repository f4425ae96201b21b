"""`maildesk check`: try every configured part once and say what works."""

from __future__ import annotations

import os
import smtplib
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any, NamedTuple

from maildesk.app import utc_now
from maildesk.config import (
    ConfigError,
    ImapMailboxSettings,
    ListenerSettings,
    Settings,
    resolve_installation_secret,
    resolve_relay_password,
)
from maildesk.db.database import Database
from maildesk.intake.imap import (
    command_watch,
    connect,
    disconnect,
    failure_kind,
    resolve_logins,
)
from maildesk.intake.oauth2 import Login
from maildesk.intake.smtp import check_listener_files
from maildesk.outbound.dkim_sign import load_keys
from maildesk.outbound.templates import (
    TemplateRenderer,
    check_templates,
    default_templates_dir,
    required_templates,
)
from maildesk.routing.router import known_names, rules_dir
from maildesk.routing.rules import RulesError, load_rules
from maildesk.sla.settings import named_templates


class Check(NamedTuple):
    """One line of `maildesk check`; ``config``: a failure is a configuration error (78)."""

    ok: bool
    line: str
    config: bool = False


def check_startup(settings: Settings) -> None:
    """What `maildesk run` reads as it starts beyond the config values; ConfigError if bad.

    Secrets from files or the environment, DKIM keys, listeners' certificates
    and users files, templates the SLA jobs name. Checked before anything starts, so a
    problem is exit 78 naming the key, not a traceback (and a systemd restart
    loop) or a daemon that fails at its first scheduled job.
    """
    resolve_relay_password(settings)
    load_keys(settings)
    if settings.imap:
        resolve_logins(settings, utc_now)
    for index, listener in enumerate(settings.listeners):
        check_listener_files(settings.source, index, listener)
    if settings.sla.enabled:
        directory = default_templates_dir(settings.templates_dir)
        renderer = TemplateRenderer(directory)
        for key, name, audience in named_templates(settings.sla):
            if not renderer.exists(name, audience):
                raise ConfigError(
                    settings.source,
                    key,
                    f"no template {name}.{audience}.txt.j2 or .html.j2 in {directory}",
                )


def run_checks(settings: Settings) -> Iterator[Check]:
    """Each part, one line; templates and rules fail as `maildesk run` does: exit 78."""
    yield Check(*_data_dir(settings))
    yield Check(*_secret(settings))
    yield Check(*_database(settings))
    yield _templates(settings)
    yield _rules(settings)
    for listener in settings.listeners:
        yield Check(*_listener(listener))
    if settings.metrics.address is not None:
        yield Check(*_metrics(*settings.metrics.address))
    for result in _imap(settings):
        yield Check(*result)
    yield Check(*_outbound(settings))


def _data_dir(settings: Settings) -> tuple[bool, str]:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / ".write-check"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return False, f"data_dir {settings.data_dir}: not writable: {exc.strerror}"
    return True, f"data_dir {settings.data_dir.resolve()}: writable"


def _secret(settings: Settings) -> tuple[bool, str]:
    try:
        resolve_installation_secret(settings)
    except ConfigError as exc:
        return False, f"installation secret: {exc}"
    except OSError as exc:  # none configured, and the data directory takes no new one
        where = exc.filename or settings.data_dir
        return False, f"installation secret: cannot generate one in {where}: {exc.strerror or exc}"
    return True, "installation secret: available"


def _database(settings: Settings) -> tuple[bool, str]:
    url = settings.effective_database_url
    shown = url.split("@")[-1] if "@" in url else url
    try:
        db = Database(url)
        current, head = db.current_revision(), db.head_revision()
        known = db.known_revisions()
        empty = db.is_empty()
        db.dispose()
    except Exception as exc:
        return False, f"database {shown}: {exc}"
    if empty:
        return True, f"database {shown}: reachable and empty; the first start creates schema {head}"
    if current is not None and current not in known:
        return (
            False,
            f"database {shown}: schema {current} is newer than this maildesk ({head}): "
            "run the maildesk that upgraded it",
        )
    if current != head:
        return (
            False,
            f"database {shown}: schema {current or 'empty'}, needs {head} (maildesk db upgrade)",
        )
    return True, f"database {shown}: reachable, schema {current}"


def _templates(settings: Settings) -> Check:
    """As `maildesk run` checks them at start (App.check_pipeline)."""
    directory = default_templates_dir(settings.templates_dir)
    try:
        check_templates(settings, TemplateRenderer(directory))
    except ConfigError as exc:
        return Check(False, f"templates: {exc}", config=True)
    rendered = ", ".join(f"{event}.customer" for event in required_templates(settings))
    return Check(True, f"templates {directory}: all compile; {rendered} render")


def _rules(settings: Settings) -> Check:
    """As `maildesk run` loads them at start: names checked against the config."""
    folder = rules_dir(settings)
    known = known_names(settings, default_templates_dir(settings.templates_dir))
    try:
        rule_set = load_rules(folder, known)
    except RulesError as exc:
        return Check(False, f"rules: {exc}", config=True)
    return Check(True, f"rules {folder}: {len(rule_set.rules)} rules")


def _greeting(family: int, address: Any) -> bytes:
    """The first line a server at ``address`` sends, or b"" when none answers."""
    try:
        with socket.socket(family) as client:
            client.settimeout(2.0)
            client.connect(address)
            return client.recv(512).split(b"\r\n", 1)[0]
    except OSError:
        return b""


def _ours(greeting: bytes) -> bool:
    """Whether the greeting is our own listener's (a daemon already running)."""
    return greeting.startswith(b"220 ") and b"maildesk" in greeting


def _listener(listener: ListenerSettings) -> tuple[bool, str]:
    if listener.socket is not None:
        if listener.socket.exists() and _ours(_greeting(socket.AF_UNIX, str(listener.socket))):
            return True, f"{listener.protocol} socket {listener.socket}: a running maildesk answers"
        parent = listener.socket.parent
        ok = (parent.exists() and os.access(parent, os.W_OK)) or not parent.exists()
        return ok, f"{listener.protocol} socket {listener.socket}: " + (
            "can be created" if ok else "not writable"
        )
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((listener.host, listener.port))
        except OSError as exc:
            if _ours(_greeting(family, (listener.host, listener.port))):
                where = f"{listener.host}:{listener.port}"
                return True, f"{listener.protocol} {where}: a running maildesk answers"
            return (
                False,
                f"{listener.protocol} {listener.host}:{listener.port}: cannot bind: {exc.strerror}",
            )
    return True, f"{listener.protocol} {listener.host}:{listener.port}: free to bind"


def _metrics(host: str, port: int) -> tuple[bool, str]:
    """The [metrics] address: free to bind, or a running maildesk's endpoint answers there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            try:
                with urllib.request.urlopen(f"http://{where}/metrics", timeout=5) as response:
                    if b"maildesk_up" in response.read():
                        return True, f"metrics {where}: a running maildesk answers"
            except (OSError, ValueError):
                pass
            return False, f"metrics {where}: cannot bind: {exc.strerror}"
    return True, f"metrics {where}: free to bind"


def _imap(settings: Settings) -> Iterator[tuple[bool, str]]:
    if not settings.imap:
        return
    try:
        logins = resolve_logins(settings, utc_now)
    except ConfigError as exc:
        yield False, f"imap: {exc}"
        return
    for mailbox in settings.imap:
        yield _imap_mailbox(mailbox, logins[mailbox.key])


def _imap_mailbox(mailbox: ImapMailboxSettings, login: Login) -> tuple[bool, str]:
    """Log in as the poller does; the folders to read (and Junk) must exist."""
    name = f"imap {mailbox.key} ({mailbox.host}:{mailbox.effective_port})"
    watch = command_watch(mailbox)
    try:
        client = connect(mailbox, login, watch)
    except Exception as exc:
        return False, f"{name}: {failure_kind(exc)}: {exc}"
    try:
        with watch.command("STATUS"):
            wanted = [*mailbox.folders, *([mailbox.junk_folder] if mailbox.junk_folder else [])]
            missing = [folder for folder in wanted if not client.folder_exists(folder)]
            counts = {
                folder: int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])
                for folder in mailbox.folders
                if folder not in missing
            }
    except Exception as exc:
        return False, f"{name}: {failure_kind(exc)}: {exc}"
    finally:
        disconnect(client, watch)
    if missing:
        return False, f"{name}: logged in, but there is no folder " + ", ".join(
            repr(folder) for folder in missing
        )
    return True, f"{name}: logged in; " + ", ".join(
        f"{folder!r} holds {count} message{'' if count == 1 else 's'}"
        for folder, count in counts.items()
    )


def _outbound(settings: Settings) -> tuple[bool, str]:
    out = settings.outbound
    if out.transport == "maildir":
        path = out.maildir or settings.data_dir / "outbox-maildir"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return False, f"outbound maildir {path}: {exc.strerror}"
        return True, f"outbound maildir {path}: writable"
    try:
        password = resolve_relay_password(settings)
        client: smtplib.SMTP
        if out.relay_security == "tls":
            client = smtplib.SMTP_SSL(
                out.relay_host, out.relay_port, timeout=out.relay_timeout_seconds
            )
        else:
            client = smtplib.SMTP(out.relay_host, out.relay_port, timeout=out.relay_timeout_seconds)
        with client:
            client.ehlo()
            if out.relay_security == "starttls":
                client.starttls()
                client.ehlo()
            if out.relay_user:
                client.login(out.relay_user, password)
    except (OSError, smtplib.SMTPException, ConfigError) as exc:
        return False, f"relay {out.relay_host}:{out.relay_port}: {exc}"
    return True, f"relay {out.relay_host}:{out.relay_port}: reachable" + (
        " and login ok" if out.relay_user else ""
    )
