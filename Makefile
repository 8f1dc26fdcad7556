# Entry points for developers and CI. `make test` is the README's test command.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install libvgpu cluster-binaries lint test unit simulate

$(BIN)/hami: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/hami

libvgpu:
	$(MAKE) -C libvgpu

# Builds (or reuses from ~/.cache/hami) kube-apiserver, kube-scheduler, etcd and helm.
cluster-binaries:
	bash tests/cluster/build.sh

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

unit: install libvgpu
	$(BIN)/pytest tests/unit

test: install libvgpu cluster-binaries lint
	$(BIN)/pytest tests

simulate: install
	$(BIN)/hami simulate
