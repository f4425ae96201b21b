"""`maildesk ingest` on hostile input: links out of a folder, mboxo bodies, failures after the store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from maildesk.cli import main
from maildesk.db.models import Blob, Intake, IntakeState
from maildesk.pipeline.runner import Worker
from tests.conftest import write_cli_config
from tests.mailfactory import make_mail


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    return write_cli_config(tmp_path / "maildesk.toml", tmp_path / "data", database_url)


def cli(config: Path, *args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(
        main, ["--config", str(config), *args], input=stdin, catch_exceptions=False
    )


def summary(result: Result) -> dict[str, int]:
    assert result.exit_code == 0, result.output
    data: dict[str, int] = json.loads(result.output.strip().splitlines()[-1])
    return data


def stored(database_url: str) -> dict[str, bytes]:
    """Each intake row's raw bytes by where it came from."""
    engine = create_engine(database_url)
    with Session(engine) as session:
        rows = session.execute(
            select(Intake.source_ref, Blob.data).join(Blob, Blob.sha256 == Intake.raw_sha256)
        ).all()
    engine.dispose()
    return {ref: bytes(data) for ref, data in rows}


def test_symlinks_out_of_a_folder_are_not_read(
    config: Path, tmp_path: Path, database_url: str
) -> None:
    outside = tmp_path / "someone-elses.eml"
    outside.write_bytes(make_mail(message_id="private@c.test", subject="not yours"))
    folder = tmp_path / "import"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.eml").write_bytes(make_mail(message_id="a@c.test", subject="mine"))
    (folder / "passwd").symlink_to("/etc/passwd")
    (folder / "sub" / "other.eml").symlink_to(outside)
    (folder / "sub" / "loop").symlink_to(folder / "sub" / "loop")
    (folder / "sub" / "inside.eml").symlink_to(folder / "a.eml")
    maildir = tmp_path / "md"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.host").write_bytes(make_mail(message_id="m@c.test", subject="md"))
    (maildir / "new" / "2.host").symlink_to(outside)

    result = summary(cli(config, "ingest", "--json", str(folder), str(maildir)))

    refs = sorted(stored(database_url))
    assert refs == sorted([str(folder / "a.eml"), str(folder / "sub" / "inside.eml"),
                           str(maildir / "new" / "1.host")])  # fmt: skip
    assert result["stored"] == 3


def test_unquoted_from_lines_in_an_mbox_body_stay_in_the_body(
    config: Path, tmp_path: Path, database_url: str
) -> None:
    """An mboxo writer leaves "From " in a body as it is; only a From_ line starts a message."""
    first = make_mail(message_id="f1@c.test", subject="one", body="Hello,\n")
    body = b"From here on the printer is broken.\n\nFrom what I see, nobody fixed it.\nThanks\n"
    second = make_mail(message_id="f2@c.test", subject="two", sender="y@c.test")
    box = tmp_path / "box.mbox"
    box.write_bytes(
        b"From a@c.test Mon Mar  2 09:00:00 2026\n" + first + body + b"\nFrom - \n" + second + b"\n"
    )

    result = summary(cli(config, "ingest", "--json", str(box)))

    raw = stored(database_url)
    assert sorted(raw) == [f"{box}#1", f"{box}#2"]
    assert raw[f"{box}#1"] == first + body
    assert raw[f"{box}#2"] == second
    assert (result["stored"], result["created"], result["quarantined"]) == (2, 2, 0)


def test_pipe_delivery_exits_0_once_stored_even_if_processing_loses_the_database(
    config: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postfix bounces on exit 1: a mail that is stored must be acknowledged, not bounced."""

    def database_gone(self: Worker, limit: int = 64) -> list[object]:
        raise OperationalError("SELECT", {}, ConnectionError("server closed the connection"))

    monkeypatch.setattr(Worker, "claim", database_gone)

    result = cli(config, "ingest", "-", stdin=make_mail(message_id="pipe@c.test"))

    assert result.exit_code == 0, result.output
    assert "processing stopped" in result.output
    engine = create_engine(database_url)
    with Session(engine) as session:
        rows = session.execute(select(Intake.source, Intake.state)).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("stdin", IntakeState.PENDING)]


def test_data_dir_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = tmp_path / "maildesk.toml"
    path.write_text(f'data_dir = "{blocker / "data"}"\ninstallation_secret = "x"\n')

    result = CliRunner().invoke(
        main, ["--config", str(path), "ingest", "-"], input=make_mail(), catch_exceptions=False
    )

    assert result.exit_code == 78, result.output
    assert "data_dir" in result.output
    assert os.path.isfile(blocker)


def test_a_maildir_message_renamed_by_a_mail_client_during_the_import_is_still_read(
    tmp_path: Path,
) -> None:
    """A client marking a mail read renames it in cur/ (unique:2,S): it must not be lost."""
    from maildesk.intake.files import iter_messages

    box = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True)
    for n in range(3):
        (box / "cur" / f"17000000{n}.M{n}P1.host:2,").write_bytes(make_mail(subject=f"M {n}"))
    messages = iter_messages([str(box)])
    first = next(messages)
    assert b"M 0" in first.raw
    (box / "cur" / "170000001.M1P1.host:2,").rename(box / "cur" / "170000001.M1P1.host:2,S")
    rest = list(messages)
    assert [b"M 1" in rest[0].raw, b"M 2" in rest[1].raw] == [True, True]
    assert rest[0].ref.endswith(":2,S")
