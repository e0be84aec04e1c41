# clinpaper: the two commands of the README.
#   make demo   creates the environment, scaffolds the demo paper project (demo/, a
#               hospital-variation paper made by `clinpaper new`), synthesizes its cohort,
#               runs the paper and builds it
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
DEMO_DIR := demo
DEMO_DB := $(DEMO_DIR)/_data/demo.duckdb

.PHONY: setup system-packages demo demo-data test test-fast clean

setup: $(VENV)/.installed

# --compile-bytecode: byte code for every installed module, as pip writes by default and uv does not;
# without it each kernel compiles its imports from source again (PyMC, ArviZ, SciPy: 16 s against 5.5 s
# here, where PYTHONDONTWRITEBYTECODE=1 keeps Python from writing it at import)
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --python $(BIN)/python --quiet --compile-bytecode -e '.[dev]'
	@touch $@

# the demo is a paper project of its own, scaffolded once from the package's template
$(DEMO_DIR)/_toc.yml: | setup
	@if [ ! -d $(DEMO_DIR) ]; then $(BIN)/clinpaper new $(DEMO_DIR) --template hospital-variation; \
	else echo "$(DEMO_DIR)/ exists but holds no _toc.yml: move it away, then run make demo again." >&2; exit 2; fi

$(DEMO_DB): | $(DEMO_DIR)/_toc.yml
	$(BIN)/clinpaper synth --out $@ --patients $(DEMO_PATIENTS) --sites $(DEMO_SITES) --seed $(DEMO_SEED) --overwrite

demo-data: $(DEMO_DB)

demo: setup $(DEMO_DB)
	cd $(DEMO_DIR) && $(CURDIR)/$(BIN)/clinpaper run --name demo
	cd $(DEMO_DIR) && $(CURDIR)/$(BIN)/clinpaper build demo
	@echo
	@echo "The demo paper (project folder $(CURDIR)/$(DEMO_DIR)):"
	@echo "  web book:   $(CURDIR)/$(DEMO_DIR)/_build/demo/html/index.html"
	@echo "  manuscript: $(CURDIR)/$(DEMO_DIR)/_build/demo/manuscript.docx"
	@echo "  manuscript: $(CURDIR)/$(DEMO_DIR)/_build/demo/manuscript.pdf"
	@echo "  the run:    $(CURDIR)/$(DEMO_DIR)/_runs/demo"

# What the reader tests open the outputs with: Debian's Chromium (headless, driven by
# Playwright with executable_path) and poppler's pdftoppm. Installed once, as root.
system-packages:
	@if ! command -v chromium >/dev/null || ! command -v pdftoppm >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils >/dev/null; \
	fi

# The whole suite: every notebook's tests (nbdev-test) and the cross-module tests (pytest).
test: setup system-packages
	$(BIN)/nbdev-test --n-workers 2 --flags slow
	$(BIN)/pytest -n 2 --dist loadgroup --durations=25 tests

# The quick pass while developing: notebooks without their slow cells, pytest without slow tests.
test-fast: setup
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/pytest -n 2 --dist loadgroup -m "not slow" tests

# removes the demo's runs and builds (its data and its text stay); `rm -rf demo` removes it all
clean:
	rm -rf $(DEMO_DIR)/_runs $(DEMO_DIR)/_build
