"""OAuth2 for IMAP: the token flow against a local token endpoint, and real
XOAUTH2/OAUTHBEARER logins to a private Dovecot whose oauth2 passdb checks the
tokens at the same local server (RFC 7662 introspection)."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from maildesk.app import App
from maildesk.config import ImapMailboxSettings, Settings
from maildesk.intake.imap import FolderStatus, resolve_logins
from maildesk.intake.oauth2 import OAuth2Error, OAuth2Login
from tests.conftest import FrozenClock, make_settings
from tests.dovecot_harness import Dovecot, dovecot_server
from tests.intake.test_imap import Runner, idle_everywhere, mail, stored, wait_until
from tests.oauth_server import OAuthServer

USER = "support"


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    server = OAuthServer().start()
    yield server
    server.stop()


def oauth_block(oauth: OAuthServer, refresh_token: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": USER,
        "host": "127.0.0.1",
        "security": "none",
        "user": USER,
        "auth": "oauth2",
        "token_endpoint": oauth.token_endpoint,
        "client_id": oauth.client_id,
        "client_secret": oauth.client_secret,
        "refresh_token": refresh_token,
    }
    values.update(overrides)
    return values


def tokens_of(settings: Settings, clock: FrozenClock) -> OAuth2Login:
    login = resolve_logins(settings, clock)[USER]
    assert isinstance(login, OAuth2Login)
    return login


def settings_with(tmp_path: Path, block: dict[str, Any]) -> Settings:
    return make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.sqlite3'}", imap=[block])


def test_refresh_token_is_rotated_persisted_and_survives_a_restart(
    tmp_path: Path, oauth: OAuthServer, clock: FrozenClock
) -> None:
    first = oauth.grant(USER)
    settings = settings_with(tmp_path, oauth_block(oauth, first))
    login = tokens_of(settings, clock)
    token = login.tokens.access_token()
    assert oauth.access[token] == USER
    assert login.tokens.access_token() == token  # still valid: no second request
    assert len(oauth.token_requests()) == 1

    saved = tmp_path / "data" / "imap-oauth2" / f"{USER}.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    rotated = json.loads(saved.read_text())["refresh_token"]
    assert rotated != first and rotated in oauth.users  # the first one is dead now

    # A restart (new objects, same data dir) goes on with the rotated token ...
    clock.advance(hours=2)  # ... once the saved access token has expired
    again = tokens_of(settings, clock)
    assert again.tokens.access_token() != token
    assert oauth.token_requests()[-1]["refresh_token"] == rotated

    # Ops configure a new refresh token (new consent): that one is used.
    fresh = oauth.grant(USER)
    clock.advance(hours=2)
    renewed = tokens_of(settings_with(tmp_path, oauth_block(oauth, fresh)), clock)
    renewed.tokens.access_token()
    assert oauth.token_requests()[-1]["refresh_token"] == fresh


def test_refresh_failure_and_coming_expiry_are_logged(
    tmp_path: Path, oauth: OAuthServer, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "maildesk.intake.imap")
    oauth.refresh_token_expires_in = 3 * 86400
    block = oauth_block(
        oauth,
        oauth.grant(USER),
        client_secret_expires=clock().date() + timedelta(days=10),
        oauth2_warn_days=14,
    )
    login = tokens_of(settings_with(tmp_path, block), clock)
    login.tokens.access_token()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("OAuth2 refresh token expires at" in w for w in warnings)
    assert any("OAuth2 client secret expires at 2026-03-12" in w for w in warnings)

    caplog.clear()
    oauth.fail_with = 503
    clock.advance(hours=2)
    with pytest.raises(OAuth2Error):
        login.tokens.access_token()
    (failed,) = [r.getMessage() for r in caplog.records if "refresh" in r.getMessage()]
    assert f"OAuth2 token refresh at {oauth.token_endpoint} failed: HTTP 503" in failed


def test_oauth2_mailbox_needs_its_endpoint_and_token() -> None:
    with pytest.raises(ValueError, match="needs token_endpoint"):
        ImapMailboxSettings.model_validate({"host": "h", "user": "u", "auth": "oauth2"})
    with pytest.raises(ValueError, match="https"):
        ImapMailboxSettings.model_validate(
            {
                "host": "h",
                "user": "u",
                "auth": "oauth2",
                "client_id": "c",
                "refresh_token": "r",
                "token_endpoint": "http://login.example.com/token",
            }
        )


# -- real logins -------------------------------------------------------------


@pytest.fixture
def dovecot(oauth: OAuthServer) -> Iterator[Dovecot]:
    with dovecot_server(USER, "sales", introspection_url=oauth.introspection_url) as server:
        yield server


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_mail_is_read_with_a_real_oauth2_login(
    app: App, dovecot: Dovecot, oauth: OAuthServer, runner: Runner, mechanism: str
) -> None:
    block = oauth_block(oauth, oauth.grant(USER), port=dovecot.port, oauth2_mechanism=mechanism)
    intake = runner.start(app, block)
    idle_everywhere(intake)
    raw = mail(1)
    dovecot.append(USER, raw)
    rows = wait_until(lambda: stored(app), "the message stored")
    assert [r for _, r in rows] == [raw]
    introspected = [f for p, f in oauth.requests if p == "/introspect"]
    assert introspected and introspected[-1]["token"] in oauth.access


def test_a_revoked_grant_is_reported_and_the_password_mailbox_goes_on(
    app: App, dovecot: Dovecot, oauth: OAuthServer, runner: Runner
) -> None:
    revoked = "rt-nobody-knows"
    intake = runner.start(
        app, oauth_block(oauth, revoked, port=dovecot.port), dovecot.mailbox("sales")
    )
    failing = wait_until(
        lambda: [h for h in intake.health() if h.mailbox == USER and h.consecutive_failures],
        "the failure reported",
    )
    assert failing[0].status is FolderStatus.BACKOFF
    assert "OAuth2 token refresh failed" in failing[0].last_error
    assert "invalid_grant" in failing[0].last_error
    dovecot.append("sales", mail(2))
    wait_until(lambda: len(stored(app)) == 1, "the sales mail stored")


def test_client_secret_from_a_file(tmp_path: Path, oauth: OAuthServer, clock: FrozenClock) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text(oauth.client_secret + "\n")
    secret.chmod(0o640)
    block = oauth_block(oauth, oauth.grant(USER), client_secret="", client_secret_file=str(secret))
    assert tokens_of(settings_with(tmp_path, block), clock).tokens.access_token()
