"""Serving benchmark: puyu's engine against (a) transformers ``generate`` per request and (b) transformers
static batching, on the same tiny Llama, the same prompts and the same Poisson arrivals, in one run.

Prompts are GSM8K questions (``../shared/data/gsm8k``) cut to varied lengths; each request asks for
a varied number of new tokens (greedy, EOS ignored so every system produces exactly that many).
Requests arrive as a Poisson process (the same arrival times for every system), and the client
keeps at most ``--concurrency`` (32) outstanding. The default load is "32 concurrent requests":
64 requests arriving at 100/s, so the first 32 have arrived within about a third of a second and
the server, not the arrival process, decides throughput (at 16/s the last of 32 requests arrived
only after two seconds, which capped every system near the arrival rate). Each system's
time-averaged number of requests in service is reported (``mean_in_flight``).

The baselines are servers too: (a) answers one request at a time in arrival order with
``generate``; (b) static batching: waits for a batch of 32 (or the last requests), runs it as one
left-padded ``generate`` to the longest request's length, then the next batch. Their token times
are taken at each generation step (a logits processor), which credits them as if they streamed.
Reported per system: request throughput, output tokens/s, TTFT and TPOT percentiles. The last line
printed is one JSON object with all figures and the ratios.

    .venv/bin/python benchmarks/bench_serving.py [--requests 64] [--rate 100] [--threads 1]
        [--kv-layout auto|rows|paged]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.inference_gateway.core.engine import Engine  # noqa: E402
from services.inference_gateway.core.sampling import SamplingParams  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def build(dest: Path, questions: list[str]) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A ~3.5M-parameter Llama (random init) and a BPE tokenizer trained on the questions."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(questions, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=None,  # every system generates exactly max_tokens
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    model.save_pretrained(dest)
    fast.save_pretrained(dest)
    return model, fast


def workload(
    n: int, rate: float, tokenizer: Any, questions: list[str], seed: int = 0
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        ids = tokenizer(questions[i], add_special_tokens=False)["input_ids"]
        while len(ids) < 128:  # long enough to cut any length from
            ids = ids + tokenizer(" " + questions[(i + len(ids)) % len(questions)])["input_ids"]
        out.append({"arrival": t, "prompt": ids[: rng.randint(16, 128)], "max_tokens": rng.randint(16, 128)})
        t += rng.expovariate(rate)
    return out


def summarise(name: str, reqs: list[dict[str, Any]], makespan: float) -> dict[str, Any]:
    """Figures of one system; each request has arrival, start (service began), first, last (s) and n."""
    ttft = sorted(r["first"] - r["arrival"] for r in reqs)
    tpot = sorted((r["last"] - r["first"]) / max(1, r["n"] - 1) for r in reqs)
    tokens = sum(r["n"] for r in reqs)

    def pct(xs: list[float], p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000, 1)

    out = {
        "system": name,
        "requests_per_s": round(len(reqs) / makespan, 2),
        "output_tokens_per_s": round(tokens / makespan, 1),
        "ttft_ms_p50": pct(ttft, 50),
        "ttft_ms_p90": pct(ttft, 90),
        "ttft_ms_p99": pct(ttft, 99),
        "tpot_ms_p50": pct(tpot, 50),
        "tpot_ms_p90": pct(tpot, 90),
        "tpot_ms_mean": round(statistics.mean(tpot) * 1000, 2),
        "makespan_s": round(makespan, 2),
        # time-averaged requests in service (sent to the engine / in a generate call), from start to last token
        "mean_in_flight": round(sum(r["last"] - r["start"] for r in reqs) / makespan, 1),
    }
    print(json.dumps(out), file=sys.stderr)
    return out


class _StepClock(LogitsProcessor):
    """Records the wall time of every generation step (token k of every row is sampled at step k)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.times.append(time.perf_counter())
        return scores


def _wait_until(t0: float, at: float) -> None:
    delay = t0 + at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def run_per_request(model: Any, work: list[dict[str, Any]]) -> dict[str, Any]:
    reqs = [dict(w) for w in work]
    t0 = time.perf_counter()
    for r in reqs:
        _wait_until(t0, r["arrival"])
        r["start"] = time.perf_counter() - t0
        clock = _StepClock()
        with torch.inference_mode():
            model.generate(
                torch.tensor([r["prompt"]]),
                max_new_tokens=r["max_tokens"],
                min_new_tokens=r["max_tokens"],
                do_sample=False,
                logits_processor=LogitsProcessorList([clock]),
            )
        r.update(first=clock.times[0] - t0, last=clock.times[-1] - t0, n=len(clock.times))
    return summarise("transformers_per_request", reqs, max(r["last"] for r in reqs))


def run_static(model: Any, pad_id: int, work: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    reqs = [dict(w) for w in work]
    t0 = time.perf_counter()
    i = 0
    while i < len(reqs):
        wave = reqs[i : i + concurrency]  # a static batch: wait until all of it has arrived
        _wait_until(t0, wave[-1]["arrival"])
        start = time.perf_counter() - t0
        i += len(wave)
        width = max(len(r["prompt"]) for r in wave)
        ids = torch.tensor([[pad_id] * (width - len(r["prompt"])) + r["prompt"] for r in wave])
        mask = (
            torch.arange(width)[None] >= torch.tensor([width - len(r["prompt"]) for r in wave])[:, None]
        ).long()
        clock = _StepClock()
        longest = max(r["max_tokens"] for r in wave)
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=longest,
                min_new_tokens=longest,
                do_sample=False,
                pad_token_id=pad_id,
                logits_processor=LogitsProcessorList([clock]),
            )
        for r in wave:
            r.update(
                start=start,
                first=clock.times[0] - t0,
                last=clock.times[r["max_tokens"] - 1] - t0,
                n=r["max_tokens"],
            )
    return summarise("transformers_static_batching", reqs, max(r["last"] for r in reqs))


async def _run_puyu(engine: Engine, work: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    reqs = [dict(w) for w in work]
    slots = asyncio.Semaphore(concurrency)  # the client keeps at most this many outstanding
    t0 = time.perf_counter()

    async def one(r: dict[str, Any]) -> None:
        await asyncio.sleep(max(0.0, t0 + r["arrival"] - time.perf_counter()))
        async with slots:
            r["start"] = time.perf_counter() - t0
            params = SamplingParams(max_tokens=r["max_tokens"], temperature=0)
            async for d in engine.stream(r["prompt"], params):
                now = time.perf_counter() - t0
                if d.completion_tokens >= 1 and "first" not in r:
                    r["first"] = now
                r["last"], r["n"] = now, d.completion_tokens

    await asyncio.gather(*[one(r) for r in reqs])
    return summarise("puyu", reqs, max(r["last"] for r in reqs))


def run_puyu(
    path: Path, work: list[dict[str, Any]], concurrency: int, kv_layout: str, dtype: str
) -> dict[str, Any]:
    engine = Engine.load(
        path, max_batch_size=concurrency, name="bench", kv_layout=kv_layout, dtype=dtype
    ).start()
    engine.eos_ids = set()
    try:
        engine.generate_sync(work[0]["prompt"], SamplingParams(max_tokens=2, temperature=0))  # warm
        return asyncio.run(_run_puyu(engine, work, concurrency))
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate", type=float, default=100.0, help="Poisson arrival rate, requests/s")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: least noise on a shared machine)"
    )
    ap.add_argument(
        "--kv-layout",
        default="auto",
        choices=["auto", "rows", "paged"],
        help="puyu's attention layout (auto: rows on the CPU); paged shows the gathering path",
    )
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="every system's precision (the same for all: the comparison is of engines, not dtypes)",
    )
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"benchmark data missing: {DATA} (the ../shared/data folder beside the checkout)")
    torch.set_num_threads(args.threads)
    questions = [json.loads(line)["question"] for line in DATA.read_text().splitlines()[:2000]]
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = build(Path(tmp), questions)
        model = model.to(getattr(torch, args.dtype))
        params = sum(p.numel() for p in model.parameters())
        work = workload(args.requests, args.rate, tok, questions)
        # warm the transformers paths once so neither pays first-call costs in the timed run
        with torch.inference_mode():
            model.generate(torch.tensor([work[0]["prompt"]]), max_new_tokens=2, do_sample=False)
        puyu = run_puyu(Path(tmp), work, args.concurrency, args.kv_layout, args.dtype)
        static = run_static(model, tok.pad_token_id, work, args.concurrency)
        single = run_per_request(model, work)
    tps = "output_tokens_per_s"
    print(
        json.dumps(
            {
                "benchmark": "serving",
                "model_params": params,
                "requests": args.requests,
                "concurrency": args.concurrency,
                "arrival_rate": args.rate,
                "threads": args.threads,
                "kv_layout": args.kv_layout,
                "dtype": args.dtype,
                "puyu": puyu,
                "baseline_a_transformers_per_request": single,
                "baseline_b_transformers_static_batching": static,
                "ratio_tokens_per_s_vs_a": round(puyu[tps] / single[tps], 2),
                "ratio_tokens_per_s_vs_b": round(puyu[tps] / static[tps], 2),
                "ttft_p50_below_b": puyu["ttft_ms_p50"] < static["ttft_ms_p50"],
            }
        )
    )


if __name__ == "__main__":
    main()
