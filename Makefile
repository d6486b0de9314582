# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCENARIO ?= good
ROWS   ?= 100000

.PHONY: help venv demo demo-all test lint typecheck unit integration e2e bench clean

help:
	@echo "make demo      a real gated upgrade of the reference service (SCENARIO=good|destructive|broken-deploy|blocked)"
	@echo "make demo-all  every demo scenario, one after the other"
	@echo "make test      lint, type check, and upgate's own tests (unit, integration on real PostgreSQL, e2e)"
	@echo "make bench     benchmarks (bench/): integrity fingerprint throughput against the floor"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/upgate demo --scenario $(SCENARIO) --rows $(ROWS)

demo-all: $(STAMP)
	for s in good destructive broken-deploy blocked; do $(BIN)/upgate demo --scenario $$s --rows $(ROWS); echo "exit $$?"; done

lint: $(STAMP)
	$(BIN)/ruff check upgate checks gates fixtures tests bench

typecheck: $(STAMP)
	$(BIN)/mypy upgate checks

test: lint typecheck
	$(BIN)/python -m pytest tests -q

bench: $(STAMP)
	$(BIN)/python bench/integrity.py

clean:
	rm -rf $(VENV) reports/runs .mypy_cache .ruff_cache
