"""`maildesk check` logs in to each configured IMAP mailbox, as the poller would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dovecot_harness import Dovecot, dovecot_server
from tests.intake.test_imap import mail


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server("support", "sales") as server:
        yield server


def block(dovecot: Dovecot, user: str, **extra: str) -> str:
    lines = [
        "[[imap]]",
        f'name = "{user}"',
        'host = "127.0.0.1"',
        f"port = {dovecot.port}",
        'security = "none"',
        f'user = "{user}"',
        *(
            f'{key} = "{value}"'
            for key, value in {"password": dovecot.users[user], **extra}.items()
        ),
    ]
    return "\n".join(lines) + "\n"


def check(tmp_path: Path, *blocks: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "maildesk.toml"
    config.write_text(f'data_dir = "{tmp_path / "d"}"\n[[listeners]]\nport = 0\n' + "".join(blocks))
    return subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(config), "check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_check_logs_in_and_counts_the_folders_it_will_read(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    for n in range(2):
        dovecot.append("support", mail(n))
    result = check(tmp_path, block(dovecot, "support"))
    assert result.returncode == 0, result.stdout
    assert f"ok   imap support (127.0.0.1:{dovecot.port}): logged in; 'INBOX' holds 2 messages" in (
        result.stdout
    )


def test_check_fails_on_a_wrong_password_and_on_a_folder_that_does_not_exist(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    result = check(
        tmp_path,
        block(dovecot, "support", password="N0t-the-Passw0rd"),
        block(dovecot, "sales", junk_folder="Junk"),
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("FAIL imap support") and "login failed" in line for line in lines), (
        result.stdout
    )
    assert any(
        line.startswith("FAIL imap sales") and "there is no folder 'Junk'" in line for line in lines
    ), result.stdout
    assert "N0t-the-Passw0rd" not in result.stdout  # the password is never shown
