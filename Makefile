# Two commands set up a fresh machine:  make reproduce  and  make test.
# Each creates .venv and installs the project into it when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: reproduce test docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[torch]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed $(VENV)/.installed-docs

# The docs extra alone (no torch): what make docs needs. The test extra includes it.
$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $@

reproduce: $(VENV)/.installed
	$(BIN)/loraml reproduce

# One BLAS thread per process: the tests use many small matrices, where threading only adds
# overhead (and the suite's process pools already use both cores).
test: $(VENV)/.installed-test
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest

# The documentation site: docs/_build/html/index.html, warnings as errors. The notebooks are
# executed once (at the reduced size LORAML_FAST=1) and cached in docs/_build/.jupyter_cache; a
# rebuild reuses them. make test builds the same site (tests/test_docs.py).
docs: $(VENV)/.installed-docs
	$(BIN)/python -m sphinx -E -W --keep-going -q -b html -d docs/_build/doctrees docs docs/_build/html
	@echo "open docs/_build/html/index.html"

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/exact_solver.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis results docs/_build docs/api/generated
