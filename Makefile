# cxr-triage: `make help` lists the targets. Everything runs inside .venv (created by `make setup`).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

# Telemetry off, quiet tools (STACK.md §0); nothing here needs the network beyond PyPI.
export DVC_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := True
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help setup lock audit system-deps demo test test-unit test-slow test-all bench lint format clean plots exp serve fuzz axe

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# The environment is requirements.lock: every package (runtime + dev) pinned with its hashes, the
# CPU build of torch included: torch==2.13.0+cpu, the one wheel in $(TORCH_WHEELS) (what pip's
# config here finds for torch==2.13.0; the lock names that folder). A plain `torch` would pull
# several GB of CUDA wheels. Refresh the lock with `make lock` only; `make setup` installs it.
LOCK := requirements.lock
TORCH_WHEELS ?= /opt/wheels
LOCK_ARGS ?=

# uv installs the lock (pip takes 3+ minutes here: its cache stays empty behind this network).
# uv itself comes first, hash-checked by pip, from its block in the lock.
$(BIN)/uv: $(LOCK) | $(BIN)/activate
	awk '/^uv==/{p=1} p{print; if ($$0 !~ /\\$$/) exit}' $(LOCK) > $(VENV)/uv-requirement.txt
	@# (grep: pip's config here lists file:// indexes that hold a few packages; it warns about the rest)
	set -o pipefail; $(BIN)/python -m pip install -q --require-hashes --no-deps \
	  -r $(VENV)/uv-requirement.txt 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
	touch $@

$(VENV)/.installed: $(LOCK) pyproject.toml $(BIN)/uv
	$(BIN)/uv pip sync --quiet --require-hashes --python $(BIN)/python $(LOCK)
	@# the project itself, built with the locked setuptools: nothing outside the lock is installed
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@$(BIN)/python -m pip check || { echo "the lock does not satisfy pyproject.toml: run make lock" >&2; exit 1; }
	touch $@

setup: $(VENV)/.installed ## Create .venv: exactly requirements.lock (hash-checked), then the project

lock: $(BIN)/uv ## Re-resolve requirements.lock from pyproject.toml (LOCK_ARGS=--upgrade: newest)
	@# Resolved for the one platform the project runs on; kept pins stay unless LOCK_ARGS says.
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --quiet \
	  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  --find-links $(TORCH_WHEELS) --emit-find-links --custom-compile-command "make lock" \
	  $(LOCK_ARGS) -o $(LOCK)
	@grep -q '^torch==[^ ]*+cpu ' $(LOCK) || { echo "torch in $(LOCK) is not the CPU build" >&2; exit 1; }

# Exit 0: no known vulnerability; 1: vulnerabilities found (or pip-audit failed); 3: not audited,
# because no vulnerability database answered (this network serves packages, not PyPI's per-version
# JSON that pip-audit reads, nor OSV): it prints "not audited: <why>", never a pass. (make exits 2
# on any failure; its "Error 3" line keeps the code.)
audit: setup ## pip-audit --strict on requirements.lock (exit 3, "not audited: why", when offline)
	python -m cxr_triage.lockfile audit $(LOCK)

# Debian packages the tests need: Orthanc with its DICOMweb plugin, dcmtk, dicom3tools (dciodvfy),
# headless Chromium with ChromeDriver, and the load generators hey and wrk. Orthanc's package
# would start a system service on 4242/8042: no service starts during the install (a policy-rc.d
# that says 101, unless one is there already, as in containers) and Orthanc's is disabled after.
SYSTEM_PACKAGES := orthanc orthanc-dicomweb dcmtk dicom3tools chromium chromium-driver hey wrk
# npm (vega for the plots page, axe-core for the web page's test) only where none is installed:
# Debian's npm conflicts with a nodejs from NodeSource, which ships its own npm.
NPM_PACKAGE := $(if $(shell command -v npm),,npm)
POLICY_RC := /usr/sbin/policy-rc.d

system-deps: ## Install the Debian packages the tests need (as root, apt-get; Orthanc's service off)
	@[ "$$(id -u)" = 0 ] || { echo "make system-deps runs apt-get: run it as root" >&2; exit 1; }
	if [ ! -e $(POLICY_RC) ]; then \
	  printf '#!/bin/sh\nexit 101\n' > $(POLICY_RC) && chmod +x $(POLICY_RC); \
	  trap 'rm -f $(POLICY_RC)' EXIT; \
	fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES) $(NPM_PACKAGE) >/dev/null
	if [ -d /run/systemd/system ]; then systemctl disable --now orthanc.service; \
	else update-rc.d orthanc disable >/dev/null 2>&1; service orthanc stop >/dev/null 2>&1; true; fi
	@$(PYTHON) -c 'import socket, sys; busy = [p for p in (4242, 8042) \
	  if socket.socket().connect_ex(("127.0.0.1", p)) == 0]; \
	  sys.exit(f"something listens on {busy} (a system Orthanc?): stop it" if busy else 0)'
	@for tool in Orthanc storescu dciodvfy chromium chromedriver hey wrk; do \
	  command -v $$tool >/dev/null || { echo "$$tool is missing after the install" >&2; exit 1; }; done

demo: setup ## Run the whole pipeline (dvc repro) on the embedded synthetic data
	dvc repro

test: setup ## Run the default test suite (unit + integration, minus slow tests)
	pytest

test-unit: setup ## Run the unit tests only (tests/unit: the quick edit-test loop)
	pytest tests/unit -q

test-slow: setup axe ## Run only the slow tests (fetches axe-core with npm first)
	pytest -m slow

test-all: setup ## Run every test
	pytest -m ""

bench: setup ## Run the benchmarks and print their figures
	@for b in benchmarks/bench_*.py; do echo "== $$b"; python $$b || exit 1; done

lint: setup ## Check style (ruff) and the import direction between layers (import-linter)
	ruff check src tests benchmarks flows
	ruff format --check src tests benchmarks flows
	lint-imports

format: setup ## Apply ruff fixes and formatting
	ruff check --fix src tests benchmarks flows
	ruff format src tests benchmarks flows

# Offline `dvc plots show`: vega, vega-lite and vega-embed (the versions DVC 3.67 loads) are
# fetched once with npm into a git-ignored cache and inlined into the HTML template.
VEGA_CACHE := .cache/vega
VEGA_PACKAGES := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
PLOTS_TEMPLATE := $(VEGA_CACHE)/plots_offline.html
PLOTS_HTML := reports/plots_html

$(VEGA_CACHE)/.unpacked:
	@command -v npm >/dev/null || { echo "npm is needed once to fetch $(VEGA_PACKAGES)" >&2; exit 1; }
	mkdir -p $(VEGA_CACHE)
	cd $(VEGA_CACHE) && npm pack --silent $(VEGA_PACKAGES)
	@# An npm tarball's root folder is package/: strip it, giving $(VEGA_CACHE)/<name>/build/...
	for spec in $(VEGA_PACKAGES); do \
	  name=$${spec%@*}; version=$${spec##*@}; \
	  rm -rf $(VEGA_CACHE)/$$name && mkdir -p $(VEGA_CACHE)/$$name && \
	  tar -xzf $(VEGA_CACHE)/$$name-$$version.tgz -C $(VEGA_CACHE)/$$name --strip-components=1 || exit 1; \
	done
	touch $@

$(PLOTS_TEMPLATE): $(VEGA_CACHE)/.unpacked src/cxr_triage/evaluation/plots.py
	python -m cxr_triage.evaluation.plots --vega-dir $(VEGA_CACHE) --out $@

plots: setup $(PLOTS_TEMPLATE) ## Render the DVC plots to reports/plots_html/index.html (offline)
	dvc plots show --html-template $(PLOTS_TEMPLATE) -o $(PLOTS_HTML)

# `dvc exp show` lists every param, metric and dependency hash (240+ columns). This keeps the
# headline metrics (metrics.json: cxr_triage.evaluation.headline) and the params that differ
# between the experiments shown; dependency columns (paths) and Created are dropped. Markdown
# output, so that nothing is cut to the terminal's width (one row is about 120 + 20 per changed
# param characters wide). EXP_ARGS adds options, e.g. EXP_ARGS="-A" or "--sort-by auroc".
EXP_HEADLINE := ^(winner|auroc|auroc_lo|auroc_hi|ece|sens|spec|cleared)$$
EXP_DROP := ^Created$$|/|^bentofile\.yaml$$|^requirements\.lock$$
EXP_ARGS ?=
exp: ## Compare DVC experiments: headline metrics and the params they changed (Markdown)
	@dvc exp show --md --only-changed --precision 3 --drop '$(EXP_DROP)' \
	  --keep '$(EXP_HEADLINE)' $(EXP_ARGS)

# axe-core for the web page's accessibility test (tests/integration/test_webui_browser.py injects
# it into the page): fetched once with npm into a git-ignored cache, never served.
AXE_DIR := .cache/axe-core
AXE_PACKAGE := axe-core@4.10.3

$(AXE_DIR)/axe.min.js:
	@command -v npm >/dev/null || { echo "npm is needed once to fetch $(AXE_PACKAGE)" >&2; exit 1; }
	mkdir -p $(AXE_DIR)
	cd $(AXE_DIR) && npm pack --silent $(AXE_PACKAGE)
	tar -xzf $(AXE_DIR)/axe-core-*.tgz -C $(AXE_DIR) --strip-components=1 package/axe.min.js
	test -s $@

axe: $(AXE_DIR)/axe.min.js ## Fetch axe-core (npm) for the web page's accessibility test

# Coverage-guided fuzzing of the image reader (atheris + libFuzzer), niced: 5-25 minutes on two
# cores. Seeds are rebuilt into a git-ignored folder; new coverage accumulates in the corpus
# folder across runs; a finding stops the run and is written to $(FUZZ_DIR)/artifacts/.
FUZZ_DIR := .cache/fuzz
FUZZ_RUNS ?= 200000
FUZZ_RSS_MB ?= 3072
fuzz: setup ## Fuzz read_image: FUZZ_RUNS (200000) executions under -rss_limit_mb=FUZZ_RSS_MB
	python fuzz/build_corpus.py --out $(FUZZ_DIR)/seeds
	mkdir -p $(FUZZ_DIR)/corpus $(FUZZ_DIR)/artifacts
	nice -n 10 python fuzz/fuzz_read_image.py $(FUZZ_DIR)/corpus $(FUZZ_DIR)/seeds \
	  -runs=$(FUZZ_RUNS) -rss_limit_mb=$(FUZZ_RSS_MB) -max_len=65536 -timeout=30 \
	  -artifact_prefix=$(FUZZ_DIR)/artifacts/ -print_final_stats=1

HOST ?= 127.0.0.1
PORT ?= 3000
serve: setup ## Serve the serving model over HTTP on $(HOST):$(PORT) (after `make demo`)
	bentoml serve cxr_triage.serving.service:CxrTriage --host $(HOST) --port $(PORT)

clean: ## Remove pipeline outputs (DVC cache kept)
	rm -rf data/synth data/ingest data/split data/embed models reports
