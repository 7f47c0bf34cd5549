# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint clean

# Creates .venv when missing and installs the package with its test extra; re-runs when the
# package metadata changes.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)
	$(BIN)/python -m keras_dense.ops --build

demo: install
	$(BIN)/python -m keras_dense.demo --output demo_output

test: install
	$(BIN)/python -m pytest -q

# ruff is pinned in the test extra, so every machine lints with the same rules.
lint: $(STAMP)
	$(BIN)/ruff check keras_dense tests benchmarks tfrecords
	$(BIN)/ruff format --check keras_dense tests benchmarks tfrecords

clean:
	rm -rf demo_output .pytest_cache build *.egg-info
