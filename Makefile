# gnomon: `make run` shows NTS end to end on loopback, `make test` runs every test.
# Both set up everything they need on a fresh Debian machine (Python 3.11).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup peers run test lint typecheck bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

peers:
	bash scripts/install-peers.sh

run: setup
	$(PY) -m gnomon.demo

test: setup peers
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup peers
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .peers
