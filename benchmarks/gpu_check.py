"""`make gpu-check`: the CUDA-only tests and short GPU benchmarks, in under 8 minutes, one JSON line last.

On a machine with a CUDA device (and torch's CUDA build):

1. **tests**: every test marked ``cuda`` (pytest ``-m cuda``: the Triton RMSNorm, rotary and
   cross-entropy kernels, paged attention, the 8-bit KV cache kernel, the int4/int8 dequant-matmul),
   in a pytest process of their own; counts, failures and skip reasons from its JUnit report.
2. **trainer**: ``run_training`` (what ``puyu train`` and the service run) on a ~100M-parameter Llama
   (768 wide, 12 layers, the BPE vocabulary padded to 32k, sequences of 1024) in bf16 with ``torch.compile``;
   tokens/s is the median step after the compile's warm-up steps; MFU = tokens/s x FLOPs per token
   (``services.trainer.core.model.flops_per_token``) / the device's bf16 peak (``core.mfu``'s data
   sheet figures; ``PUYU_TRAINER_PEAK_TFLOPS`` overrides). Goal: MFU >= 0.5.
3. **serving**: output tokens/s of puyu's engine beside vLLM's (its Python engine, ``AsyncLLM``) on the
   same GPU, both resident (vLLM at 0.35 of the GPU's memory), on the same ~100M Llama folder
   (``bench_serving_dtype.build``) in bf16, with the same requests: rounds of 64 prompts (GSM8K
   questions as token ids, or synthetic text without ``../shared/data``), 32 in flight, 128 greedy
   tokens each with EOS ignored; each engine runs in a process of its own, driven by the same client
   code over a line protocol, the engines alternating round by round; the medians count. Goal: puyu
   >= 0.8x vLLM. vLLM runs from ``PUYU_GPU_CHECK_VLLM_PYTHON``, else ``.venv-vllm-cuda`` (``make
   gpu-check`` installs it), else ``/opt/vllm`` (the gpu-vllm image); without one it is skipped, saying so.

Without CUDA it runs what the CPU can (and says ``"cuda": false`` with the reason): the selection of
tests (collected and skipped by the marker), then the same trainer and serving code on the CPU with a
tiny model for a few seconds (puyu's engine; vLLM's CPU build too with ``--vllm-on-cpu``), so that the
wiring is exercised; those figures are not the goals' and the goals read ``null``.

    .venv/bin/python benchmarks/gpu_check.py [--tests tests] [--parts tests,trainer,serving] [--vllm-on-cpu]

Exit status 1 when a CUDA test fails or a part errs; goals missed are reported, not failed.

The vLLM side imports only vLLM and the standard library: this file runs in vLLM's interpreter too
(``--serve vllm``), whose venv need not hold puyu, so module-level imports are the standard library's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"trainer_mfu": 0.5, "serving_ratio_vs_vllm": 0.8}
BUDGET_S = 8 * 60
# Seconds each part may take (their sum stays inside BUDGET_S with the model builds).
TESTS_TIMEOUT, TRAINER_TIMEOUT, SERVING_TIMEOUT = 120, 200, 150

# ------------------------------------------------------------------------------------------- workloads
# The trainer's ~100M Llama on CUDA, and a tiny one for the CPU's wiring run.
TRAIN_GPU = {
    "architecture": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "max_position_embeddings": 1024,
        "vocab_size": 32000,
        "tie_word_embeddings": True,
    },
    "seq_len": 1024,
    "micro_batch_size": 32,
    "max_steps": 30,
    "warmup_steps": 5,
    "precision": "bf16",
    "torch_compile": "on",
}
TRAIN_CPU = {
    "seq_len": 64,
    "micro_batch_size": 4,
    "max_steps": 6,
    "warmup_steps": 1,
    "precision": "fp32",
    "torch_compile": "off",
}
TRAIN_WARMUP_STEPS = {True: 8, False: 2}  # steps left out of the rate (the compile happens in them)
# Serving: (requests per round, in flight, output tokens, rounds)
SERVE_GPU = (64, 32, 128, 3)
SERVE_CPU = (8, 4, 8, 1)
MAX_STEP_TOKENS = 2048  # tokens per engine step, both engines (puyu's PUYU_GATEWAY_MAX_STEP_TOKENS)


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cuda_state() -> tuple[bool, str]:
    """(usable, what this machine has): a CUDA device under a CUDA build of torch."""
    import torch

    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU build"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA device (driver, CUDA_VISIBLE_DEVICES)"
    return True, f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"


# ----------------------------------------------------------------------------------------------- tests
def run_tests(paths: list[str], timeout: float) -> dict[str, Any]:
    """pytest -m cuda over ``paths`` in a process of its own; the figures from its JUnit report."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-tests-") as tmp:
        report = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
        command += [f"--junitxml={report}", "-o", "junit_family=xunit2", *paths]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"the cuda tests ran past {timeout:.0f} s"}
        seconds = round(time.perf_counter() - started, 1)
        if not report.exists():
            return {"ok": False, "error": f"pytest exited {done.returncode}: {done.stderr[-1500:]}"}
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        skipped: dict[str, int] = {}
        failed: list[str] = []
        for case in suite.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            for child in case:
                if child.tag == "skipped":
                    reason = (child.get("message") or "").strip()
                    skipped[reason] = skipped.get(reason, 0) + 1
                elif child.tag in ("failure", "error"):
                    failed.append(name)
    total = int(suite.get("tests", 0))
    figures = {
        "selected": total,
        "passed": total - len(failed) - sum(skipped.values()),
        "failed": failed,
        "skipped": sum(skipped.values()),
        "skip_reasons": skipped,
        "seconds": seconds,
    }
    if total == 0:  # exit status 5: the marker selected nothing, which is a broken check
        return {"ok": False, "error": "no test is marked cuda", **figures}
    return {"ok": not failed, **figures}


# --------------------------------------------------------------------------------------------- trainer
def trainer_part(cuda: bool) -> dict[str, Any]:
    """``run_training`` on the GPU model (or the tiny CPU one); steady tokens/s and MFU."""
    import torch

    from contracts.events import TrainSpec
    from services.trainer.core import TrainJob, run_training
    from services.trainer.core.mfu import device_peak, mfu
    from services.trainer.core.model import flops_per_token
    from services.trainer.core.tokenizer import train_bpe
    from shared.artifacts import ArtifactStore
    from shared.samples import heldout_texts

    spec = TrainSpec.model_validate(
        {
            **(TRAIN_GPU if cuda else TRAIN_CPU),
            "document_attention": False,
            "num_threads": None if cuda else 2,
        }
    )
    texts = heldout_texts(3000 if cuda else 200)
    ends: list[float] = []

    def progress(stage: str, fraction: float, message: str = "", **metrics: float) -> None:
        if "step" in metrics:
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="gpu-check-train-") as tmp:
        work = Path(tmp)
        data = work / "corpus.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        # The sample corpus's BPE stops near a thousand tokens: the vocabulary is padded with unused tokens
        # to the architecture's, so that embedding and output layer cost what a real 32k vocabulary costs.
        tokenizer = train_bpe(texts, spec.architecture.vocab_size)
        tokenizer.add_tokens([f"<unused_{i}>" for i in range(spec.architecture.vocab_size - len(tokenizer))])
        tokenizer.save_pretrained(work / "tokenizer")
        spec = spec.model_copy(update={"tokenizer_uri": str(work / "tokenizer")})
        started = time.perf_counter()
        result = run_training(
            TrainJob("gpu-check", spec, [str(data)]),
            work / "run",
            ArtifactStore(work.as_uri()),
            progress=progress,
            device="cuda" if cuda else "cpu",
            resume=False,
        )
        seconds = time.perf_counter() - started
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(result.checkpoint)  # the run's own checkpoint
        params = sum(p.numel() for p in model.parameters())
        fpt = flops_per_token(model, spec.seq_len)
    warm = TRAIN_WARMUP_STEPS[cuda]
    steps = [b - a for a, b in zip(ends[warm:], ends[warm + 1 :], strict=False)]
    rate = spec.micro_batch_size * spec.seq_len / statistics.median(steps)
    device = torch.device("cuda" if cuda else "cpu")
    peak = device_peak(device, bf16=spec.precision == "bf16")
    return {
        "ok": True,
        "model_parameters": params,
        "batch": f"{spec.micro_batch_size}x{spec.seq_len}",
        "precision": spec.precision,
        "torch_compile": spec.torch_compile,
        "steps_timed": len(steps),
        "tokens_per_s": round(rate, 1),
        "flops_per_token": fpt,
        "peak_tflops": round(peak / 1e12, 2),
        "mfu": round(mfu(rate, fpt, peak), 4),
        "final_loss": round(result.metrics["loss"], 3),
        "seconds": round(seconds, 1),
    }


# --------------------------------------------------------------------------------------------- serving
async def drive(
    stream: Callable[[list[int], int], AsyncIterator[int]],
    prompts: list[list[int]],
    max_tokens: int,
    concurrency: int,
) -> dict[str, Any]:
    """One round, the same client for both engines: ``concurrency`` requests in flight; ``stream``
    yields a request's output token count so far."""
    slots = asyncio.Semaphore(concurrency)
    ttft: list[float] = []

    async def one(prompt: list[int]) -> int:
        async with slots:
            sent, first, count = time.perf_counter(), False, 0
            async for count in stream(prompt, max_tokens):
                if count and not first:
                    first = True
                    ttft.append(time.perf_counter() - sent)
            return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in prompts))
    seconds = time.perf_counter() - started
    ttft.sort()
    return {
        "output_tokens_per_s": sum(counts) / seconds,
        "tokens": sum(counts),
        "short_requests": sum(c != max_tokens for c in counts),  # EOS is ignored: every one is full
        "ttft_ms_p50": ttft[len(ttft) // 2] * 1000 if ttft else None,
        "seconds": seconds,
    }


def _puyu_engine(args: argparse.Namespace) -> tuple[Callable[[list[int], int], AsyncIterator[int]], Any]:
    from services.inference_gateway.core.engine import Engine
    from services.inference_gateway.core.sampling import SamplingParams

    engine = Engine.load(
        args.model,
        max_batch_size=args.concurrency,
        dtype=args.dtype,
        device=args.device,
        max_step_tokens=MAX_STEP_TOKENS,
        name="gpu-check",
    ).start()
    engine.eos_ids = set()  # every request runs to max_tokens, as vLLM's ignore_eos

    async def stream(prompt: list[int], max_tokens: int) -> AsyncIterator[int]:
        async for delta in engine.stream(prompt, SamplingParams(max_tokens=max_tokens, temperature=0)):
            yield delta.completion_tokens

    return stream, engine.close


def _vllm_engine(args: argparse.Namespace) -> tuple[Callable[[list[int], int], AsyncIterator[int]], Any]:
    import vllm
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    extra: dict[str, Any] = {"gpu_memory_utilization": 0.35} if args.device == "cuda" else {}
    llm = AsyncLLM.from_engine_args(
        AsyncEngineArgs(
            model=args.model,
            dtype=args.dtype,
            max_num_seqs=args.concurrency,
            max_num_batched_tokens=MAX_STEP_TOKENS,
            max_model_len=512,
            disable_log_stats=True,
            **extra,
        )
    )
    print(f"vLLM {vllm.__version__}", file=sys.stderr)

    async def stream(prompt: list[int], max_tokens: int) -> AsyncIterator[int]:
        params = SamplingParams(
            max_tokens=max_tokens, temperature=0, ignore_eos=True, output_kind=RequestOutputKind.DELTA
        )
        count = 0
        async for out in llm.generate({"prompt_token_ids": prompt}, params, request_id=uuid.uuid4().hex):
            count += len(out.outputs[0].token_ids)
            yield count

    return stream, llm.shutdown


def serve_child(args: argparse.Namespace) -> None:
    """An engine in this process, answering the parent's rounds: one JSON line in, one out, on the
    original stdout (everything else printed goes to stderr)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    async def main() -> None:
        make = _puyu_engine if args.serve == "puyu" else _vllm_engine
        started = time.perf_counter()
        stream, close = make(args)
        proto.write(
            json.dumps({"ready": True, "load_seconds": round(time.perf_counter() - started, 1)}) + "\n"
        )
        loop = asyncio.get_running_loop()
        try:
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                order = json.loads(line)
                if order["op"] == "stop":
                    break
                figures = await drive(stream, order["prompts"], order["max_tokens"], order["concurrency"])
                proto.write(json.dumps(figures) + "\n")
        finally:
            close()

    asyncio.run(main())


class EngineProcess:
    """A ``--serve`` child: started, asked for rounds, stopped."""

    def __init__(
        self, name: str, python: str, model: Path, device: str, dtype: str, concurrency: int
    ) -> None:
        self.name = name
        command = [python, str(Path(__file__).resolve()), "--serve", name, "--model", str(model)]
        command += ["--device", device, "--dtype", dtype, "--concurrency", str(concurrency)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if device == "cpu":  # vLLM's CPU build: a KV cache size it needs, threads it must not pin
            env |= {
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "OMP_NUM_THREADS": "2",
            }
        self.log = tempfile.NamedTemporaryFile(prefix=f"gpu-check-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env=env,
        )

    def reply(self, deadline: float) -> dict[str, Any]:
        """The child's next line; a child silent past ``deadline`` (monotonic) is a timeout."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"{self.name} engine: no answer within the serving part's time")
        line = self.proc.stdout.readline()
        if not line:
            tail = Path(self.log.name).read_text(errors="replace")[-2500:]
            raise RuntimeError(f"{self.name} engine exited ({self.proc.wait()}):\n{tail}")
        return json.loads(line)

    def send(self, order: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(order) + "\n")
        self.proc.stdin.flush()

    def round(
        self, prompts: list[list[int]], max_tokens: int, concurrency: int, deadline: float
    ) -> dict[str, Any]:
        self.send({"op": "round", "prompts": prompts, "max_tokens": max_tokens, "concurrency": concurrency})
        return self.reply(deadline)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "stop"})
                self.proc.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        Path(self.log.name).unlink(missing_ok=True)


def vllm_python(cuda: bool) -> str | None:
    """vLLM's interpreter: PUYU_GPU_CHECK_VLLM_PYTHON, else the CUDA venv or image's (CUDA), or the CPU
    build's (.venv-vllm, for the CPU wiring run)."""
    if env := os.environ.get("PUYU_GPU_CHECK_VLLM_PYTHON"):
        return env
    candidates = [ROOT / ".venv-vllm-cuda/bin/python", Path("/opt/vllm/bin/python")] if cuda else []
    candidates += [] if cuda else [ROOT / ".venv-vllm/bin/python"]
    return next((str(p) for p in candidates if p.exists()), None)


def serving_part(cuda: bool, with_vllm: bool, deadline: float) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_serving
    import bench_serving_dtype
    from transformers import AutoTokenizer

    requests, concurrency, max_tokens, rounds = SERVE_GPU if cuda else SERVE_CPU
    out: dict[str, Any] = {"requests": requests, "concurrency": concurrency, "output_tokens": max_tokens}
    vllm = vllm_python(cuda) if with_vllm else None
    if with_vllm and vllm is None:
        out["vllm_skipped"] = (
            "no vLLM interpreter: set PUYU_GPU_CHECK_VLLM_PYTHON, or run `make gpu-check` (.venv-vllm-cuda)"
        )
    elif not with_vllm:
        out["vllm_skipped"] = "CPU run: vLLM's side is for CUDA (--vllm-on-cpu wires up its CPU build)"
    questions = bench_serving_dtype.questions()
    with tempfile.TemporaryDirectory(prefix="gpu-check-serve-") as tmp:
        folder = Path(tmp) / "model"
        if cuda:
            out["model_parameters"] = bench_serving_dtype.build(folder)
        else:
            model, _ = bench_serving.build(folder, questions[:500])
            out["model_parameters"] = sum(p.numel() for p in model.parameters())
        tokenizer = AutoTokenizer.from_pretrained(folder)

        def prompts(offset: int, count: int) -> list[list[int]]:
            texts = (questions[(offset + i) % len(questions)] for i in range(count))
            return [tokenizer(t, add_special_tokens=False)["input_ids"][:128] for t in texts]

        device, dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
        out["dtype"] = dtype
        engines = [EngineProcess("puyu", sys.executable, folder, device, dtype, concurrency)]
        if vllm:
            engines.append(EngineProcess("vllm", vllm, folder, device, dtype, concurrency))
        figures: dict[str, list[dict[str, Any]]] = {e.name: [] for e in engines}
        try:
            for engine in engines:
                out[f"{engine.name}_load_seconds"] = engine.reply(deadline)["load_seconds"]
                warm = prompts(len(questions) - concurrency, concurrency)
                engine.round(warm, 8, concurrency, deadline)
            for i in range(rounds):  # the engines alternate: drifts of the machine hit both
                batch = prompts(i * requests, requests)
                for engine in engines:
                    figures[engine.name].append(engine.round(batch, max_tokens, concurrency, deadline))
        finally:
            for engine in engines:
                engine.stop()
    for name, rows in figures.items():
        if any(r["short_requests"] for r in rows):
            raise RuntimeError(f"{name}: requests ended before max_tokens with EOS ignored: {rows}")
        out[name] = {
            "output_tokens_per_s": round(statistics.median(r["output_tokens_per_s"] for r in rows), 1),
            "ttft_ms_p50": round(statistics.median(r["ttft_ms_p50"] for r in rows), 1),
            "rounds_tokens_per_s": [round(r["output_tokens_per_s"], 1) for r in rows],
        }
    if "vllm" in out:
        out["ratio_puyu_vs_vllm"] = round(
            out["puyu"]["output_tokens_per_s"] / out["vllm"]["output_tokens_per_s"], 3
        )
    out["ok"] = True
    return out


# ------------------------------------------------------------------------------------------------ main
def _part(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a part that errs is reported, and the others still run
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-3000:]}
    print(f"gpu-check {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return result


def _trainer_in_child(cuda: bool, timeout: float) -> dict[str, Any]:
    """The trainer part in a process of its own: its GPU memory is free for the serving part after."""
    command = [sys.executable, str(Path(__file__).resolve()), "--trainer-child"] + ([] if cuda else ["--cpu"])
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the trainer ran past {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"ok": False, "error": f"exit {done.returncode}: {done.stderr[-2500:]}"}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests", nargs="*", default=["tests"], help="where the cuda tests are looked for")
    parser.add_argument(
        "--parts",
        default="tests,trainer,serving",
        help="which parts to run (comma-separated; all by default)",
    )
    parser.add_argument("--vllm-on-cpu", action="store_true", help="without CUDA, run vLLM's CPU build too")
    parser.add_argument("--serve", choices=["puyu", "vllm"], help=argparse.SUPPRESS)  # an engine child
    parser.add_argument("--trainer-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(args)
        return 0
    if args.trainer_child:
        print(json.dumps(trainer_part(cuda=not args.cpu)))
        return 0

    parts = set(args.parts.split(","))
    if unknown := parts - {"tests", "trainer", "serving"}:
        parser.error(f"--parts: no part {', '.join(sorted(unknown))} (tests, trainer, serving)")
    started = time.monotonic()
    report: dict[str, Any] = {"check": "gpu", "load_start": load_average()}
    cuda, device = cuda_state()
    report |= {"cuda": cuda, "device": device}
    if not cuda:
        report["cuda_skipped"] = (
            f"no CUDA here ({device}): the cuda tests are collected and skipped, the trainer and serving "
            "run their wiring on the CPU with a tiny model; no figure below is a GPU's"
        )
    if "tests" in parts:
        report["tests"] = _part("tests", lambda: run_tests(args.tests, TESTS_TIMEOUT))
    if "trainer" in parts:
        report["trainer"] = _part("trainer", lambda: _trainer_in_child(cuda, TRAINER_TIMEOUT))
    if "serving" in parts:
        # off CUDA no budget binds, and vLLM's CPU build takes minutes to start on a loaded machine
        deadline = time.monotonic() + (SERVING_TIMEOUT if cuda else 600)
        report["serving"] = _part("serving", lambda: serving_part(cuda, cuda or args.vllm_on_cpu, deadline))
    mfu = report.get("trainer", {}).get("mfu")
    ratio = report.get("serving", {}).get("ratio_puyu_vs_vllm")
    report["goals"] = {
        "trainer_mfu": {"goal": GOALS["trainer_mfu"], "measured": mfu if cuda else None},
        "serving_ratio_vs_vllm": {
            "goal": GOALS["serving_ratio_vs_vllm"],
            "measured": ratio if cuda else None,
        },
    }
    report["goals_met"] = (
        None
        if not cuda or mfu is None or ratio is None
        else mfu >= GOALS["trainer_mfu"] and ratio >= GOALS["serving_ratio_vs_vllm"]
    )
    report["seconds"] = round(time.monotonic() - started, 1)
    report["within_budget"] = report["seconds"] <= BUDGET_S
    report["load_end"] = load_average()
    failed = [name for name in ("tests", "trainer", "serving") if not report.get(name, {"ok": True})["ok"]]
    report["ok"] = not failed
    print(json.dumps(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
