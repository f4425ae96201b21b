"""The deadline around one command: what it cuts, and what it reports."""

from __future__ import annotations

import socket
import time

import pytest

from maildesk.connection_watch import CommandOverdue, ConnectionWatch


def test_a_read_blocked_past_the_deadline_is_cut_and_reported_as_overdue() -> None:
    ours, server = socket.socketpair()
    with ours, server:
        watch = ConnectionWatch(0.2, "command_deadline_seconds")
        watch.attach(lambda: ours)
        with (
            pytest.raises(
                CommandOverdue, match=r"FETCH took longer than command_deadline_seconds=0.2"
            ),
            watch.command("FETCH"),
        ):
            if ours.recv(1) == b"":  # the server never answers; the cut ends the wait
                raise ConnectionError("connection closed")


def test_a_failure_within_the_deadline_is_reported_as_itself() -> None:
    watch = ConnectionWatch(10, "relay_deadline_seconds")
    with pytest.raises(ConnectionRefusedError), watch.command("delivery to the relay"):
        raise ConnectionRefusedError


def test_a_command_that_finished_stands_though_the_deadline_passed_meanwhile() -> None:
    # A mail the relay took must not be reported as failed (and then sent twice).
    watch = ConnectionWatch(0.01, "relay_deadline_seconds")
    with watch.command("delivery to the relay"):
        time.sleep(0.1)


def test_the_deadline_grows_for_a_large_transfer() -> None:
    ours, server = socket.socketpair()
    with ours, server:
        watch = ConnectionWatch(0.05, "command_deadline_seconds")
        watch.attach(lambda: ours)
        with watch.command("FETCH", extra_seconds=5):
            server.sendall(b"x")
            time.sleep(0.2)  # past the plain deadline, within the grown one
            assert ours.recv(1) == b"x"


def test_an_overdue_transfer_names_both_parts_of_its_deadline() -> None:
    error = CommandOverdue("FETCH BODY.PEEK[]", 300, "command_deadline_seconds", 512.4)
    assert str(error) == (
        "FETCH BODY.PEEK[] took longer than command_deadline_seconds=300 + 512 s for its size;"
        " connection cut"
    )
