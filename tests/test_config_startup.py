"""Bad config found before anything starts: exit 78 naming file, key and reason, no traceback.

Each case here used to pass the config check and then fail later: with a
traceback (and exit 1, which systemd restarts in a loop), at the first mail,
at the first SLA sweep, or never visibly at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from maildesk.cli import main
from tests.mailfactory import make_mail

REPO = Path(__file__).resolve().parents[1]
AGENT = '[[agents]]\nname = "alice"\naddresses = ["alice@example.com"]\n'


def _config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "maildesk.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\ninstallation_secret = "startup-test"\n'
        'support_addresses = ["support@example.com"]\n' + extra,
        encoding="utf-8",
    )
    return path


def _cli(path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(path), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result.exit_code, result.output


def _run_daemon(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`maildesk run` as systemd starts it; a daemon that starts anyway times out the test."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        (
            '[[groups]]\nname = "L1"\nescalates_to = "L2"\n',
            "groups.0.escalates_to",
            "escalates to unknown group 'L2'",
        ),
        (
            '[[groups]]\nname = "L1"\n' + AGENT + 'groups = ["L1", "L9"]\n',
            "agents.0.groups",
            "unknown group 'L9'",
        ),
        ('[[groups]]\nname = "L1"\nlead = "bob"\n' + AGENT, "groups.0.lead", "unknown lead 'bob'"),
        (
            '[[groups]]\nname = "L1"\nescalates_to = "L2"\n'
            '[[groups]]\nname = "L2"\nescalates_to = "L1"\n',
            "groups.0.escalates_to",
            "escalation from 'L1' comes back to it (L1 -> L2 -> L1)",
        ),
        (
            '[[groups]]\nname = "L1"\nescalates_to = "L1"\n',
            "groups.0.escalates_to",
            "escalation from 'L1' comes back to it (L1 -> L1)",
        ),
        (
            '[[groups]]\nname = "L1"\ndefault_responsible = "bob"\n' + AGENT,
            "groups.0.default_responsible",
            "unknown default_responsible 'bob'",
        ),
        (
            AGENT + '[[agents]]\nname = "bob"\naddresses = ["ALICE@example.com"]\n',
            "agents.1.addresses",
            "'alice@example.com' appears twice",
        ),
        (
            '[[organisations]]\nname = "ACME"\ndomains = ["acme.example"]\n'
            '[[organisations]]\nname = "Initech"\ndomains = ["initech.example"]\n'
            'sla_policy = "gold"\n',
            "organisations.1.sla_policy",
            "unknown sla_policy 'gold'",
        ),
        (
            '[[organisations]]\nname = "ACME"\ndomains = ["acme.example"]\ntier = "gold"\n'
            '[[sla.policies]]\nname = "vip"\nfirst_response = { minutes = 60, basis = "calendar" }\n'
            '[[sla.rules]]\npolicy = "vip"\ntier = "Gold"\n',
            "sla.rules.0.tier",
            "unknown tier 'Gold'",
        ),
    ],
)
def test_cross_references_in_lists_of_tables_name_the_key(
    tmp_path: Path, extra: str, key: str, reason: str
) -> None:
    path = _config(tmp_path, extra)
    code, output = _cli(path, "check")
    assert code == 78, output
    assert f"{path}: {key}: " in output and reason in output


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        # Notifications for alice would go to the support address and come back as our mail.
        ('[[agents]]\nname = "alice"\naddresses = ["support@example.com"]\n', "agents.0.addresses"),
        (
            '[[address]]\naddress = "billing@example.com"\n'
            '[[agents]]\nname = "alice"\naddresses = ["Billing@example.com"]\n',
            "agents.0.addresses",
        ),
        # The daily spam digest mailed to ourselves: filed as our own mail, read by nobody.
        ('[spam]\ndigest_to = "support+spam@example.com"\n', "spam.digest_to"),
    ],
)
def test_mail_to_our_own_addresses_is_a_config_error(tmp_path: Path, extra: str, key: str) -> None:
    path = _config(tmp_path, extra)
    code, output = _cli(path, "tickets", "list")
    assert code == 78, output
    assert f"{path}: {key}: " in output and "our own support or internal addresses" in output


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgres://maildesk@db.example/maildesk", "unknown database kind 'postgres'"),
        ("mysql://maildesk@db.example/maildesk", "no driver for 'mysql' is installed"),
        ("not a url", "not a database URL"),
    ],
)
def test_unusable_database_url_is_a_config_error_not_a_traceback(
    tmp_path: Path, url: str, reason: str
) -> None:
    path = _config(tmp_path, f'database_url = "{url}"\n')
    code, output = _cli(path, "tickets", "list")
    assert code == 78, output
    assert f"{path}: database_url: " in output and reason in output
    assert "maildesk@" not in output, "the URL (and any password in it) is not echoed"


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        (  # a password every user of the machine may read is no secret
            '[outbound]\ntransport = "smtp"\nrelay_user = "u"\nrelay_password_file = "{shared}"\n',
            "outbound.relay_password_file",
            "is open to every user (mode 0644): chmod o-rwx",
        ),
        (
            '[[listeners]]\nport = 0\nrequire_auth = true\nauth_users_file = "{shared}"\n',
            "listeners.0.auth_users_file",
            "is open to every user (mode 0644)",
        ),
        (
            '[outbound]\ntransport = "smtp"\nrelay_user = "u"\nrelay_password_file = "{missing}"\n',
            "outbound.relay_password_file",
            "cannot read",
        ),
        (
            '[[imap]]\nhost = "127.0.0.1"\nport = 1\nuser = "u"\npassword_file = "{missing}"\n',
            "imap.0.password_file",
            "cannot read",
        ),
        ('[[imap]]\nhost = "127.0.0.1"\nport = 1\nuser = "u"\n', "imap.0.password", "no password"),
        (
            '[[listeners]]\nport = 0\ntls_cert = "{missing}"\ntls_key = "{missing}"\n',
            "listeners.0.tls_cert",
            "cannot load",
        ),
        (
            '[[listeners]]\nport = 0\ntls_cert = "{garbage}"\ntls_key = "{garbage}"\n',
            "listeners.0.tls_cert",
            "cannot load",
        ),
        (  # without the key the listener ran without STARTTLS, silently
            '[[listeners]]\nport = 0\ntls_cert = "{garbage}"\n',
            "listeners.0.tls_key",
            "needs both tls_cert and tls_key",
        ),
        (
            '[[listeners]]\nport = 0\nrequire_auth = true\nauth_users_file = "{missing}"\n',
            "listeners.0.auth_users_file",
            "cannot read",
        ),
        (  # nobody in it: every sender refused
            '[[listeners]]\nport = 0\nrequire_auth = true\nauth_users_file = "{garbage}"\n',
            "listeners.0.auth_users_file",
            "no 'user:password' line",
        ),
        (
            '[[listeners]]\nport = 0\n[[sla.policies]]\nname = "s"\n'
            'first_response = { minutes = 60, basis = "calendar" }\n'
            '[sla.policies.breach]\ntemplate = "sla_braech"\n',
            "sla.policies.0.breach.template",
            "no template sla_braech.agent",
        ),
        (  # tickets would be resolved without the notice, silently
            "[[listeners]]\nport = 0\n[sla.auto_close]\npending_resolve_days = 14\n"
            'resolve_template = "auto_resolve"\n',
            "sla.auto_close.resolve_template",
            "no template auto_resolve.customer",
        ),
        (  # every acknowledgement would fail at the first mail
            'templates_dir = "{missing}"\n[[listeners]]\nport = 0\n',
            "templates_dir",
            "no such directory",
        ),
        (  # a typo'd folder ran with no rules at all
            '[[listeners]]\nport = 0\n[routing]\nrules_dir = "{missing}"\n',
            "routing.rules_dir",
            "no such directory",
        ),
    ],
)
def test_run_refuses_to_start_on_what_it_would_fail_at_later(
    tmp_path: Path, extra: str, key: str, reason: str
) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_text("# neither a certificate nor a list of users\n")
    garbage.chmod(0o600)
    shared = tmp_path / "shared-secret"
    shared.write_text("relay:secret\n")
    shared.chmod(0o644)
    extra = extra.replace("{missing}", str(tmp_path / "missing"))
    extra = extra.replace("{garbage}", str(garbage)).replace("{shared}", str(shared))
    if "[[listeners]]" not in extra:
        extra += "[[listeners]]\nport = 0\n"
    path = _config(tmp_path, extra)
    result = _run_daemon(path, tmp_path)
    assert result.returncode == 78, result.stderr
    assert f"{path}: {key}: " in result.stderr and reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

    code, output = _cli(path, "check")  # `check` says the same, with the same exit code
    assert code == 78, output
    assert f"FAIL config: {path}: {key}: " in output


def test_outbox_drain_with_an_unreadable_relay_password_exits_78(tmp_path: Path) -> None:
    missing = tmp_path / "relay-password"
    path = _config(
        tmp_path,
        f'[outbound]\ntransport = "smtp"\nrelay_user = "u"\nrelay_password_file = "{missing}"\n',
    )
    code, output = _cli(path, "outbox", "drain")
    assert code == 78, output
    assert f"{path}: outbound.relay_password_file: cannot read {missing}" in output


@pytest.mark.parametrize(
    ("host", "refused"), [("0.0.0.0", True), ("192.0.2.10", True), ("127.0.0.1", False)]
)
def test_passwords_in_clear_over_the_network_are_a_config_error(
    tmp_path: Path, host: str, refused: bool
) -> None:
    """require_auth without STARTTLS on a listener others can reach would take the
    senders' passwords in clear (AUTH PLAIN/LOGIN); on loopback nobody can listen in."""
    users = tmp_path / "users"
    users.write_text("relay:secret\n", encoding="utf-8")
    users.chmod(0o600)
    extra = (
        f'[[listeners]]\nhost = "{host}"\nport = 0\nrequire_auth = true\n'
        f'auth_users_file = "{users}"\n'
    )
    path = _config(tmp_path, extra)
    code, output = _cli(path, "tickets", "list")
    if refused:
        assert code == 78, output
        assert f"{path}: listeners.0.tls_cert: " in output and "in clear" in output
    else:
        assert code == 0, output


def test_a_missing_relative_folder_says_what_it_is_relative_to(tmp_path: Path) -> None:
    """rules_dir = "rules" passes `check` in /opt/maildesk and fails under systemd (cwd /)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = _config(tmp_path, '[[listeners]]\nport = 0\n[routing]\nrules_dir = "rules"\n')
    result = _run_daemon(path, elsewhere)
    assert result.returncode == 78, result.stderr
    said = f"{path}: routing.rules_dir: no such directory: rules (relative to the working "
    assert said + f"directory {elsewhere})" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("host", "security", "refused"),
    [
        ("smtp.example.net", "none", True),
        ("192.0.2.25", "none", True),
        ("smtp.example.net", "starttls", False),
        ("127.0.0.1", "none", False),
    ],
)
def test_a_relay_login_in_clear_over_the_network_is_a_config_error(
    tmp_path: Path, host: str, security: str, refused: bool
) -> None:
    """relay_user without TLS to a relay on another machine would send the relay
    password in clear (AUTH PLAIN is base64, not encryption)."""
    extra = (
        f'[outbound]\ntransport = "smtp"\nrelay_host = "{host}"\n'
        f'relay_security = "{security}"\nrelay_user = "maildesk"\nrelay_password = "s3cret"\n'
    )
    path = _config(tmp_path, extra)
    code, output = _cli(path, "tickets", "list")
    if refused:
        assert code == 78, output
        assert f"{path}: outbound.relay_security: " in output and "in clear" in output
        assert "s3cret" not in output
    else:
        assert code == 0, output


# -- templates and routing rules: what every mail needs, checked before any mail comes ----


def _templates(
    tmp_path: Path, drop: tuple[str, ...] = (), write: dict[str, str] | None = None
) -> Path:
    folder = tmp_path / "templates"
    shutil.copytree(REPO / "templates", folder)
    for name in drop:
        (folder / name).unlink()
    for name, text in (write or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _mail(tmp_path: Path) -> Path:
    mail = tmp_path / "new.eml"
    mail.write_bytes(make_mail(sender="carol@customer.test", message_id="cfg-1@customer.test"))
    return mail


def _refused_everywhere(tmp_path: Path, path: Path, said: str) -> None:
    """`run` exits 78 saying so; `check` reports the same with exit 78; `ingest` stores nothing."""
    result = _run_daemon(path, tmp_path)
    assert result.returncode == 78, result.stderr
    assert said in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

    code, output = _cli(path, "check")
    assert code == 78, output
    assert said in output, output

    code, output = _cli(path, "ingest", str(_mail(tmp_path)))
    assert code == 78, output
    assert said in output, output
    code, output = _cli(path, "quarantine", "list", "--json")
    assert (code, output.strip()) == (0, "[]"), "refused before storing: the file stays"

    # An MTA's pipe: 78 would bounce the mail. It is stored (and processed as it can be,
    # or quarantined until the templates are mended).
    piped = CliRunner().invoke(
        main, ["--config", str(path), "ingest", "-"], input=_mail(tmp_path).read_bytes()
    )
    assert piped.exit_code == 0, piped.output
    assert "stored 1," in piped.output, piped.output


@pytest.mark.parametrize(
    ("drop", "write", "said"),
    [
        (  # every new mail was quarantined with TemplateMissing
            ("ack.customer.txt.j2", "ack.customer.html.j2"),
            {},
            "no template ack.customer.txt.j2 or ack.customer.html.j2 in {templates}",
        ),
        (  # ingest quarantined every new mail with a traceback
            (),
            {"ack.customer.txt.j2": "Hello {{ ticket.number }\n"},
            "{templates}/ack.customer.txt.j2 line 1: unexpected '}'",
        ),
        (  # resolving a ticket said nothing and sent nothing
            ("resolved.customer.txt.j2",),
            {},
            "no template resolved.customer.txt.j2 or resolved.customer.html.j2 in {templates}",
        ),
        (  # compiles, and fails on every ticket
            (),
            {"ack.customer.txt.j2": "Ticket {{ ticket.numbr }}\n"},
            "{templates}/ack.customer.txt.j2: does not render: UndefinedError: ",
        ),
        (
            (),
            {"assigned.agent.txt.j2": "{% if %}\n"},
            "{templates}/assigned.agent.txt.j2 line 1: ",
        ),
    ],
)
def test_templates_every_mail_needs_are_a_config_error_at_start(
    tmp_path: Path, drop: tuple[str, ...], write: dict[str, str], said: str
) -> None:
    templates = _templates(tmp_path, drop, write)
    path = _config(tmp_path, f'templates_dir = "{templates}"\n[[listeners]]\nport = 0\n')
    _refused_everywhere(
        tmp_path, path, f"{path}: templates_dir: " + said.replace("{templates}", str(templates))
    )


def test_a_template_the_config_makes_optional_may_be_absent(tmp_path: Path) -> None:
    """No acknowledgements, no ack template; too_large only with oversize_notice = "sender"."""
    templates = _templates(
        tmp_path, ("ack.customer.txt.j2", "ack.customer.html.j2", "too_large.customer.txt.j2")
    )
    path = _config(
        tmp_path,
        f'templates_dir = "{templates}"\n[[listeners]]\nport = 0\n[acknowledgements]\nenabled = false\n',
    )
    code, output = _cli(path, "check")
    assert code == 0, output
    code, output = _cli(path, "ingest", str(_mail(tmp_path)))
    assert code == 0 and "created 1" in output, output


def test_resolving_without_the_resolution_template_is_refused_not_silent(tmp_path: Path) -> None:
    templates = _templates(tmp_path)
    path = _config(tmp_path, f'templates_dir = "{templates}"\n')
    code, output = _cli(path, "ingest", str(_mail(tmp_path)))
    assert code == 0 and "created 1" in output, output
    (templates / "resolved.customer.txt.j2").unlink()
    code, output = _cli(path, "tickets", "set-status", "1", "resolved")
    assert code == 78, output
    assert f"{path}: templates_dir: no template resolved.customer.txt.j2" in output
    code, output = _cli(path, "tickets", "list", "--json")
    assert '"status": "new"' in output, output


@pytest.mark.parametrize(
    ("rules", "said"),
    [
        (  # tickets were assigned to the nonexistent bob
            '[[rule]]\nname = "vip"\nwhen = {}\n'
            'then = { group = "Nope", agent = "bob", sla_policy = "gold" }\n',
            "rule 'vip': then.agent: unknown name 'bob' (no agents configured)",
        ),
        (
            '[[rule]]\nname = "vip"\nwhen = {}\nthen = { group = "Nope" }\n',
            "rule 'vip': then.group: unknown name 'Nope' (no groups configured)",
        ),
        (
            '[[rule]]\nname = "vip"\nwhen = {}\nthen = { sla_policy = "gold" }\n',
            "rule 'vip': then.sla_policy: unknown name 'gold' (no SLA policies configured)",
        ),
        (
            '[[rule]]\nname = "vip"\nwhen = {}\nthen = { ack_template = "ack_vip" }\n',
            "rule 'vip': then.ack_template: unknown name 'ack_vip' (known: ",
        ),
        (  # ingest routed with no rules at all
            "[[rule]\n",
            "not valid TOML",
        ),
    ],
)
def test_rules_naming_what_is_not_configured_are_a_config_error_at_start(
    tmp_path: Path, rules: str, said: str
) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10-main.toml").write_text(rules, encoding="utf-8")
    path = _config(tmp_path, f'[[listeners]]\nport = 0\n[routing]\nrules_dir = "{folder}"\n')
    said = f"{folder / '10-main.toml'}: {said}"
    _refused_everywhere(tmp_path, path, said)
    code, output = _cli(path, "rules", "check")
    assert code == 78, output
    assert said in output, output
