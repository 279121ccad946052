"""``make gpu-check`` (benchmarks/gpu_check.py) on this CPU: its CPU path runs end to end and says plainly
that the CUDA parts were skipped, so that the script cannot rot before a GPU runs it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
CUDA_TESTS = [
    "tests/unit/trainer/test_trainer_kernels_cuda.py",
    "tests/unit/shared/test_quant_matmul_cuda.py",
]

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a CUDA machine runs the GPU path: `make gpu-check`, not this test"
)


def _run(*args: str, timeout: float) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    return done.returncode, json.loads(lines[-1])


@pytest.mark.slow
def test_cpu_path_runs_every_part_and_says_cuda_was_skipped() -> None:
    """The script as `make gpu-check` runs it here, with vLLM's CPU build as the serving peer where
    `make test` installed it (.venv-vllm, make vllm-worker-env): its engine child (AsyncLLM, the same
    client, alternating rounds) is wired up too. A few minutes, most of it vLLM's start."""
    with_vllm = (ROOT / ".venv-vllm" / "bin" / "python").exists()
    rc, report = _run("--tests", *CUDA_TESTS, *(["--vllm-on-cpu"] if with_vllm else []), timeout=1200)
    assert rc == 0 and report["ok"], report
    assert report["cuda"] is False and "no CUDA here" in report["cuda_skipped"]
    # the selection: every cuda test of those files collected, none run here
    tests = report["tests"]
    assert tests["selected"] >= 20 and tests["skipped"] == tests["selected"] and tests["failed"] == []
    assert any("CUDA" in reason for reason in tests["skip_reasons"])
    # the trainer's wiring: a real run_training on the CPU
    trainer = report["trainer"]
    assert trainer["ok"] and trainer["tokens_per_s"] > 0 and 0 < trainer["mfu"] < 1
    assert trainer["steps_timed"] >= 2 and trainer["model_parameters"] > 1_000_000
    # serving: the same client against each engine in its own process; every request ran to its
    # max_tokens with EOS ignored (the script refuses a round where one did not)
    serving = report["serving"]
    assert serving["ok"] and serving["puyu"]["output_tokens_per_s"] > 0
    if with_vllm:
        assert serving["vllm"]["output_tokens_per_s"] > 0 and serving["ratio_puyu_vs_vllm"] > 0
    else:
        assert "vllm" not in serving and "vllm_skipped" in serving
    assert report["goals_met"] is None
    assert {g["goal"] for g in report["goals"].values()} == {0.5, 0.8}
    assert all(g["measured"] is None for g in report["goals"].values())


def _gpu_check() -> ModuleType:
    """The script as a module (its top level imports only the standard library)."""
    spec = importlib.util.spec_from_file_location("puyu_gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_test_results_are_read_from_pytests_report(tmp_path: Path) -> None:
    """Outside tests/ (no conftest skips the marker), so the marked tests run here: one passes, one
    fails, one is skipped; an unmarked one is not selected."""
    (tmp_path / "test_marked.py").write_text(
        "import pytest\n"
        "@pytest.mark.cuda\ndef test_passes(): pass\n"
        "@pytest.mark.cuda\ndef test_fails(): assert 1 == 2\n"
        "@pytest.mark.cuda\n@pytest.mark.skip(reason='no device here')\ndef test_skipped(): pass\n"
        "def test_not_selected(): assert False\n"
    )
    result = _gpu_check().run_tests([str(tmp_path)], timeout=120)
    assert result["selected"] == 3 and result["passed"] == 1 and result["skipped"] == 1
    assert result["failed"] == ["test_marked::test_fails"] and not result["ok"]
    assert result["skip_reasons"] == {"no device here": 1}


def test_a_selection_without_cuda_tests_is_a_failed_check(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text("def test_plain(): pass\n")
    result = _gpu_check().run_tests([str(tmp_path)], timeout=120)
    assert not result["ok"] and result["error"] == "no test is marked cuda"


def test_unknown_parts_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--parts", "tests,mfu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no part mfu" in done.stderr
