# clinpaper: the two commands of the README.
#   make demo   creates the environment, synthesizes the demo cohort, runs the paper and builds it
#   make test   creates the environment and runs the whole test suite (what .ci/run calls)
# Everything is installed from PyPI into .venv; nothing needs to be installed beforehand but
# Python 3.11. The PDF is made with Typst (shipped in the `typst` wheel), so no LaTeX is needed.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
DEMO_PATIENTS ?= 20000
DEMO_SITES ?= 30
DEMO_SEED ?= 7
DEMO_DB := book/_data/demo.duckdb

.PHONY: setup system-packages demo demo-data test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --python $(BIN)/python --quiet -e '.[dev]'
	@touch $@

$(DEMO_DB): | setup
	@mkdir -p $(dir $@)
	$(BIN)/clinpaper synth --out $@ --patients $(DEMO_PATIENTS) --sites $(DEMO_SITES) --seed $(DEMO_SEED) --overwrite

demo-data: $(DEMO_DB)

demo: setup $(DEMO_DB)
	$(BIN)/clinpaper run --study book/study.yaml --cohort $(DEMO_DB) --name demo
	$(BIN)/clinpaper build demo
	@echo
	@echo "The demo paper:"
	@echo "  web book:   $(CURDIR)/book/_build/demo/html/index.html"
	@echo "  manuscript: $(CURDIR)/book/_build/demo/manuscript.docx"
	@echo "  manuscript: $(CURDIR)/book/_build/demo/manuscript.pdf"

# What the reader tests open the outputs with: Debian's Chromium (headless, driven by
# Playwright with executable_path) and poppler's pdftoppm. Installed once, as root.
system-packages:
	@if ! command -v chromium >/dev/null || ! command -v pdftoppm >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils >/dev/null; \
	fi

# The whole suite: every notebook's tests (nbdev-test) and the cross-module tests (pytest).
test: setup system-packages
	$(BIN)/nbdev-test --n-workers 2 --flags slow
	$(BIN)/pytest -n 2 --dist loadgroup tests

# The quick pass while developing: notebooks without their slow cells, pytest without slow tests.
test-fast: setup
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/pytest -n 2 --dist loadgroup -m "not slow" tests

clean:
	rm -rf book/_runs book/_build
