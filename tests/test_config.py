"""Configuration: the example loads, errors name file and key, and exit with 78."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from maildesk.config import ConfigError, Settings, load_settings, resolve_installation_secret

REPO = Path(__file__).resolve().parents[1]


def test_example_config_loads_and_documents_every_key() -> None:
    settings = load_settings(str(REPO / "maildesk.toml.example"))
    assert settings.support_addresses == ("support@localhost",)
    text = (REPO / "maildesk.toml.example").read_text()

    def keys(model: type, prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            if name == "source":
                continue
            # A section, or a list or table of them ([[listeners]], [calendars.x]).
            inner = [field.annotation, *get_args(field.annotation)]
            models = [t for t in inner if isinstance(t, type) and hasattr(t, "model_fields")]
            if models:
                found.append(name)
                found += keys(models[0], f"{name}.")
            else:
                found.append(name)
        return found

    missing = [k for k in keys(Settings) if k not in text]
    assert missing == [], f"keys not documented in maildesk.toml.example: {missing}"


def test_no_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILDESK_CONFIG", raising=False)
    settings = load_settings(None)
    assert settings.source == "<defaults>"
    assert settings.effective_database_url.endswith("var/maildesk.sqlite3")


def test_data_dir_override_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILDESK_DATA_DIR", str(tmp_path / "elsewhere"))
    assert load_settings(None).data_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ("unknown_key = 1\n", "unknown_key", "unknown key"),
        ("[threading]\nreopen_window_days = 'soon'\n", "threading.reopen_window_days", "number"),
        (
            "[threading]\nsubject_window_days = -1\n",
            "threading.subject_window_days",
            "greater than",
        ),
        ("support_addresses = ['not an address']\n", "support_addresses", "not a plain address"),
        ("[[listeners]]\nprotocol = 'pop3'\n", "listeners.0.protocol", "pattern"),
        ("[outbound]\nrelay_security = 'maybe'\n", "outbound.relay_security", "pattern"),
        (
            "[spam]\ntrusted_verdict_headers = ['X Spam']\n",
            "spam.trusted_verdict_headers",
            "not a header name",
        ),
        (  # whose Authentication-Results to believe?
            "[spam]\ntrusted_verdict_headers = ['Authentication-Results']\n",
            "spam.trusted_verdict_headers",
            "name it in agent_mail.trusted_authserv_ids",
        ),
        ("[routing]\ndefault_group = 'nobody'\n", "routing.default_group", "unknown group"),
        (
            "[routing]\nwaiting_interval_seconds = 0\n",
            "routing.waiting_interval_seconds",
            "greater than",
        ),
        (  # INBOX is INBOX in any case: moving into the folder read would loop
            "[[imap]]\nhost = 'h'\nuser = 'u'\npassword = 'p'\n"
            "post_action = 'move'\nmove_to = 'inbox'\n",
            "imap.0",
            "move_to must not be one of the folders read",
        ),
        ("[[listeners]]\nmax_junk_commands = 0\n", "listeners.0.max_junk_commands", "greater"),
        ("[[listeners]]\nmax_errors = 'many'\n", "listeners.0.max_errors", "integer"),
        ("[[listeners]]\ntimeout_seconds = 0\n", "listeners.0.timeout_seconds", "greater"),
        (
            "[[listeners]]\nstress_timeout_seconds = -1\n",
            "listeners.0.stress_timeout_seconds",
            "greater",
        ),
        ("[[listeners]]\nmin_data_rate = 0\n", "listeners.0.min_data_rate", "greater"),
        (
            "[[listeners]]\nmax_session_seconds = -5\n",
            "listeners.0.max_session_seconds",
            "greater",
        ),
        (  # no users file: nobody to check, everybody let in
            "[[listeners]]\nrequire_auth = true\n",
            "listeners.0.auth_users_file",
            "require_auth = true needs the file of users",
        ),
        # Each of these was taken, and every mail then quarantined (IndexError,
        # OverflowError), or the daemon crashed with a traceback at start.
        ("support_addresses = []\n", "support_addresses", "at least one address"),
        (
            "[[listeners]]\nport = 2600\n[[listeners]]\nprotocol = 'lmtp'\nport = 2600\n",
            "listeners.1",
            "listens on 127.0.0.1:2600, as listeners.0 does",
        ),
        ("support_addresses = ['support@']\n", "support_addresses", "not a plain address"),
        ("support_addresses = ['@example.com']\n", "support_addresses", "not a plain address"),
        (
            "[[agents]]\nname = 'alice'\naddresses = ['alice@']\n",
            "agents.0.addresses",
            "not a plain address",
        ),
        (
            "[threading]\nsubject_window_days = 1e300\n",
            "threading.subject_window_days",
            "ten years",
        ),
        (
            "[pipeline]\nclaim_timeout_seconds = 1e300\n",
            "pipeline.claim_timeout_seconds",
            "ten years",
        ),
        ("[outbound]\ngive_up_after_hours = 1e9\n", "outbound.give_up_after_hours", "ten years"),
        (  # the filter turned itself off at the first mail
            "[spam]\nseed_path = '/nonexistent/seed.npz'\n",
            "spam.seed_path",
            "no such file: /nonexistent/seed.npz",
        ),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, toml: str, key: str, reason: str) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as error:
        load_settings(str(path))
    assert error.value.file == str(path)
    assert error.value.key == key
    assert reason in error.value.reason


def test_files_the_config_names_are_checked_at_start(tmp_path: Path) -> None:
    """A CA bundle that is not one made the IMAP connection fail forever, at every
    attempt; a maildir that is a file failed every delivery to it."""
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    imap = "[[imap]]\nhost = 'h'\nuser = 'u'\npassword = 'p'\nca_file = '{}'\n"
    cases = [
        (imap.format(junk), "imap.0.ca_file", f"no CA certificate (PEM) can be read from {junk}"),
        (imap.format(tmp_path / "none.pem"), "imap.0.ca_file", "no such file"),
        (f"[outbound]\nmaildir = '{junk}'\n", "outbound.maildir", f"not a directory: {junk}"),
    ]
    for toml, key, reason in cases:
        path = tmp_path / "maildesk.toml"
        path.write_text(toml)
        with pytest.raises(ConfigError) as error:
            load_settings(str(path))
        assert (error.value.key, error.value.file) == (key, str(path))
        assert reason in error.value.reason


def test_an_empty_config_path_is_no_request_for_the_defaults() -> None:
    """``--config "$MAILDESK_TOML"`` with the variable unset ran on the built-in defaults."""
    result = subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", "", "tickets", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 78
    assert "--config: an empty path names no file" in result.stderr


def test_broken_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text("data_dir = \n")
    with pytest.raises(ConfigError) as error:
        load_settings(str(path))
    assert str(path) in str(error.value) and "TOML" in str(error.value)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[pipeline]\nmax_attempts = 0\n", "pipeline.max_attempts"),
        ("[[listeners]]\nmax_session_seconds = 0\n", "listeners.0.max_session_seconds"),
        ("[pipeline]\nclaim_timeout_seconds = 1e300\n", "pipeline.claim_timeout_seconds"),
    ],
)
def test_bad_config_exits_78_with_file_and_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text(toml)
    result = subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(path), "tickets", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 78
    assert f"{path}: {key}:" in result.stderr


def test_secret_from_file_env_or_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    secret_file.chmod(0o600)
    settings = Settings(data_dir=tmp_path, installation_secret_file=secret_file)
    assert resolve_installation_secret(settings) == b"from-a-file"

    monkeypatch.setenv("MD_SECRET", "from-env")
    assert (
        resolve_installation_secret(
            Settings(data_dir=tmp_path, installation_secret_env="MD_SECRET")
        )
        == b"from-env"
    )

    with pytest.raises(ConfigError) as error:
        resolve_installation_secret(
            Settings(data_dir=tmp_path, installation_secret_env="MD_UNSET_VAR")
        )
    assert error.value.key == "installation_secret_env"

    generated = resolve_installation_secret(Settings(data_dir=tmp_path / "d"))
    assert len(generated) >= 32
    assert resolve_installation_secret(Settings(data_dir=tmp_path / "d")) == generated, (
        "stable across runs"
    )
    assert (tmp_path / "d" / "installation-secret").stat().st_mode & 0o077 == 0


def test_two_processes_generating_the_secret_at_once_both_use_the_one_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon and ``ingest -`` start first together: both find no secret and make one.
    The one that came second must not replace the first's (the first then signed reply
    addresses with a secret nobody has) but use it."""
    settings = Settings(data_dir=tmp_path / "d")
    first = resolve_installation_secret(settings)
    # The second process looked before the first had written its file.
    monkeypatch.setattr(Path, "exists", lambda self: False)
    second = resolve_installation_secret(settings)
    monkeypatch.undo()

    on_disk = (tmp_path / "d" / "installation-secret").read_text().strip().encode()
    assert first == second == on_disk
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["installation-secret"]


def test_check_reports_each_part_and_fails_on_an_unreachable_relay(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'data_dir = "{tmp_path / "d"}"\n[[listeners]]\nport = 0\n')
    result = subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(good), "check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    assert "ok   database" in result.stdout and "ok   outbound maildir" in result.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'data_dir = "{tmp_path / "d"}"\n[[listeners]]\nport = 0\n'
        '[outbound]\ntransport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = 1\nrelay_timeout_seconds = 2\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(bad), "check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "FAIL relay 127.0.0.1:1" in result.stdout
