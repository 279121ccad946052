"""Serving precision benchmark: resident memory and output tokens/s of puyu's engine in fp32 and bf16.

One ~100M-parameter Llama folder (random weights: memory and speed do not depend on their values,
saved in fp32 so that both precisions load from the same checkpoint) and a byte-level BPE tokenizer
trained on GSM8K questions (``../shared/data/gsm8k``; synthetic text without it). Each precision
runs in a fresh process, so its resident memory is its own: RSS after the imports, after
``Engine.load`` (weights + KV cache, allocated up front), and the peak after serving. Throughput:
32 requests submitted at once (32 in flight, batch size 32), GSM8K prompts cut to 32..96 tokens,
64 greedy output tokens each (EOS ignored); ``--rounds`` rounds after one warm-up round, the
median reported. The last line printed is one JSON object with both precisions and the ratios.

    .venv/bin/python benchmarks/bench_serving_dtype.py [--rounds 3] [--new-tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
CONCURRENCY = 32


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident set (``VmRSS``) or its peak (``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def questions() -> list[str]:
    if DATA.exists():
        lines = DATA.read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["question"] for line in lines if line.strip()]
    rng = random.Random(0)
    words = "the farmer sells eggs at the market for two dollars each and buys seeds with the rest".split()
    return [" ".join(rng.choice(words) for _ in range(60)) for _ in range(2000)]


def build(dest: Path) -> int:
    """The model folder; returns its parameter count."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=16384,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(questions(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    fast.save_pretrained(dest)
    return sum(p.numel() for p in model.parameters())


async def one_round(engine: Any, prompts: list[list[int]], new_tokens: int) -> dict[str, float]:
    from services.inference_gateway.core.sampling import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0)
    start = time.perf_counter()
    first: list[float] = []

    async def request(ids: list[int]) -> int:
        n = 0
        async for delta in engine.stream(ids, params):
            if n == 0 and delta.completion_tokens:
                first.append(time.perf_counter() - start)
            n = delta.completion_tokens
        return n

    tokens = sum(await asyncio.gather(*[request(p) for p in prompts]))
    elapsed = time.perf_counter() - start
    return {
        "output_tokens_per_s": tokens / elapsed,
        "ttft_ms_p50": statistics.median(first) * 1000,
        "seconds": elapsed,
        "tokens": tokens,
    }


def measure(folder: Path, dtype: str, rounds: int, new_tokens: int) -> dict[str, Any]:
    """Run in the child process: load in ``dtype``, serve ``rounds`` + 1 rounds, report memory and speed."""
    import torch

    from services.inference_gateway.core.engine import Engine

    before = rss_mib()
    engine = Engine.load(folder, dtype=dtype, device="cpu", max_batch_size=CONCURRENCY, name=dtype).start()
    loaded, loaded_anon = rss_mib(), rss_mib("RssAnon")
    engine.eos_ids = set()  # every request generates exactly new_tokens
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    cache = engine.runner.cache
    kv = sum(t.numel() * t.element_size() for t in [*cache.k, *cache.v])
    rng = random.Random(1)
    texts = questions()
    prompts = []
    for i in range(CONCURRENCY):
        ids: list[int] = []
        while len(ids) < 96:
            ids += engine.encode(" " + texts[(i * 7 + len(ids)) % len(texts)])
        prompts.append(ids[: rng.randint(32, 96)])

    async def serve() -> list[dict[str, float]]:
        return [await one_round(engine, prompts, new_tokens) for _ in range(rounds + 1)]

    results = asyncio.run(serve())[1:]  # the first round warms up
    rows = engine.runner.rows
    row_bytes = sum(t.numel() * t.element_size() for t in [*rows.k, *rows.v]) if rows is not None else 0
    engine.close()
    return {
        "dtype": dtype,
        "model_dtype": str(next(p.dtype for p in engine.runner.model.parameters())).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "rss_before_load_mib": round(before, 1),
        "rss_after_load_mib": round(loaded, 1),
        "rss_load_delta_mib": round(loaded - before, 1),
        "rss_anon_after_load_mib": round(loaded_anon, 1),  # without file pages (mapped checkpoints)
        "rss_peak_mib": round(rss_mib("VmHWM"), 1),
        "weights_mib": round(weights / 2**20, 1),
        "paged_kv_mib": round(kv / 2**20, 1),
        "row_kv_mib_at_end": round(row_bytes / 2**20, 1),
        "output_tokens_per_s": round(statistics.median(r["output_tokens_per_s"] for r in results), 1),
        "output_tokens_per_s_rounds": [round(r["output_tokens_per_s"], 1) for r in results],
        "ttft_ms_p50": round(statistics.median(r["ttft_ms_p50"] for r in results), 1),
        "tokens_per_round": int(results[0]["tokens"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        folder, dtype = args.child
        print(json.dumps(measure(Path(folder), dtype, args.rounds, args.new_tokens)))
        return

    from shared.hf_models.formats import cpu_has_native_bf16

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama-100m"
        params = build(folder)
        print(f"model: {params / 1e6:.1f}M parameters in {folder}", file=sys.stderr)
        figures: dict[str, Any] = {}
        for dtype in ("float32", "bfloat16"):
            cmd = [sys.executable, __file__, "--child", str(folder), dtype]
            cmd += ["--rounds", str(args.rounds), "--new-tokens", str(args.new_tokens)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            figures[dtype] = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(figures[dtype]), file=sys.stderr)
    fp32, bf16 = figures["float32"], figures["bfloat16"]
    summary = {
        "benchmark": "serving_dtype",
        "parameters_m": round(params / 1e6, 1),
        "concurrency": CONCURRENCY,
        "new_tokens": args.new_tokens,
        "cpu_native_bf16": cpu_has_native_bf16(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "float32": fp32,
        "bfloat16": bf16,
        "bf16_over_fp32_tokens_per_s": round(bf16["output_tokens_per_s"] / fp32["output_tokens_per_s"], 2),
        "bf16_over_fp32_rss_load_delta": round(bf16["rss_load_delta_mib"] / fp32["rss_load_delta_mib"], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
