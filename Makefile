# mvcap — the two commands a newcomer runs: `make demo` and `make test`.
# Everything installs into a local virtualenv (.venv) from the package registries.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mvcap-installed
DEMO_OUT ?= demo_out

.PHONY: install demo test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned to the CPU wheel available here (a bare `torch` would pull CUDA).
$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mvcap demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q

# Speed benchmarks (results and commands recorded in docs/BENCHMARKS.md).
bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: $(STAMP)
	$(PY) -m ruff check mvcap tests

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info
