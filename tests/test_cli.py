"""The CLI as ops use it: ingest sources and exit codes, quarantine, tickets, explain, export."""

from __future__ import annotations

import json
import mailbox
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from maildesk.cli import main
from tests.conftest import write_cli_config
from tests.mailfactory import make_mail, reply_to


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    extra = "[pipeline]\nmax_message_bytes = 100000\n"
    return write_cli_config(tmp_path / "maildesk.toml", tmp_path / "data", database_url, extra)


def cli(config: Path, *args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(
        main, ["--config", str(config), *args], input=stdin, catch_exceptions=False
    )


def test_ingest_files_maildir_mbox_and_stdin_in_order(config: Path, tmp_path: Path) -> None:
    first = make_mail(message_id="i1@c.test", subject="one")
    eml = tmp_path / "one.eml"
    eml.write_bytes(first)
    maildir = mailbox.Maildir(str(tmp_path / "md"), create=True)
    maildir.add(reply_to(first, message_id="i2@c.test"))
    box = mailbox.mbox(str(tmp_path / "box.mbox"))
    box.add(make_mail(message_id="i3@c.test", subject="three", sender="z@c.test"))
    box.add(make_mail(message_id="i4@c.test", subject="four", sender="y@c.test"))
    box.close()
    result = cli(
        config,
        "ingest",
        "--json",
        str(eml),
        str(tmp_path / "md"),
        str(tmp_path / "box.mbox"),
        "-",
        stdin=make_mail(message_id="i5@c.test", subject="five", sender="x@c.test"),
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["stored"] == 5
    assert (summary["created"], summary["threaded"]) == (4, 1)

    again = json.loads(cli(config, "ingest", "--json", str(eml)).output.strip().splitlines()[-1])
    assert again["duplicates"] == 1 and again["created"] == 0


def test_missing_path_exits_66(config: Path, tmp_path: Path) -> None:
    result = cli(config, "ingest", str(tmp_path / "nope.eml"))
    assert result.exit_code == 66
    assert "no such file" in result.output
    assert "1 path(s) could not be read; nothing was stored" in result.output


def test_storage_unavailable_exits_75(tmp_path: Path) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text(
        f'data_dir = "{tmp_path}"\ndatabase_url = "postgresql+psycopg://nobody@127.0.0.1:1/none"\n'
        'installation_secret = "x"\n'
    )
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_mail())
    result = CliRunner().invoke(main, ["--config", str(path), "ingest", str(eml)])
    assert result.exit_code == 75, result.output


def test_quarantine_list_show_retry_and_release(config: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.eml"
    big.write_bytes(make_mail(message_id="big@c.test", body="x" * 200_000 + "\n"))
    summary = json.loads(cli(config, "ingest", "--json", str(big)).output.strip().splitlines()[-1])
    assert summary["quarantined"] == 1
    items = json.loads(cli(config, "quarantine", "list", "--json").output)
    assert len(items) == 1 and "exceeds max_message_bytes" in items[0]["reason"]
    shown = json.loads(cli(config, "quarantine", "show", str(items[0]["id"])).output)
    assert shown["message_id"] == "big@c.test" and shown["events"][-1]["kind"] == "quarantined"
    raw = cli(config, "quarantine", "show", "--raw", str(items[0]["id"])).stdout_bytes
    assert raw == big.read_bytes()

    cli(config, "quarantine", "retry", str(items[0]["id"]))
    assert len(json.loads(cli(config, "quarantine", "list", "--json").output)) == 1, (
        "same limit, same result"
    )

    cli(config, "quarantine", "release", str(items[0]["id"]))
    assert json.loads(cli(config, "quarantine", "list", "--json").output) == []
    tickets = json.loads(cli(config, "tickets", "list", "--json").output)
    assert len(tickets) == 1


def test_tickets_show_explain_and_export(config: Path, tmp_path: Path) -> None:
    first = make_mail(message_id="t1@c.test", subject="Broken VPN", cc="boss@c.test")
    (tmp_path / "a.eml").write_bytes(first)
    (tmp_path / "b.eml").write_bytes(reply_to(first, message_id="t2@c.test"))
    cli(config, "ingest", str(tmp_path / "a.eml"), str(tmp_path / "b.eml"))
    [ticket] = json.loads(cli(config, "tickets", "list", "--json").output)
    shown = json.loads(cli(config, "tickets", "show", str(ticket["number"]), "--json").output)
    for key in (
        "number",
        "subject",
        "status",
        "priority",
        "category",
        "requester",
        "assignee",
        "created_at",
        "messages",
    ):
        assert key in shown
    assert shown["requester"] == "alice@customer.test"
    assert {"email": "boss@c.test", "role": "cc"} in shown["participants"]
    inbound = [m for m in shown["messages"] if m["direction"] == "inbound"]
    assert [m for m in shown["messages"] if m["direction"] == "outbound"] == [], (
        "mail written months ago (an import) is not acknowledged"
    )
    message = inbound[1]
    for key in (
        "message_id",
        "direction",
        "kind",
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "body",
        "attachments",
    ):
        assert key in message
    assert (message["message_id"], message["direction"], message["kind"]) == (
        "t2@c.test",
        "inbound",
        "customer",
    )

    explained = json.loads(cli(config, "explain", "<t2@c.test>", "--json").output)
    kinds = [e["kind"] for e in explained[0]["events"]]
    assert "guard" in kinds and "threaded" in kinds
    assert any("In-Reply-To/References" in e["reason"] for e in explained[0]["events"])

    out = tmp_path / "export.jsonl"
    cli(config, "export", "-o", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["schema"] == 1 and len(lines[0]["messages"]) == 2


def test_export_to_a_folder_that_does_not_exist_exits_73_naming_the_file(
    config: Path, tmp_path: Path
) -> None:
    target = tmp_path / "no-such-dir" / "x.jsonl"
    result = CliRunner().invoke(main, ["--config", str(config), "export", "-o", str(target)])
    assert result.exit_code == 73, result.output  # EX_CANTCREAT, as `report -o` exits
    assert f"maildesk: cannot write {target}: No such file or directory" in result.output
    assert "Traceback" not in result.output and not target.parent.exists()


@pytest.mark.parametrize(
    "args", [("quarantine", "show"), ("quarantine", "retry"), ("tickets", "show")]
)
def test_an_id_past_any_database_row_is_a_usage_error(config: Path, args: tuple[str, str]) -> None:
    """A 20-digit id overflowed SQLite's integer binding with a traceback."""
    huge = "99999999999999999999"
    result = CliRunner().invoke(main, ["--config", str(config), *args, huge])
    assert result.exit_code == 2, result.output
    assert huge in result.output and "Traceback" not in result.output


def test_hostile_attachment_name_is_display_text_only(config: Path, tmp_path: Path) -> None:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = (
        "a@c.test",
        "support@example.com",
        "att",
        "<att@c.test>",
    )
    msg.set_content("see attached")
    msg.add_attachment(
        b"MZ\x00evil", maintype="application", subtype="octet-stream", filename="../../etc/passwd"
    )
    (tmp_path / "att.eml").write_bytes(msg.as_bytes())
    cli(config, "ingest", str(tmp_path / "att.eml"))
    [ticket] = json.loads(cli(config, "tickets", "list", "--json").output)
    shown = json.loads(cli(config, "tickets", "show", str(ticket["number"]), "--json").output)
    [attachment] = shown["messages"][0]["attachments"]
    assert attachment["size"] == len(b"MZ\x00evil")
    assert attachment["filename"].endswith("passwd")
    assert not (tmp_path / "etc").exists() and not Path("/etc/passwd.maildesk").exists()
    assert not list((tmp_path / "data").rglob("passwd")), "a file name from a mail is never a path"


def test_control_characters_in_mail_are_shown_escaped_not_sent_to_the_terminal(
    config: Path, tmp_path: Path
) -> None:
    raw = (
        b"From: Mallory <m@evil.test>\r\nTo: support@example.com\r\n"
        b"Subject: =?utf-8?q?Invoice=1B[2J=1B[31mURGENT=07?=\r\n"
        b"Message-ID: <esc1@evil.test>\r\nDate: Mon, 2 Mar 2026 08:00:00 +0000\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Pay now\x1b]0;pwned\x07\r\n\tindented line\r\n"
    )
    (tmp_path / "esc.eml").write_bytes(raw)
    assert cli(config, "ingest", str(tmp_path / "esc.eml")).exit_code == 0
    [ticket] = json.loads(cli(config, "tickets", "list", "--json").output)
    assert "\x1b" in ticket["subject"]  # stored as sent: only the terminal output is escaped
    listed = cli(config, "tickets", "list").output
    shown = cli(config, "tickets", "show", str(ticket["number"])).output
    for output in (listed, shown):
        assert "\x1b" not in output and "\x07" not in output
        assert "Invoice\\x1b[2J\\x1b[31mURGENT\\x07" in output
    assert "Pay now\\x1b]0;pwned\\x07\n\tindented line" in shown  # lines and tabs kept


def test_an_unusable_data_dir_is_a_line_of_check_and_exit_78_naming_file_and_key(
    tmp_path: Path,
) -> None:
    """No installation secret configured and a data_dir that cannot be made: no traceback."""
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "maildesk.toml"
    path.write_text(f'data_dir = "{tmp_path / "a-file" / "data"}"\n')
    checked = CliRunner().invoke(main, ["--config", str(path), "check"])
    assert checked.exception is None or isinstance(checked.exception, SystemExit), checked.output
    assert checked.exit_code == 1
    assert "FAIL installation secret: cannot generate one in " in checked.output
    listed = CliRunner().invoke(main, ["--config", str(path), "tickets", "list"])
    assert listed.exit_code == 78
    assert f"{path}: data_dir: cannot create or write {tmp_path / 'a-file'}" in listed.output
    assert "[Errno" not in listed.output


def test_templates_preview_is_the_mail_as_sent_from_the_address_it_came_to(
    tmp_path: Path, database_url: str
) -> None:
    """[[address]] from_name signs the real mail; the preview must show the same From."""
    extra = (
        '[[address]]\naddress = "billing@example.com"\nqueue = "billing"\n'
        'from_name = "Example Billing"\n'
    )
    config = write_cli_config(tmp_path / "maildesk.toml", tmp_path / "data", database_url, extra)
    eml = tmp_path / "m.eml"
    now = format_datetime(datetime.now(UTC))  # a fresh mail is acknowledged
    eml.write_bytes(make_mail(message_id="pv@c.test", to="billing@example.com", date=now))
    assert cli(config, "ingest", str(eml)).exit_code == 0
    assert cli(config, "outbox", "drain").exit_code == 0
    sent = (tmp_path / "data" / "outbox-maildir" / "new").iterdir()
    assert "From: Example Billing <billing@example.com>" in next(sent).read_text()
    preview = cli(config, "templates", "preview", "ack", "--ticket", "1")
    assert preview.exit_code == 0, preview.output
    assert "From: Example Billing <billing@example.com>" in preview.output
    # Named as `maildesk check` lists it ("template ack.customer") works too.
    named = cli(config, "templates", "preview", "ack.customer", "--ticket", "1")
    assert named.exit_code == 0, named.output
    assert "From: Example Billing <billing@example.com>" in named.output


def test_tickets_show_of_a_mail_without_a_sender_says_dash_as_the_list_does(
    config: Path, tmp_path: Path
) -> None:
    headerless = tmp_path / "notes.txt"  # a file ingested by mistake: no From at all
    headerless.write_bytes(b"Subject: x\n\njust some notes\n")
    assert cli(config, "ingest", str(headerless)).exit_code == 0
    shown = cli(config, "tickets", "show", "1")
    assert "requester -" in shown.output and "None" not in shown.output
