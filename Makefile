# lightning_geo: `make demo` and `make test` set up a virtual environment (once) and run.
#
# Variables you can set:
#   PYTHON       interpreter that creates the environment (default: python3; 3.10+)
#   VENV         environment folder (default: .venv); point it at an existing environment to reuse its torch
#   CONSTRAINTS  pip constraints file; default constraints/cpu.txt on machines without an NVIDIA driver
#                (torch 2.13.0 CPU build, no CUDA wheels), none where `nvidia-smi` exists (your torch, or the
#                newest CUDA build pip picks). Set it empty to install without constraints.
#   DEMO_ARGS    extra flags for `lightning-geo demo`, e.g. DEMO_ARGS="--budget 60s" or "--arm geo"
#   PYTEST_ARGS  extra flags for pytest, e.g. PYTEST_ARGS="-m 'not slow'"
#   TEST_WORKERS pytest worker processes for `make test` (default 2; each takes whole test files, so a file's
#                fixtures are set up once); TEST_WORKERS=0 runs the tests in this process
#
# `make docs` builds the documentation site strictly into build/site (as tests/test_docs.py does in
# `make test`); `make docs-serve` serves it with live reload on http://127.0.0.1:8000.

PYTHON ?= python3
VENV ?= .venv
HAS_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
CONSTRAINTS ?= $(if $(HAS_NVIDIA),,constraints/cpu.txt)
DEMO_ARGS ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

BIN := $(VENV)/bin
# The demo needs the package and its demo extra (tokenizers); the tests, docs and lint need the test extra
# (transformers, litgpt, optuna, ray, mkdocs, mypy, ...), which takes minutes more to install: `make demo` from a
# fresh clone stays quick.
STAMP := $(VENV)/.lightning_geo-installed
TEST_STAMP := $(VENV)/.lightning_geo-test-installed

.PHONY: demo test install lint docs docs-serve clean

demo: $(STAMP)
	$(BIN)/lightning-geo demo $(DEMO_ARGS)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

install: $(TEST_STAMP)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

docs: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs when the package metadata or the constraints change.
$(STAMP): pyproject.toml setup.cfg $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS)) --editable '.[demo]'
	touch $@

$(TEST_STAMP): pyproject.toml setup.cfg $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS)) --editable '.[test]'
	touch $@ $(STAMP)

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .ruff_cache
