# Fresh machine: `make demo` runs the subnet locally, `make test` runs the test suite.
# `make check` is the fast loop while editing: ruff, mypy and the unit tests (2-3 minutes
# on 2 cores); `make test` (what CI runs) is ruff and every test, multi-process and end-to-end
# included. All create .venv on first use; later runs reuse it and finish in seconds.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
MYPY    := mypy==2.4.1
PYTEST_ARGS ?=

.PHONY: install test check demo lint clean

install: $(STAMP)

# Torch first and pinned: a bare `torch` requirement would pull several GB of CUDA wheels.
$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only: modules marked `multiprocess` (hivemind peers) or `e2e` (whole neurons or
# swarms) are left to `make test`; the markers are described in pyproject.toml.
check: install $(VENV)/.mypy
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q --durations=5 -m "not multiprocess and not e2e" $(PYTEST_ARGS)

$(VENV)/.mypy: $(STAMP)
	$(PY) -m pip install -q $(MYPY)
	touch $@

demo: install
	$(PY) scripts/local_swarm.py --miners 3 --validators 1 --epochs 3 \
		--workdir runs/demo --summary runs/demo/summary.json

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
