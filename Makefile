# Two commands set up a fresh machine: `make run` (the main job) and `make test` (the suite).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
GRID ?= conditioning
ARGS ?=

.PHONY: install run test test-fast lint system-deps benchmarks clean

$(STAMP): pyproject.toml
	python3.11 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

# Debian packages the tests drive for real: Chromium (browser tests) and a one-node SLURM.
# Installed only where missing, and only as root; elsewhere those tests skip and say why.
system-deps:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v slurmctld >/dev/null || missing="$$missing slurm-wlm"; \
	  command -v munged >/dev/null || missing="$$missing munge"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root: browser and SLURM tests will skip"; fi

run: install
	$(PY) ablations/run.py grid=$(GRID) $(ARGS)

# One BLAS thread per process: the suite runs SLURM job arrays and servers beside pytest on 2 cores,
# where oversubscribed torch threads made the suite several times slower.
test: install system-deps lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest $(ARGS)

# The suite without the end-to-end training, SLURM and Chromium tests (markers: pyproject.toml).
test-fast: install lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m "not slow and not slurm and not browser" $(ARGS)

# ruff's rule set and the reasons for it: pyproject.toml [tool.ruff].
lint: install
	$(VENV)/bin/ruff check .

# As modules from the checkout, like the suite: some build their folders with tests.support.
benchmarks: install
	for b in benchmarks/[!_]*.py; do $(PY) -m benchmarks.$$(basename $$b .py) || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
