# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench clean

# Creates .venv when missing and installs the package with its test extra; re-runs when the
# package metadata changes.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)
	$(BIN)/keras-dense build-ops --if-missing

demo: install
	$(BIN)/python -m keras_dense.demo --output demo_output

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file per process at a time so
# that each module's fixtures are built once; TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

test: install lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# ruff is pinned in the test extra, so every machine lints with the same rules.
lint: $(STAMP)
	$(BIN)/ruff check keras_dense tests benchmarks tfrecords
	$(BIN)/ruff format --check keras_dense tests benchmarks tfrecords

# The benchmarks with their references (pydensecrf2, keras-hub): long runs, not part of CI.
bench: install
	$(BIN)/python -m pip install --quiet -e ".[bench,test]"
	for script in benchmarks/*.py; do \
	  case "$$script" in */common.py|*/gpu_check.py) continue;; esac; \
	  echo "== $$script"; $(BIN)/python "$$script" || exit 1; \
	done
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf demo_output .pytest_cache build *.egg-info
