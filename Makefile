# The README's two commands: `make demo` (the whole DAG on the embedded demo) and `make test`.
# Both create or update .venv from the pins in pyproject.toml first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= 2
SNAKEMAKE := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake

.PHONY: demo test lint dry-run clean-demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --configfile config/demo.yaml --rerun-incomplete --show-failed-logs

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(SNAKEMAKE) --lint

dry-run: $(STAMP)
	$(SNAKEMAKE) -n

clean-demo:
	rm -rf results/demo logs/demo
