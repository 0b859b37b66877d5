# Vigil: `make up` runs the local stack, `make test` runs the tests. Both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
VIGIL := $(VENV)/bin/vigil
STAMP := $(VENV)/.installed

.PHONY: install up down status demo-loop test test-unit test-integration bench protos manifests lock clean-state

$(STAMP): requirements.lock pyproject.toml tools/install_system_packages.sh
	bash tools/install_system_packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE set, every process start would recompile its imports.
	$(VENV)/bin/uv pip install -q -p $(PY) --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install -q -p $(PY) --no-deps -e .
	touch $(STAMP)

# Python dependencies, Debian packages, and the stack's downloads (Kafka jars, footage, the default model).
install: $(STAMP)
	$(PY) -m cli.install

up: install
	$(VIGIL) up

down:
	@if [ -x $(VIGIL) ]; then $(VIGIL) down; else echo "nothing to stop (not installed)"; fi

status:
	$(VIGIL) status

# The feedback loop on the running stack (`make up` first), watched on the dashboard: a camera darkens, drift
# alerts, a scripted annotator labels, a version is committed, a candidate trained, gated, rolled out, promoted.
demo-loop: install
	$(VIGIL) demo loop

# The unit tests first, offline and without the stack or its downloads (a failure stops here, so CI fails fast);
# then the stack's downloads and the integration tests, with the unit tests marked heavy (asset downloads, model
# builds, quantization).
test: test-unit
	$(MAKE) --no-print-directory test-integration

test-unit: $(STAMP)
	$(PY) -m pytest -ra tests/unit -m "not heavy"

test-integration: install
	$(PY) -m pytest -ra tests/integration tests/unit -m "integration or heavy"

# Each benchmark in turn, alone on the machine (figures go to bench/results/*.json).
bench: install
	$(PY) -m bench
	$(PY) -m bench.ingest
	$(PY) -m bench.inference
	$(PY) -m bench.peers
	$(PY) -m bench.cameras_per_box
	$(PY) -m bench.metrics_sink
	$(PY) -m bench.drift
	$(PY) -m bench.annotation_selection
	$(PY) -m bench.annotation_ui
	$(PY) -m bench.datasets
	$(PY) -m bench.loop

# Regenerate protos/*_pb2*.py from protos/*.proto (a test fails when they are stale).
protos:
	$(PY) -m tools.gen_protos

# Regenerate deploy/k8s/<service>.yaml from the services' declarations (a test fails when they are stale).
manifests:
	$(PY) -m tools.gen_manifests

# Re-resolve requirements.in into the pinned requirements.lock, and the container's runtime subset within it.
lock:
	$(VENV)/bin/uv pip compile requirements.in -p 3.11 -o requirements.lock
	$(VENV)/bin/uv pip compile requirements-runtime.in -p 3.11 -c requirements.lock -o requirements-runtime.lock
