"""A small OAuth2 authorization server on 127.0.0.1 for tests.

``POST /token`` answers the refresh-token grant: it checks the client,
issues a fresh access token and rotates the refresh token (the old one stops
working, as at Microsoft and Google). ``POST /introspect`` (RFC 7662) is what
a private Dovecot's ``oauth2`` passdb asks to check an XOAUTH2/OAUTHBEARER
token. Everything it was asked is recorded.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.daemon_harness import free_port


@dataclass
class OAuthServer:
    client_id: str = "maildesk-test"
    client_secret: str = "s3cret"
    users: dict[str, str] = field(default_factory=dict)  # refresh token -> user
    access: dict[str, str] = field(default_factory=dict)  # access token -> user
    expires_in: int = 3600
    refresh_token_expires_in: int | None = None
    fail_with: int | None = None  # answer every token request with this HTTP status
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def token_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def introspection_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/introspect"

    def grant(self, user: str) -> str:
        """A refresh token for ``user`` (what the consent flow would have given ops)."""
        token = f"rt-{user}-{next(self.counter)}"
        self.users[token] = user
        return token

    def token_requests(self) -> list[dict[str, str]]:
        with self.lock:
            return [form for path, form in self.requests if path == "/token"]

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append((path, form))
            if path == "/introspect":
                user = self.access.get(form.get("token", ""))
                return 200, {"active": True, "username": user} if user else {"active": False}
            if path != "/token":
                return 404, {"error": "not_found"}
            if self.fail_with:
                return self.fail_with, {"error": "temporarily_unavailable"}
            if (form.get("client_id"), form.get("client_secret")) != (
                self.client_id,
                self.client_secret,
            ):
                return 401, {"error": "invalid_client"}
            user = self.users.pop(form.get("refresh_token", ""), None)
            if form.get("grant_type") != "refresh_token" or user is None:
                return 400, {"error": "invalid_grant"}
            n = next(self.counter)
            access, refresh = f"at-{user}-{n}", f"rt-{user}-{n}"
            self.access[access] = user
            self.users[refresh] = user
            reply: dict[str, Any] = {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "refresh_token": refresh,
            }
            if self.refresh_token_expires_in is not None:
                reply["refresh_token_expires_in"] = self.refresh_token_expires_in
            return 200, reply

    def start(self) -> OAuthServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Bearer ") and "token" not in form:
                    form["token"] = auth[7:]
                status, body = owner.answer(self.path.split("?")[0], form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # Dovecot's introspection_mode = auth / get
                url = urllib.parse.urlsplit(self.path)
                form = dict(urllib.parse.parse_qsl(url.query))
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Bearer "):
                    form["token"] = auth[7:]
                elif url.path.startswith("/introspect/"):
                    form["token"] = url.path.rsplit("/", 1)[1]
                status, body = owner.answer("/introspect", form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
