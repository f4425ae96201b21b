"""DKIM-signed outbound mail, verified as a receiver would against the record ops publish.

Without a signature, mail sent through a plain relay fails DMARC at Gmail and
Outlook, and acknowledgements and answers land in the customers' spam folder.
Every mail here is verified with dkimpy against the TXT record that the real
``maildesk dkim record`` prints, looked up through a dnsfunc (no network).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Blob, Outbox, OutboxState
from tests.agents.agenthelp import agent_app, client_reply, reply_address, to
from tests.conftest import FrozenClock, make_settings
from tests.daemon_harness import RelaySink
from tests.mailfactory import deliver, make_mail

REPO = Path(__file__).resolve().parents[2]
OUTLOOK_ID = "DB9PR08MB6588D2C8E8B2A0A1B7E9F6C3C4F{:02d}@DB9PR08MB6588.eurprd08.prod.outlook.com"


def openssl_key(path: Path, command: str, *args: str) -> Path:
    """A private key made by openssl for this test run (never a file of the repository)."""
    subprocess.run(["openssl", command, "-out", str(path), *args], check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return openssl_key(tmp_path_factory.mktemp("dkim") / "example.com.key", "genrsa", "2048")


def key_table(key: Path, domain: str = "example.com", selector: str = "md1", **more: str) -> str:
    lines = [f'domain = "{domain}"', f'selector = "{selector}"', f'private_key_file = "{key}"']
    lines += [f'{name} = "{value}"' for name, value in more.items()]
    return "[[outbound.dkim]]\n" + "\n".join(lines) + "\n"


def maildesk(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``maildesk`` command, in its own process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config.parent,
        env=env,
        check=False,
    )


def cli_config(tmp_path: Path, addresses: tuple[str, ...], keys: str) -> Path:
    path = tmp_path / "maildesk.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "cli-data"}"\ninstallation_secret = "dkim-test"\n'
        f"support_addresses = {list(addresses)!r}\n".replace("'", '"')
        + keys,
        encoding="utf-8",
    )
    return path


def published(config: Path) -> dict[str, str]:
    """The records ``maildesk dkim record`` says to publish, as DNS would serve them:
    the zone file's quoted strings of one record joined."""
    result = maildesk(config, "dkim", "record")
    assert result.returncode == 0, result.stderr
    records = {}
    for line in result.stdout.splitlines():
        if line.startswith(";") or not line.strip():
            continue
        name, _, rest = line.partition(" IN TXT ")
        records[name.rstrip(".")] = "".join(re.findall(r'"([^"]*)"', rest))
    return records


def dns(records: dict[str, str]) -> Callable[..., bytes]:
    def lookup(name: bytes, timeout: float = 5) -> bytes:
        return records.get(name.decode().rstrip("."), "").encode()

    return lookup


def verifies(raw: bytes, records: dict[str, str]) -> bool:
    return bool(dkim.verify(raw, dnsfunc=dns(records)))


def signatures(raw: bytes) -> list[dict[bytes, bytes]]:
    """The DKIM-Signature tags of ``raw``, topmost first."""
    found = []
    for name, value in dkim.rfc822_parse(raw)[0]:
        if name.lower() == b"dkim-signature":
            found.append(dkim.util.parse_tag_value(b"".join(value.split())))
    return found


def stored_blobs(app: App) -> dict[str, bytes]:
    with app.db.transaction() as session:
        rows = session.execute(
            select(Blob.sha256, Blob.data).join(Outbox, Outbox.raw_sha256 == Blob.sha256)
        ).all()
        return {sha: bytes(data) for sha, data in rows}


@pytest.fixture
def signing(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: RelaySink, rsa_key: Path
) -> Iterator[tuple[App, dict[str, str]]]:
    """An installation that signs for example.com and sends through the relay; its records."""
    addresses = ("support@example.com", "billing@example.com")
    config = cli_config(tmp_path, addresses, key_table(rsa_key))
    dkim_keys = [{"domain": "example.com", "selector": "md1", "private_key_file": str(rsa_key)}]
    outbound = {"transport": "smtp", "relay_port": relay.port, "dkim": dkim_keys}
    app = App.build(make_settings(tmp_path, database_url, outbound=outbound), clock=clock)
    yield app, published(config)
    app.db.dispose()


def test_an_acknowledgement_through_a_real_relay_verifies_and_any_change_breaks_it(
    signing: tuple[App, dict[str, str]], relay: RelaySink
) -> None:
    app, records = signing
    deliver(app, make_mail())
    assert app.sender("n1").drain().sent == 1
    [ack] = relay.received
    assert verifies(ack.raw, records)
    [tags] = signatures(ack.raw)
    assert (tags[b"d"], tags[b"s"], tags[b"c"]) == (b"example.com", b"md1", b"relaxed/relaxed")
    signed = tags[b"h"].lower().split(b":")
    assert signed.count(b"from") == 2  # oversigned: a second From cannot be added
    assert {b"to", b"subject", b"date", b"message-id", b"reply-to", b"references"} <= set(signed)

    head, _, body = ack.raw.partition(b"\r\n\r\n")
    changed = [
        ack.raw.replace(b"Subject: [Support #1]", b"Subject: [Support #2]"),
        head + b"\r\n\r\n" + body.replace(b"[ref:md-1-", b"[ref:md-2-", 1),  # the marker
        head + b"\r\nFrom: Support <support@evil.test>\r\n\r\n" + body,  # a second From
    ]
    assert b"[ref:md-1-" in body
    for raw in changed:
        assert raw != ack.raw
        assert not verifies(raw, records)


def test_an_agents_answer_with_non_ascii_text_an_attachment_and_long_references_verifies(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: RelaySink, rsa_key: Path
) -> None:
    config = cli_config(tmp_path, ("support@example.com",), key_table(rsa_key))
    dkim_keys = [{"domain": "example.com", "selector": "md1", "private_key_file": str(rsa_key)}]
    outbound = {"transport": "smtp", "relay_port": relay.port, "dkim": dkim_keys}
    app = agent_app(tmp_path, database_url, clock, outbound=outbound)
    try:
        # Alice writes from Outlook, and writes again: the answer names all of it.
        subject = "Rechnung für März – bitte prüfen"
        sender = "Jürgen Müller <alice@customer.test>"
        deliver(app, make_mail(sender=sender, subject=subject, message_id=OUTLOOK_ID.format(0)))
        [ack] = to(app, "alice@customer.test", "ack")
        ack_id = str(ack.msg["Message-ID"]).strip("<>")
        for n in range(1, 7):
            again = make_mail(
                sender=sender,
                subject=f"AW: [Support #1] {subject}",
                message_id=OUTLOOK_ID.format(n),
                in_reply_to=ack_id,
                references=[OUTLOOK_ID.format(0), ack_id],
            )
            deliver(app, again)
        notice = to(app, "bob@agents.test")[-1]
        text = "Hallo Herr Müller,\n\ndie Rechnung ist bezahlt. Grüße aus Köln – 東京支店\n"
        pdf = b"%PDF-1.4\n" + bytes(range(256)) * 64
        raw = client_reply(notice, text, attachment=("Rechnung März.pdf", "application/pdf", pdf))
        deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")
        app.sender("n1").drain()

        mails = [r for r in relay.received if r.rcpt_tos == ["alice@customer.test"]]
        [answer] = [m for m in mails if m.message["Auto-Submitted"] == "no"]
        assert b"Content-Disposition: attachment" in answer.raw
        assert all(byte < 0x80 for byte in answer.raw)
        references_lines = re.search(rb"\r\nReferences:.*?\r\n(?=\S)", answer.raw, re.S)
        assert references_lines is not None and references_lines[0].count(b"\r\n") > 3
        assert verifies(answer.raw, published(config))
    finally:
        app.db.dispose()


@pytest.mark.parametrize(
    ("address", "signed_by"),
    [
        ("help@eu.example.com", b"example.com"),  # a subdomain aligns with example.com
        ("help@other.test", None),  # no key: delivered all the same, unsigned
    ],
)
def test_mail_is_signed_by_the_aligned_domain_and_otherwise_sent_unsigned(
    tmp_path: Path,
    database_url: str,
    clock: FrozenClock,
    relay: RelaySink,
    rsa_key: Path,
    caplog: pytest.LogCaptureFixture,
    address: str,
    signed_by: bytes | None,
) -> None:
    addresses = ("support@example.com", address)
    config = cli_config(tmp_path, addresses, key_table(rsa_key))
    dkim_keys = [{"domain": "example.com", "selector": "md1", "private_key_file": str(rsa_key)}]
    outbound = {"transport": "smtp", "relay_port": relay.port, "dkim": dkim_keys}
    settings = make_settings(tmp_path, database_url, support_addresses=addresses, outbound=outbound)
    app = App.build(settings, clock=clock)
    try:
        deliver(app, make_mail(to=address), rcpt=(address,))
        with caplog.at_level(logging.INFO, logger="maildesk.outbound"):
            assert app.sender("n1").drain().sent == 1
        [ack] = relay.received
        assert address.encode() in ack.raw.partition(b"\r\n\r\n")[0]
        if signed_by is None:
            assert signatures(ack.raw) == []
            assert "'other.test' has no DKIM key configured: sent unsigned" in caplog.text
        else:
            assert [tags[b"d"] for tags in signatures(ack.raw)] == [signed_by]
            assert verifies(ack.raw, published(config))
    finally:
        app.db.dispose()


def test_the_local_maildir_gets_signed_mail_too(
    tmp_path: Path, database_url: str, clock: FrozenClock, rsa_key: Path
) -> None:
    config = cli_config(tmp_path, ("support@example.com",), key_table(rsa_key))
    dkim_keys = [{"domain": "example.com", "selector": "md1", "private_key_file": str(rsa_key)}]
    maildir = tmp_path / "sent"
    outbound: dict[str, Any] = {"maildir": str(maildir), "dkim": dkim_keys}
    settings = make_settings(tmp_path, database_url, outbound=outbound)
    app = App.build(settings, clock=clock)
    try:
        deliver(app, make_mail())
        assert app.sender("n1").drain().sent == 1
        [path] = (maildir / "new").iterdir()
        assert verifies(path.read_bytes(), published(config))
    finally:
        app.db.dispose()


def test_a_retry_is_signed_afresh_and_a_blob_shared_by_two_rows_stays_as_stored(
    signing: tuple[App, dict[str, str]], relay: RelaySink, clock: FrozenClock
) -> None:
    """Signing happens on the bytes handed to the relay, never in the outbox: each
    attempt carries one signature, and the stored blob (which rows may share, being
    stored by its hash) is the mail as composed."""
    app, records = signing
    deliver(app, make_mail())
    with app.db.transaction() as session:
        first = session.scalars(select(Outbox)).one()
        session.add(
            Outbox(
                created_at=first.created_at,
                ticket_id=first.ticket_id,
                purpose=first.purpose,
                message_id="copy-" + first.message_id,
                envelope_from=first.envelope_from,
                recipients=["bob@customer.test"],
                raw_sha256=first.raw_sha256,
                state=OutboxState.QUEUED,
                next_attempt_at=first.next_attempt_at,
            )
        )
    before = stored_blobs(app)
    relay.reply = "451 4.3.0 try again later"
    assert app.sender("n1").drain().retried == 2
    relay.reply = "250 OK"
    clock.advance(hours=1)
    assert app.sender("n1").drain().sent == 2

    assert sorted(r.rcpt_tos[0] for r in relay.received) == [
        "alice@customer.test",
        "bob@customer.test",
    ]
    for mail in relay.received:
        assert len(signatures(mail.raw)) == 1
        assert verifies(mail.raw, records)
    after = stored_blobs(app)
    assert after == before and len(after) == 1
    [(sha, data)] = after.items()
    assert hashlib.sha256(data).hexdigest() == sha
    assert b"DKIM-Signature" not in data


def test_rsa_and_ed25519_keys_of_one_domain_both_sign(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: RelaySink, rsa_key: Path
) -> None:
    """RFC 8463: Ed25519 beside RSA (receivers that do not know Ed25519 use the RSA one)."""
    ed_key = openssl_key(tmp_path / "ed25519.key", "genpkey", "-algorithm", "ed25519")
    keys = key_table(rsa_key) + key_table(ed_key, selector="md1e", algorithm="ed25519")
    config = cli_config(tmp_path, ("support@example.com",), keys)
    dkim_keys = [
        {"domain": "example.com", "selector": "md1", "private_key_file": str(rsa_key)},
        {
            "domain": "example.com",
            "selector": "md1e",
            "private_key_file": str(ed_key),
            "algorithm": "ed25519",
        },
    ]
    outbound = {"transport": "smtp", "relay_port": relay.port, "dkim": dkim_keys}
    app = App.build(make_settings(tmp_path, database_url, outbound=outbound), clock=clock)
    try:
        deliver(app, make_mail())
        app.sender("n1").drain()
        [ack] = relay.received
        assert [t[b"a"] for t in signatures(ack.raw)] == [b"rsa-sha256", b"ed25519-sha256"]
        records = published(config)
        verifier = dkim.DKIM(ack.raw)
        assert all(verifier.verify(idx=i, dnsfunc=dns(records)) for i in range(2))
    finally:
        app.db.dispose()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "cannot read {file}: No such file or directory"),
        ("garbage", "{file} is not a private key in PEM, e.g. from `openssl genrsa 2048`"),
        ("public", "{file} is not a private key in PEM"),
        ("small", "{file} holds an RSA key of 512 bits"),
        ("encrypted", "{file} is an encrypted private key; give it unencrypted"),
        ("shared", "{file} is open to every user (mode 0644): chmod o-rwx {file}"),
    ],
)
def test_an_unusable_key_stops_run_and_check_with_exit_78_naming_it(
    tmp_path: Path, rsa_key: Path, case: str, reason: str
) -> None:
    key = tmp_path / f"{case}.key"
    if case == "garbage":
        key.write_text("not a key at all\n")
    elif case == "public":
        subprocess.run(
            ["openssl", "rsa", "-in", str(rsa_key), "-pubout", "-out", str(key)],
            check=True,
            capture_output=True,
        )
    elif case == "small":
        openssl_key(key, "genrsa", "512")
    elif case == "encrypted":
        openssl_key(key, "genrsa", "-aes128", "-passout", "pass:secret", "2048")
    elif case == "shared":
        key.write_bytes(rsa_key.read_bytes())
    if key.exists():
        key.chmod(0o644 if case == "shared" else 0o600)
    config = cli_config(
        tmp_path, ("support@example.com",), "[[listeners]]\nport = 0\n" + key_table(key)
    )
    expected = f"{config}: outbound.dkim.0.private_key_file: " + reason.format(file=key)
    secret = key.read_bytes().splitlines()[1:2] if key.exists() else []
    for command in ("run", "check"):
        result = maildesk(config, command)
        shown = result.stdout + result.stderr
        assert result.returncode == 78, shown
        assert expected in shown, shown
        assert "Traceback" not in shown
        assert not any(line.decode() in shown for line in secret)  # the key is never shown


def test_a_signing_domain_none_of_our_addresses_use_is_a_config_error(
    tmp_path: Path, rsa_key: Path
) -> None:
    config = cli_config(
        tmp_path, ("support@example.com",), key_table(rsa_key, domain="example.org")
    )
    result = maildesk(config, "check")
    assert result.returncode == 78, result.stdout + result.stderr
    assert (
        f"{config}: outbound.dkim.0.domain: no support address is at 'example.org'" in result.stdout
    )
