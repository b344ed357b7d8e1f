# beep-mail: the two commands are `make run` and `make test`.
# Both create a virtual environment in .venv and install everything into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo

.PHONY: install system-deps run test lint typecheck clean

$(STAMP): pyproject.toml
	@scripts/system-deps.sh python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# Debian packages the tests talk to (GnuPG, isync, swaks); installed when
# missing and we are root, otherwise we say what is missing.
system-deps:
	@scripts/system-deps.sh test

run: install
	@scripts/demo-site.sh $(BIN) $(DEMO)

test: install system-deps
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check beep_mail tests bench

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks, each figure beside its baseline (docs/performance.md): writes
# bench/results/latest.json and latest.png. As root, bench-deps.sh installs
# Postfix and Dovecot (neither configured nor started for the system: the
# bench runs private instances of its own) and the Python packages of the
# `bench` group. One phase alone: $(BIN)/python -m bench.run --only imap
.PHONY: bench bench-quick

bench: install
	@scripts/bench-deps.sh $(BIN)
	$(BIN)/python -m bench.run

bench-quick: install
	@scripts/bench-deps.sh $(BIN)
	$(BIN)/python -m bench.run --quick
