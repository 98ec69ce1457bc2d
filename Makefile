# mvcap — the two commands a newcomer runs: `make demo` and `make test`.
# Everything installs into a local virtualenv (.venv) from the package registries.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mvcap-installed
DEMO_OUT ?= demo_out

.PHONY: install demo test browser bench bench-batch gpu-check train-gpu real-take lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned to the CPU wheel available here (a bare `torch` would pull CUDA).
$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,detect]" || { echo "MediaPipe (detect extra) unavailable here: installing without it"; \
	  $(PY) -m pip install -q -e ".[dev]"; }
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mvcap demo --out $(DEMO_OUT)

test: $(STAMP) browser
	$(PY) -m pytest -q

# Headless Chromium (Debian package) for the run-report test only; best effort: without it
# (not root, no apt) that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the report test (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
	      >/dev/null 2>&1 || echo "chromium install failed; the browser test will skip"; \
	  else echo "chromium not found and cannot apt-get it; the browser test will skip"; fi; }

# Speed benchmarks (results and commands recorded in docs/BENCHMARKS.md).
bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# mvcap batch on Ray: 1 vs 2 local workers on a 20-frame take (docs/BENCHMARKS.md); needs >= 3 idle cores.
bench-batch: $(STAMP)
	$(PY) benchmarks/batch_scaling.py

# On a CUDA machine: nvdiffrast parity + CPU/GPU timings side by side (benchmarks/gpu_check.py).
gpu-check: $(STAMP)
	$(PY) -c "import nvdiffrast.torch" 2>/dev/null || $(PY) -m pip install -q -e ".[gpu]"
	$(PY) benchmarks/gpu_check.py --out runs/gpu_check

# On a CUDA machine: parity check, then the paper-size network for MINUTES (default 10) of wall time.
train-gpu: $(STAMP)
	PY=$(PY) MINUTES=$(or $(MINUTES),10) OUT=runs/train_gpu bash benchmarks/train_gpu.sh

# The chain + cross-validation on the real lab take in ../shared/data/real_multiperson.
real-take: $(STAMP)
	MVCAP=$(VENV)/bin/mvcap bash benchmarks/real_take.sh

lint: $(STAMP)
	$(PY) -m ruff check mvcap tests

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info
