# Two commands that work on a fresh machine with nothing but Python and the package registry.
#   make demo   optimise a 10-step schedule for the gmm-8x8 toy problem and compare it
#   make test   run the whole test suite (ruff first)
# TORCH picks the PyTorch requirement: any torch>=2.1 works; the default pin takes a
# CPU wheel where one is at hand. `make test TORCH=torch` for the latest release.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/ays demo

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
