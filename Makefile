# jinterp — every target works on a fresh machine: it creates .venv first when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup test test-fast demo bench lint docs-check clean

setup: $(STAMP)

# constraints.txt pins the exact stack the tests ran on (torch==2.13.0 resolves to the local CPU wheel here);
# pyproject.toml only states the ranges jinterp accepts. The tfds extra is for the tfds: reader and its tests; onednn
# brings the library the CPU convolution fast path is compiled against (built here once, ahead of the tests).
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[torch,dev,tfds,onednn]'
	$(BIN)/python -m jinterp.nn._onednn || echo "warning: oneDNN convolutions not built; XLA's are used"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

demo: $(STAMP)
	$(BIN)/jinterp demo --workdir runs/demo

# On a machine without the venv (e.g. a GPU box):  make bench STAMP= BENCH_PY=python3 ARGS="--out DIR"
BENCH_PY ?= $(BIN)/python
bench: $(STAMP)
	$(BENCH_PY) -m experiments.bench $(ARGS)

# Every `jinterp ...` command in README.md parses, its --set keys and layer names exist, cheap ones run.
docs-check: $(STAMP)
	$(BIN)/python tools/docs_check.py README.md

lint: $(STAMP)
	$(BIN)/ruff check jinterp tests experiments tools

clean:
	rm -rf $(VENV) .pytest_cache runs
