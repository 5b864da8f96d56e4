# The README's two commands: `make demo` (the whole DAG on the embedded demo) and `make test`.
# Both create or update .venv from the pins in pyproject.toml first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= 2
SNAKEMAKE := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake

.PHONY: demo test test-fast lint dry-run clean-demo install-cluster smoke-cpu

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --configfile config/demo.yaml --rerun-incomplete --show-failed-logs

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

# The unit tests without those marked slow (fuzzing, training loops, subprocess runs of commands): a few minutes on
# two CPU cores. `make test` runs everything, as CI does.
test-fast: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest tests/unit -m "not slow" -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(SNAKEMAKE) --lint

# the paper run's environment on a GPU cluster: the torch build for the NVIDIA driver, DeepSpeed (README)
install-cluster:
	VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/install-cluster.sh

# The paper config's smoke DAG (config/smoke.yaml) on this CPU: the same rules, recipes, prompts and media settings,
# the real architectures at CPU sizes with random weights. Checks that every job of the paper DAG runs and the tables
# render before GPU hours are spent; it says nothing of CUDA paths or GPU memory (docs/PERFORMANCE.md).
SMOKE_CPU := --configfile config/config.yaml config/smoke.yaml config/smoke_cpu.yaml
smoke-cpu: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m vqinsight.bench smoke models --root results/smoke_cpu/models --scale tiny
	$(SNAKEMAKE) --cores $(CORES) $(SMOKE_CPU) --rerun-incomplete --show-failed-logs

dry-run: $(STAMP)
	$(SNAKEMAKE) -n

clean-demo:
	rm -rf results/demo logs/demo
