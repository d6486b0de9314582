# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCENARIO ?= good
ROWS   ?= 100000
# pytest-xdist workers: two per core, idle ones stealing queued tests. The e2e tests spend much of their time
# waiting on processes, probes and PostgreSQL: on 2 cores the quick tier took 374 s at -n 4, 319 s at -n 6, but
# at -n 6 on a slower host each test ran up to 7x its time alone and timing-bound ones (a restore replaying a
# 100k-row backfill under pgbench) ran past their limits.
JOBS   ?= $(shell echo $$(( 2 * $$(nproc 2>/dev/null || echo 1) )))
# Python writes its bytecode caches (in .venv, and __pycache__/ in the tree; git ignores both) under make even where
# the environment says not to. The venv's build then compiles nothing up front (40 s of uv's 46 s on 2 cores went on
# compiling every module of every package), and what a process imports is compiled once, by the first process that
# imports it, instead of by every process (torch and transformers: 3.4 s each time without a cache).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help venv demo demo-all test test-slow test-all lint typecheck unit integration e2e bench clean report-tools

help:
	@echo "make demo      a real gated upgrade: SCENARIO=good (default) or any of \`upgate demo --list\`:"
	@if test -x $(BIN)/upgate; then $(BIN)/upgate demo --list | paste -sd ' ' | fold -s -w 92 | sed 's/^/                /'; \
	else echo "                (run \`make venv\` first to list them)"; fi
	@echo "make demo-all  every demo scenario (\`upgate demo --list\`), one after the other"
	@echo "make test      lint, type check, and upgate's own tests (unit, integration on real PostgreSQL, the e2e runs"
	@echo "              marked quick: one per verdict and promise), two workers per core; mypy runs beside the tests"
	@echo "make test-slow the long tier: every other e2e and real-app run, every journal point, minutes-long load windows"
	@echo "make test-all  both (what CI runs)"
	@echo "make bench     benchmarks (bench/): integrity fingerprints against the floor and bytes per row; downtime error; perf A/A and detection; restore of ~1 GB against bare pg_restore;"
	@echo "              backup step against a bare dump + full read, restore s/GB; time to verdict of the good plan"

# uv when it can be had (seconds instead of pip's 1 min 50 s on 2 cores), pip otherwise: .ci/venv.py.
$(STAMP): pyproject.toml .ci/venv.py
	$(PYTHON) .ci/venv.py $(VENV) '.[all,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/upgate demo --scenario $(SCENARIO) --rows $(ROWS)

demo-all: $(STAMP)
	for s in $$($(BIN)/upgate demo --list); do $(BIN)/upgate demo --scenario $$s --rows $(ROWS); echo "$$s: exit $$?"; done

lint: $(STAMP)
	$(BIN)/ruff check upgate tests bench

typecheck: $(STAMP)
	$(BIN)/mypy upgate

# allure's npm install runs beside the venv's build (which lint needs). The type check runs beside the tests (one
# core for ~20 s from a cold cache); its report follows theirs, and either failing fails the target.
test:
	@$(MAKE) --no-print-directory -j2 lint report-tools
	@$(BIN)/mypy upgate > $(VENV)/mypy.log 2>&1 & types=$$!; \
	$(BIN)/python -m pytest tests -q -n $(JOBS) --dist worksteal -m "not slow"; tests=$$?; \
	wait $$types; typed=$$?; echo "mypy upgate:"; cat $(VENV)/mypy.log; \
	test $$tests = 0 && test $$typed = 0

# The long tier: every e2e and real-app run not marked `quick` (tests/conftest.py), the exhaustive sweeps
# (SIGTERM and kill -9 at every journal point), minutes-long load windows (perf).
test-slow: $(STAMP)
	$(BIN)/python -m pytest tests -q -n $(JOBS) --dist worksteal -m slow

test-all: test test-slow

bench: $(STAMP)
	$(BIN)/python bench/integrity.py
	$(BIN)/python bench/downtime.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/perf.py
	$(BIN)/python bench/restore.py
	$(BIN)/python bench/backup.py
	$(BIN)/python bench/verdict.py
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
