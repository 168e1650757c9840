# The two commands of the README:
#   make demo   installs the pinned environment into .venv and runs the whole workflow on the demo cohort
#   make test   installs the pinned environment into .venv and runs the test suite
# Other targets: install, test-quick (skips the slow end-to-end and SLURM tests), lint, bench, clean.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
PYTEST_ARGS ?=

.PHONY: install demo test test-quick lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: install
	$(BIN)/python -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

bench: install
	@for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf results logs .snakemake
