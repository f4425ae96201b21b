# The two set-up commands (see README): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint install install-test services

$(BIN)/maildesk: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

install: $(BIN)/maildesk

install-test: install
	$(BIN)/pip install --quiet -e '.[test]'

# Run the daemon on the embedded defaults: SQLite and outbound Maildir under ./var,
# SMTP listener on 127.0.0.1:2525.
run: install
	$(BIN)/maildesk --log-level info run

services:
	bash .ci/test-services

lint: install-test
	$(BIN)/ruff check maildesk tests bench bench/ingest bench/smtp bench/spam bench/spam-links bench/spam-header-order bench/quotes
	$(BIN)/ruff format --check maildesk tests bench bench/ingest bench/smtp bench/spam bench/spam-links bench/spam-header-order bench/quotes
	$(BIN)/mypy

# Four workers on two cores: most of the suite's time is spent waiting on real
# servers and daemons (IMAP backoff, deadlines, restarts), not computing. The test
# files go to tmpfs where it has room (4 GB; a run writes about 1 GB): the
# databases and maildirs fsync on every commit, which tells a test nothing.
TEST_TMPDIR := $(shell df -k --output=avail /dev/shm 2>/dev/null | awk 'NR == 2 && $$1 > 4000000 { print "/dev/shm" }')

test: install-test services lint
	$(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR)) $(BIN)/pytest -q -n 4 --dist loadgroup
