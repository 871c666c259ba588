# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# torch is installed first, on its own, so pip takes the local CPU wheel; everything else is resolved against
# constraints.txt (the versions tested together), which pins torch and torchvision so nothing pulls CUDA builds.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nakt-installed

.PHONY: setup demo smoke test test-faults bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

# A rerun replaces the earlier demo's output (nakt_ray/demo/run.py: prepare_run_dir). nakt is not on PATH: say how.
demo: setup
	$(VENV)/bin/nakt demo
	@echo "Run nakt as $(VENV)/bin/nakt (e.g. $(VENV)/bin/nakt evaluate --help), or 'source $(VENV)/bin/activate' first."

smoke: setup
	$(VENV)/bin/nakt demo --smoke
	@echo "Run nakt as $(VENV)/bin/nakt (e.g. $(VENV)/bin/nakt evaluate --help), or 'source $(VENV)/bin/activate' first."

test: setup
	$(PY) -m pytest -q --durations=10 tests

# Fault injection (workers and drivers killed, runs resumed) and the studies' smoke runs: real multi-process runs,
# 22 min on 2 quiet cores (2026-12-07).
test-faults: setup
	$(PY) -m pytest -q --durations=10 -m fault tests

clean:
	rm -rf runs .pytest_cache
