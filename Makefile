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
	$(BIN)/ruff check maildesk tests bench bench/ingest bench/smtp bench/spam bench/spam-links bench/quotes
	$(BIN)/ruff format --check maildesk tests bench bench/ingest bench/smtp bench/spam bench/spam-links bench/quotes
	$(BIN)/mypy

test: install-test services lint
	$(BIN)/pytest -q -n 2 --dist loadgroup
