# jinterp — every target works on a fresh machine: it creates .venv first when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup test test-fast demo bench lint clean

setup: $(STAMP)

# torch==2.13.0 (the `torch` extra) resolves to a local CPU wheel here; a looser pin would pull CUDA builds.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[torch,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

demo: $(STAMP)
	$(BIN)/jinterp demo --workdir runs/demo

bench: $(STAMP)
	$(BIN)/python -m experiments.bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check jinterp tests experiments

clean:
	rm -rf $(VENV) .pytest_cache runs
