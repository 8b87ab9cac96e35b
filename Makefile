# make demo: set up .venv if missing, install, run the parity check on a small default set.
# make test: same set-up, then the test suite (slow variants excluded; `make test-slow` runs them).
# make test-vision: ports of torchvision's models, in their own environment (torchvision needs torch's
# CUDA build, which runs on CPU).
# make test-rounding: the precision-sensitive default tests again under other kernels (AVX2 in XLA,
# oneDNN and MKL), so that no verdict depends on this CPU's rounding.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default; on a GPU machine e.g. `make test TORCH_SPEC='torch==2.11.*'`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# torchvision fails to import with torch's CPU build: the vision tests get a second environment
VISION_VENV ?= .venv-vision
VISION_SPEC ?= torch==2.14.1 torchvision==0.29.1
ROUNDING := XLA_FLAGS=--xla_cpu_max_isa=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

.PHONY: install demo test test-slow test-rounding test-vision test-huge test-all lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-compile -e ".[test,experiments]"
	touch $@

demo: install
	$(PY) -m parity list
	$(PY) -m parity check

test: install
	$(PY) -m ruff check parity torchnets jaxnets tests scripts examples conftest.py
	$(PY) -m pytest -q -m "not slow and not huge" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m "slow" $(PYTEST_ARGS)

test-rounding: install
	$(ROUNDING) $(PY) -m pytest -q -m "precision and not slow and not huge" $(PYTEST_ARGS)

$(VISION_VENV)/.installed: pyproject.toml Makefile
	test -x $(VISION_VENV)/bin/python || python3 -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/python -m pip install -q --upgrade pip
	$(VISION_VENV)/bin/python -m pip install -q --no-compile $(VISION_SPEC)
	$(VISION_VENV)/bin/python -m pip install -q --no-compile -e ".[test,vision]"
	touch $@

test-vision: $(VISION_VENV)/.installed
	$(VISION_VENV)/bin/python -m pytest -q -m "vision and not slow and not huge" tests/test_port_vision.py $(PYTEST_ARGS)

test-huge: install
	$(PY) -m pytest -q -m "huge" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check parity torchnets jaxnets tests scripts examples conftest.py

clean:
	rm -rf $(VENV) $(VISION_VENV) build *.egg-info .pytest_cache
