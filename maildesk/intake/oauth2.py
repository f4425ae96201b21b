"""OAuth2 access tokens for IMAP mailboxes (XOAUTH2 / OAUTHBEARER), issue 4.

The refresh-token grant against the mailbox's ``token_endpoint`` (Google,
Microsoft identity platform, any RFC 6749 server). Providers rotate refresh
tokens: the new one is written to ``<data_dir>/imap-oauth2/<mailbox>.json``
atomically (temp file, fsync, rename; mode 0600) *before* the access token is
used, so a crash never leaves only a revoked token behind. The configured
refresh token seeds that file; when ops configure a different one (after a
new consent), the configured one wins again. Warnings go to the log well
before the refresh token (when the provider says when) or the client secret
(``client_secret_expires``) runs out, and whenever a refresh fails.

Plain HTTP(S) with the standard library; msal is not needed (Microsoft's
token endpoint speaks the same grant), so it stays optional.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from maildesk.atomic import write_atomic
from maildesk.config import ImapMailboxSettings, OAuth2Mechanism, Settings, resolve_secret

log = logging.getLogger("maildesk.intake.imap")

EARLY_REFRESH = timedelta(seconds=60)  # an access token this close to expiry is renewed
WARN_EVERY = timedelta(hours=12)  # expiry warnings are repeated at most this often
HTTP_TIMEOUT = 30.0

Clock = Callable[[], datetime]


class OAuth2Error(Exception):
    """No access token could be obtained (the refresh failed)."""


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass
class TokenState:
    """What is persisted per mailbox (the access token too, so a restart need not refresh)."""

    refresh_token: str
    seeded_from: str  # fingerprint of the configured refresh token this chain started from
    refresh_expires_at: str = ""  # ISO time, when the provider said
    access_token: str = ""
    access_expires_at: str = ""


class TokenFile:
    """``<data_dir>/imap-oauth2/<mailbox>.json``, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> TokenState | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return TokenState(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("cannot read %s (%s): starting from the configured token", self.path, exc)
            return None

    def save(self, state: TokenState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, json.dumps(state.__dict__).encode(), mode=0o600)  # a secret


@dataclass(frozen=True)
class OAuth2Client:
    """The mailbox's client registration and where to ask for tokens."""

    name: str
    token_endpoint: str
    client_id: str
    client_secret: str
    scope: str
    configured_refresh_token: str
    client_secret_expires: datetime | None
    warn_before: timedelta


class OAuth2Tokens:
    """Hands out a valid access token, refreshing (and persisting the rotation) as needed."""

    def __init__(self, client: OAuth2Client, store: TokenFile, clock: Clock) -> None:
        self.client, self.store, self.clock = client, store, clock
        self.lock = threading.Lock()  # one refresh at a time for the mailbox's folders
        self.last_warning: dict[str, datetime] = {}
        seed = _fingerprint(client.configured_refresh_token)
        state = store.load()
        if state is None or state.seeded_from != seed:
            if state is not None:
                log.info("imap %s: a new refresh token is configured; using it", client.name)
            state = TokenState(refresh_token=client.configured_refresh_token, seeded_from=seed)
        self.state = state

    def access_token(self) -> str:
        with self.lock:
            self._warn_about_expiry()
            expires = _parse_time(self.state.access_expires_at)
            if self.state.access_token and expires and expires - EARLY_REFRESH > self.clock():
                return self.state.access_token
            return self._refresh()

    def invalidate(self) -> None:
        """The server refused the access token: the next call fetches a new one."""
        with self.lock:
            self.state.access_token, self.state.access_expires_at = "", ""

    def _refresh(self) -> str:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self.state.refresh_token,
            "client_id": self.client.client_id,
        }
        if self.client.client_secret:
            form["client_secret"] = self.client.client_secret
        if self.client.scope:
            form["scope"] = self.client.scope
        try:
            reply = _post_form(self.client.token_endpoint, form)
            token = str(reply["access_token"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "imap %s: OAuth2 token refresh at %s failed: %s",
                self.client.name,
                self.client.token_endpoint,
                exc,
            )
            raise OAuth2Error(f"token refresh failed: {exc}") from exc
        now = self.clock()
        state = TokenState(
            refresh_token=str(reply.get("refresh_token") or self.state.refresh_token),
            seeded_from=self.state.seeded_from,
            refresh_expires_at=self.state.refresh_expires_at,
            access_token=token,
            access_expires_at=(now + timedelta(seconds=float(reply.get("expires_in", 3600))))
            .astimezone(UTC)
            .isoformat(),
        )
        rotated = state.refresh_token != self.state.refresh_token
        if "refresh_token_expires_in" in reply:
            expires_in = float(reply["refresh_token_expires_in"])
            state.refresh_expires_at = (now + timedelta(seconds=expires_in)).isoformat()
        elif rotated:
            state.refresh_expires_at = ""
        self.store.save(state)  # before the token is used: the old refresh token may be dead
        self.state = state
        log.info(
            "imap %s: OAuth2 access token refreshed%s",
            self.client.name,
            "; refresh token rotated and saved" if rotated else "",
        )
        self._warn_about_expiry()
        return token

    def _warn_about_expiry(self) -> None:
        now = self.clock()
        for what, when in (
            ("refresh token", _parse_time(self.state.refresh_expires_at)),
            ("client secret", self.client.client_secret_expires),
        ):
            if when is None or when - now > self.client.warn_before:
                continue
            last = self.last_warning.get(what)
            if last is not None and now - last < WARN_EVERY:
                continue
            self.last_warning[what] = now
            verb = "expired" if when <= now else "expires"
            log.warning(
                "imap %s: the OAuth2 %s %s at %s: renew it before mail stops",
                self.client.name,
                what,
                verb,
                when.isoformat(timespec="minutes"),
            )


def _parse_time(value: str) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _post_form(url: str, form: dict[str, str]) -> dict[str, Any]:
    """POST a form, return the JSON reply; raises ValueError with the server's error."""
    body = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode("utf-8", "replace")
        raise ValueError(f"HTTP {exc.code}: {detail}") from None
    if not isinstance(data, dict):
        raise ValueError("the token endpoint did not answer a JSON object")
    return data


# -- logging in ----------------------------------------------------------------


class Login:
    """How a poller authenticates after connecting."""

    def login(self, client: IMAPClient) -> None:
        raise NotImplementedError

    def refused(self) -> None:
        """The server refused the credentials (nothing to do for a password)."""


@dataclass
class PasswordLogin(Login):
    user: str
    password: str

    def login(self, client: IMAPClient) -> None:
        client.login(self.user, self.password)


@dataclass
class OAuth2Login(Login):
    user: str
    tokens: OAuth2Tokens
    mechanism: OAuth2Mechanism

    def login(self, client: IMAPClient) -> None:
        token = self.tokens.access_token()
        if self.mechanism is OAuth2Mechanism.OAUTHBEARER:
            client.oauthbearer_login(self.user, token)
        else:
            client.oauth2_login(self.user, token)

    def refused(self) -> None:
        self.tokens.invalidate()


def oauth2_login(
    settings: Settings, index: int, mailbox: ImapMailboxSettings, clock: Clock
) -> Login:
    """Build the OAuth2 login of ``mailbox``; ConfigError for a missing secret."""
    key = f"imap.{index}"
    secret = resolve_secret(
        settings.source,
        f"{key}.client_secret",
        mailbox.client_secret,
        mailbox.client_secret_file,
        mailbox.client_secret_env,
    )
    refresh = resolve_secret(
        settings.source,
        f"{key}.refresh_token",
        mailbox.refresh_token,
        mailbox.refresh_token_file,
        None,
    )
    expires = mailbox.client_secret_expires
    client = OAuth2Client(
        name=mailbox.key,
        token_endpoint=mailbox.token_endpoint,
        client_id=mailbox.client_id,
        client_secret=secret or "",
        scope=mailbox.scope,
        configured_refresh_token=refresh or "",
        client_secret_expires=datetime(expires.year, expires.month, expires.day, tzinfo=UTC)
        if expires
        else None,
        warn_before=timedelta(days=mailbox.oauth2_warn_days),
    )
    safe = mailbox.key.replace("/", "_").lstrip(".")
    store = TokenFile(settings.data_dir / "imap-oauth2" / f"{safe}.json")
    return OAuth2Login(mailbox.user, OAuth2Tokens(client, store, clock), mailbox.oauth2_mechanism)
