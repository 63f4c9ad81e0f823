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

.PHONY: help setup demo test test-slow test-all bench lint format clean plots serve fuzz

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first: a looser requirement would pull several GB of CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed ## Create .venv and install the project with its pinned dependencies

demo: setup ## Run the whole pipeline (dvc repro) on the embedded synthetic data
	dvc repro

test: setup ## Run the default test suite (unit + integration, minus slow tests)
	pytest

test-slow: setup ## Run only the slow tests
	pytest -m slow

test-all: setup ## Run every test
	pytest -m ""

bench: setup ## Run the benchmarks and print their figures
	@for b in benchmarks/bench_*.py; do echo "== $$b"; python $$b || exit 1; done

lint: setup ## Check style (ruff)
	ruff check src tests benchmarks flows
	ruff format --check src tests benchmarks flows

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
