"""HumanEval in the sandbox: canonical solutions pass, empty ones fail; the limits hold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from services.evaluator.core.backends import Loglikelihood, Progress, RollingLoglikelihood
from services.evaluator.core.loaders import load
from services.evaluator.core.runner import humaneval_program, run_task
from services.evaluator.core.sandbox import run_program, run_programs
from services.evaluator.core.tasks import GenerationConfig, get_task

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
needs_humaneval = pytest.mark.skipif(
    not (DATA / "humaneval" / "HumanEval.jsonl.gz").exists(), reason=f"no HumanEval data in {DATA}"
)


class Completions:
    """A backend that answers each prompt from a table (the canonical solution, or nothing)."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, progress: Progress | None = None
    ) -> list[str]:
        return [self.table[p] for p in prompts]

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[Loglikelihood]:
        raise NotImplementedError

    def loglikelihood_rolling(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> list[RollingLoglikelihood]:
        raise NotImplementedError


@needs_humaneval
@pytest.mark.slow
def test_every_canonical_solution_passes_and_empty_ones_fail() -> None:
    task = get_task("humaneval")
    ds = load(task.loader, DATA)
    assert len(ds.samples) == 164
    canonical = run_task(task, Completions({s["prompt"]: s["canonical_solution"] for s in ds.samples}), ds)
    failed = [(d["id"], d["error"]) for d in canonical.details if not d["correct"]]
    assert canonical.metrics == {"pass@1": 1.0}, failed
    empty = run_task(task, Completions({s["prompt"]: "" for s in ds.samples}), ds, limit=40)
    assert empty.metrics == {"pass@1": 0.0}
    assert all(d["status"] in ("failed", "error") for d in empty.details)


@needs_humaneval
def test_canonical_and_empty_on_a_subset() -> None:
    task = get_task("humaneval")
    ds = load(task.loader, DATA)
    sub = ds.samples[::16]  # 11 problems across the set
    ok = run_programs([humaneval_program(s, s["canonical_solution"]) for s in sub])
    bad = run_programs([humaneval_program(s, "") for s in sub])
    assert all(r.passed for r in ok), [r.detail for r in ok if not r.passed]
    assert not any(r.passed for r in bad)


def test_timeout_memory_network_and_files_are_contained(tmp_path: Path) -> None:
    slow = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert slow.status == "timeout" and not slow.passed
    hog = run_program("x = bytearray(2 * 1024 ** 3)\n", memory_mb=256)
    assert not hog.passed and "MemoryError" in hog.detail
    net = run_program("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n")
    assert not net.passed
    victim = tmp_path / "keep.txt"
    victim.write_text("x")
    rm = run_program(f"import os\nos.remove({str(victim)!r})\n")
    assert not rm.passed and victim.exists()
    assert run_program("import os\nprint(open('mine.txt', 'w').write('ok'))\n").passed  # its own tmp dir
    assert run_program("raise SystemExit(0)\n").passed


def test_network_namespace_has_no_route_even_with_a_raw_socket() -> None:
    # _socket (the C module) bypasses the Python guard: only the kernel (seccomp, namespace) stops it
    probe = "import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 53))\n"
    result = run_program(probe, timeout_s=5)
    assert not result.passed
    assert "unreachable" in result.detail.lower() or "Errno" in result.detail, result.detail


def test_generated_code_sees_no_file_of_the_host_and_no_process(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    checkout = Path(__file__).resolve().parents[3]
    for probe in (
        # builtins.open and os.listdir are not patched by the guard: the filesystem view hides the host
        f"import sys\ntry:\n    open({str(secret)!r})\nexcept FileNotFoundError:\n    sys.exit(0)\nsys.exit(3)\n",
        f"import os\nfor p in ({str(checkout)!r}, '/etc/passwd', '/home', '/var', '/proc/1', '/bin/sh'):\n"
        "    assert not os.path.exists(p), p\n",
        "import os\nassert os.getuid() == 65534, os.getuid()\n",
    ):
        result = run_program(probe, timeout_s=5)
        assert result.passed, (probe, result.detail)
