# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCENARIO ?= good
ROWS   ?= 100000

.PHONY: help venv demo demo-all test lint typecheck unit integration e2e bench clean report-tools

help:
	@echo "make demo      a real gated upgrade of the reference service (SCENARIO=good|destructive|broken-deploy|blocked|"
	@echo "               slow|contract-break|locking|model-good|model-regression)"
	@echo "make demo-all  every demo scenario, one after the other"
	@echo "make test      lint, type check, and upgate's own tests (unit, integration on real PostgreSQL, e2e)"
	@echo "make bench     benchmarks (bench/): integrity fingerprints against the floor and bytes per row; downtime error; perf A/A and detection; restore of ~1 GB against bare pg_restore"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/upgate demo --scenario $(SCENARIO) --rows $(ROWS)

demo-all: $(STAMP)
	for s in good destructive broken-deploy blocked slow contract-break locking model-good model-regression; do $(BIN)/upgate demo --scenario $$s --rows $(ROWS); echo "exit $$?"; done

lint: $(STAMP)
	$(BIN)/ruff check upgate tests bench

typecheck: $(STAMP)
	$(BIN)/mypy upgate

test: lint typecheck report-tools
	$(BIN)/python -m pytest tests -q

bench: $(STAMP)
	$(BIN)/python bench/integrity.py
	$(BIN)/python bench/downtime.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/perf.py
	$(BIN)/python bench/restore.py
	$(BIN)/python bench/repair.py
	$(BIN)/python bench/live.py

# Best effort, never fatal: the allure npm package (Allure 3) into .tools/allure for `upgate report`'s HTML,
# and Debian's chromium for the test that renders it (skipped with the reason when either is absent).
report-tools:
	@if command -v npm >/dev/null 2>&1; then \
	  test -x .tools/allure/node_modules/.bin/allure || npm install --prefix .tools/allure --no-audit --no-fund --silent allure@3 \
	  || echo "report-tools: npm install allure@3 failed; HTML reports are skipped"; \
	else echo "report-tools: npm not found; HTML reports are skipped (JUnit, summary.json, charts still written)"; fi
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null \
	    || echo "report-tools: apt-get install chromium failed; the HTML render test is skipped"; \
	  else echo "report-tools: chromium absent (as root: apt-get install chromium); the HTML render test is skipped"; fi; \
	fi

clean:
	rm -rf $(VENV) reports/runs .mypy_cache .ruff_cache
