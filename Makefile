# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

# Azurite, the Azure Storage emulator the tests start (tests/azurite.py), pinned in package.json
# and package-lock.json and installed into node_modules/, not globally. --ignore-scripts: no
# package needs its install script (the only one, protobufjs', prints a warning at most).
AZURITE := node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed plugins/fanout-azure/pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' -e plugins/fanout-azure
	touch $@

demo: $(VENV)/.installed
	$(BIN)/fanout run examples/topwords/job.toml --out fanout-out

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(AZURITE): package.json $(wildcard package-lock.json)
	if [ -f package-lock.json ]; then npm ci --ignore-scripts --no-audit --no-fund; \
	else npm install --ignore-scripts --no-audit --no-fund; fi
	touch $@

test: lint $(AZURITE)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) node_modules fanout-out examples/*/.fanout
