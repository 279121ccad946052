#!/usr/bin/env bash
# The quantisation backend transformers reads GPTQ and AWQ checkpoints with (gptqmodel, with optimum for
# GPTQ), in a venv of its own for the interop tests (tests/unit/shared/test_quant_interop.py).
#
# Its own venv because gptqmodel 7.7.0 asks for torch>=2.14 (and much else) while puyu pins torch 2.13:
# gptqmodel and optimum are installed without their dependencies, on top of puyu's .venv packages
# (a .pth file), with the few modules gptqmodel imports that .venv lacks. gptqmodel's sdist builds
# no CUDA extension here (BUILD_CUDA_EXT=0); its torch kernels run on the CPU.
#
# usage: install.sh VENV PUYU_PYTHON. Never fails the build: an install that cannot succeed leaves its
# reason in VENV/FAILED, and the interop tests skip saying it.
set -u
venv=$1
main_python=$2
rm -rf "$venv"
fail() {
  mkdir -p "$venv"
  echo "$1" > "$venv/FAILED"
  echo "warning: the quantisation backend venv was not built: $1" >&2
  exit 0
}
"$main_python" -m venv "$venv" || fail "python -m venv $venv failed"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
main_site=$("$main_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$main_site" > "$site/puyu-main.pth"
BUILD_CUDA_EXT=0 "$venv/bin/pip" install -q --disable-pip-version-check --no-deps \
  gptqmodel==7.7.0 optimum==2.3.0 pypcre==0.6.4 logbar==0.4.15 tokenicer==0.0.14 \
  device-smi==0.5.7 defuser==0.0.28 pillow==13.0.0 threadpoolctl \
  || fail "pip could not install gptqmodel 7.7.0 and optimum 2.3.0 (see the output above)"
"$venv/bin/python" -c "import gptqmodel, optimum" || fail "gptqmodel 7.7.0 does not import here"
touch "$venv/.installed"
