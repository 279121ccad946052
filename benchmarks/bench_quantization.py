"""Quantisation benchmark: bf16 vs int8 weights vs AWQ int4 vs RTN int4 vs an int8 KV cache, served by
puyu's engine on a trained ~100M-parameter Llama, in one run.

The model: a Llama-family decoder of ~96M parameters (12 layers, hidden 768, 12 heads of 64, 4 KV
heads, SwiGLU 2560, tied 8,192-token BPE) trained with puyu's own trainer (``run_training``, as
``puyu train`` runs it) on GSM8K's training questions and answers (``../shared/data/gsm8k``). It is
cached under ``~/.cache/puyu-bench/quantization/<key>/`` (the key hashes the architecture, the
training spec and the data), as are the quantised folders written from it by ``quantize_folder``
(``puyu quantize``): RTN int8 (one scale per output channel), AWQ int4 and RTN int4 (group 128; AWQ
calibrated on training texts). Held-out text: GSM8K's test split, never trained on.

Each variant runs in a process of its own (so its resident memory is its own), loaded as the
gateway loads a folder (``load_causal_lm``, bf16 activations; quantised layers are ``QuantLinear``)
and served by one ``Engine`` (32 sequences, greedy, EOS ignored). Measured per variant:

- weights: bytes of parameters + buffers as loaded (packed codes, scales, zeros), the quantised
  linear layers' share, the bytes as served (``prepare_for_serving``, what the engine's runner does:
  each layer's CPU kernel form replaces the packed copy), and the process RSS delta of each;
- KV cache: its own accounting (``Engine.kv_info``: block bytes, scales included) at 32 sequences of
  1,024 tokens, and how many 1,024-token sequences fit in the budget a bf16 cache takes for 32
  (every engine is given that budget, ``kv_cache_memory``);
- output tokens/s: 32 requests submitted at once (``bench_serving_dtype.one_round``), the same GSM8K
  prompts and max tokens for every variant; ``--rounds`` rounds after a warm-up, the variants
  alternating within each round, the median counts;
- perplexity on held-out windows, teacher-forced through the served engine: each window is a
  request with ``max_tokens=0, prompt_logprobs=True``, so every token is scored from the logits of
  the engine's own forward, whose attention reads the KV cache it just wrote (8-bit for the KV
  variant: the CPU layout's rows hold the same int8 bytes and scales as the paged blocks). The bf16
  figure is checked against a plain transformers forward of the same weights.

Goals, printed with pass/fail: int4 weights >= 3.5x smaller than bf16 (the quantised layers; the
whole model, whose embedding stays bf16, is reported beside it); AWQ int4 perplexity closer to bf16
than RTN int4's; the int8 KV cache holds >= 1.9x the sequences in the same memory with perplexity
within 1%; int4 tokens/s on the CPU >= bf16's. The last line printed is one JSON object with all
figures, ratios, goals, the load average and the torch version.

    .venv/bin/python benchmarks/bench_quantization.py [--quick] [--rounds 2] [--train-steps 480]

Runtime here (2 cores, quiet): training 480 steps ~6 min the first time (cached after; held-out
perplexity ~103 against 8,192 for a random model; 48 steps leave it at ~510), quantising ~1 min (AWQ's
search), then ~2 min.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import functools
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serving_dtype import one_round, rss_mib  # noqa: E402  # the serving driver, shared

DATA = ROOT.parent / "shared" / "data" / "gsm8k"
CACHE = Path(os.environ.get("PUYU_BENCH_CACHE", Path.home() / ".cache" / "puyu-bench")) / "quantization"
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
CONCURRENCY, CONTEXT = 32, 1024  # the KV figures: 32 sequences of 1,024 tokens
ARCH = {
    "hidden_size": 768,
    "intermediate_size": 2560,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,  # head_dim 64: an int8 entry takes 66 bytes against bf16's 128
    "num_key_value_heads": 4,
    "max_position_embeddings": CONTEXT,
    "vocab_size": 8192,
    "tie_word_embeddings": True,
}
SEQ_LEN, MICRO_BATCH = 256, 2
# name: (weights folder, KV cache dtype); the quantised folders come from QUANT_SPECS
VARIANTS = {
    "bf16": ("model", "auto"),
    "int8_rtn": ("rtn-int8", "auto"),
    "int4_awq": ("awq-int4", "auto"),
    "int4_rtn": ("rtn-int4", "auto"),
    "bf16_kv_int8": ("model", "int8"),
}
QUANT_SPECS = {  # folder: QuantSpec keywords
    "rtn-int8": {"method": "rtn", "bits": 8, "group_size": -1},  # per channel, as int8 weight-only usually is
    "awq-int4": {"method": "awq", "bits": 4, "group_size": 128},
    "rtn-int4": {"method": "rtn", "bits": 4, "group_size": 128},
}
CALIBRATION_TOKENS = 1024  # 4 windows: AWQ's search reruns each block ~21 times, slow on a shared CPU


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def gsm8k(split: str) -> list[str]:
    lines = (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [(row := json.loads(line))["question"] + "\n" + row["answer"] for line in lines if line.strip()]


# ------------------------------------------------------------------------------ the trained model


def train_spec(steps: int) -> Any:
    from contracts.events import ModelArchitecture, TrainSpec

    return TrainSpec(
        model_name="bench-quant-100m",
        architecture=ModelArchitecture(**ARCH),
        seq_len=SEQ_LEN,
        micro_batch_size=MICRO_BATCH,
        max_steps=steps,
        warmup_steps=max(2, steps // 10),
        learning_rate=2e-3,
        min_learning_rate=2e-4,
        num_threads=THREADS,
        document_attention=False,
        torch_compile="off",  # a one-off compile costs more than it saves over so few steps
    )


def model_folder(steps: int) -> tuple[Path, dict[str, Any]]:
    """The trained model's folder (trained now unless cached) and what its training reported."""
    from services.trainer.core import TrainJob, run_training
    from shared.artifacts import ArtifactStore

    spec = train_spec(steps)
    train_file = DATA / "train.jsonl"
    key_source = {"spec": spec.model_dump(mode="json"), "data": [train_file.name, train_file.stat().st_size]}
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:16]
    home = CACHE / key
    folder, info_file = home / "model", home / "train.json"
    if info_file.exists() and folder.is_dir():
        log(f"trained model cached at {folder}")
        return folder, json.loads(info_file.read_text())
    log(f"training {steps} steps of {MICRO_BATCH}x{SEQ_LEN} tokens with puyu's trainer (cached in {home})")
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "gsm8k-train.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in gsm8k("train")))

        def progress(stage: str, fraction: float, message: str = "", **metrics: float) -> None:
            if "step" not in metrics or int(metrics["step"]) % 8 == 0:
                log(f"train: {message}")

        started = time.perf_counter()
        result = run_training(
            TrainJob("bench-quant", spec, [str(corpus)]),
            work / "run",
            ArtifactStore(work.as_uri()),
            progress=progress,
            resume=False,
        )
        seconds = time.perf_counter() - started
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(result.checkpoint, folder)
    info = {
        "key": key,
        "steps": steps,
        "tokens": steps * MICRO_BATCH * SEQ_LEN,
        "seconds": round(seconds, 1),
        "final_loss_avg10": round(result.metrics["loss_avg10"], 4),
        "parameters": int(result.metrics["parameters"]),
        "load_average_while_training": [round(x, 2) for x in os.getloadavg()],
    }
    info_file.write_text(json.dumps(info))
    return folder, info


def quantized_folders(model: Path) -> dict[str, dict[str, Any]]:
    """Each QUANT_SPECS folder beside the model (written now unless cached) and its report."""
    from shared.quantization import QuantSpec, quantize_folder

    calibration = gsm8k("train")[:200]  # trained-on texts, as calibration sets usually are
    out: dict[str, dict[str, Any]] = {}
    for name, kw in QUANT_SPECS.items():
        folder, report_file = model.parent / name, model.parent / f"{name}.json"
        if not report_file.exists():
            log(f"quantising: {name}")
            spec = QuantSpec(**kw)  # type: ignore[arg-type]
            report = quantize_folder(
                model,
                folder,
                spec,
                calibration if spec.needs_calibration else (),
                max_sequence_tokens=SEQ_LEN,
                max_calibration_tokens=CALIBRATION_TOKENS,
                overwrite=True,
            )
            figures = report.to_dict()
            report_file.write_text(
                json.dumps(
                    {k: figures[k] for k in ("seconds", "source_bytes", "quantized_bytes", "compression")}
                )
            )
        out[name] = json.loads(report_file.read_text())
    return out


# ------------------------------------------------------------------------------ one variant's process


def _linear_bytes(model: Any) -> int:
    """Bytes of the decoder layers' projections (what quantisation replaces), whatever their type."""
    total = 0
    for layer in model.model.layers:
        for module in (*layer.self_attn.children(), *layer.mlp.children()):
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                total += tensor.numel() * tensor.element_size()
    return total


def _rss_live() -> float:
    """RSS after glibc returns freed heap pages (the kernels' preparation frees large temporaries,
    which malloc would otherwise keep and RSS would count as weights)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mib()


async def _score(engine: Any, windows: list[list[int]]) -> tuple[float, int]:
    from services.inference_gateway.core.sampling import SamplingParams

    params = SamplingParams(max_tokens=0, prompt_logprobs=True, temperature=0)
    done = await asyncio.gather(*[engine.generate(w, params) for w in windows])
    logprobs = [lp.logprob for c in done for lp in c.prompt_logprobs or () if lp is not None]
    return -sum(logprobs), len(logprobs)


def _reference_nll(model: Any, windows: list[list[int]]) -> tuple[float, int]:
    """transformers' own forward of the same weights (a check on the engine's scoring)."""
    import torch

    nll, count = 0.0, 0
    with torch.inference_mode():
        for w in windows:
            ids = torch.tensor([w])
            logits = model(ids).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += len(w) - 1
    return nll, count


def worker(conn: Connection, folder: str, kv_dtype: str, kv_budget: int, threads: int) -> None:
    """Load one variant, then answer the parent's commands (serve, score, quit) until told to stop."""
    import torch

    from services.inference_gateway.core.engine import Engine
    from services.inference_gateway.core.engine.engine import in_passing_thread
    from shared.hf_models import load_causal_lm, load_tokenizer
    from shared.quantization import QuantLinear, prepare_for_serving

    torch.set_num_threads(threads)

    def load() -> tuple[Any, Any, dict[str, Any]]:
        before = rss_mib()
        model, _ = load_causal_lm(folder, dtype=torch.bfloat16, device="cpu")
        loaded = _rss_live()
        tensors = [*model.parameters(), *model.buffers()]
        checkpoint_bytes = sum(t.numel() * t.element_size() for t in tensors)
        linear_bytes = _linear_bytes(model)
        # what the engine's runner does first: each QuantLinear's kernel form, the packed copy freed
        freed = prepare_for_serving(model, torch.bfloat16)
        forms = [w for m in model.modules() if isinstance(m, QuantLinear) for w in m._cpu_weights.values()]
        form_bytes = sum(  # every tensor a kernel's form holds (the weight-only ones' or the W4A8 one's)
            t.numel() * t.element_size()
            for w in forms
            if w is not None
            for t in (getattr(w, f.name) for f in dataclasses.fields(w))
            if isinstance(t, torch.Tensor)
        )
        served = _rss_live()
        tokenizer = load_tokenizer(folder)
        kernels = sorted({m.kernel for m in model.modules() if isinstance(m, QuantLinear)})
        engine = Engine(
            model,
            tokenizer,
            max_batch_size=CONCURRENCY,
            name=Path(folder).name,
            kv_cache_dtype=kv_dtype,
            kv_cache_memory=kv_budget,
        ).start()
        engine.eos_ids = set()  # every request generates exactly max_tokens
        kv = engine.kv_info()
        block_tokens = engine.allocator.block_size
        facts: dict[str, Any] = {
            "weights_bytes": checkpoint_bytes,  # parameters + buffers as loaded (packed codes, scales, zeros)
            "linear_weights_bytes": linear_bytes,
            "serving_weights_bytes": checkpoint_bytes - freed + form_bytes,  # the kernels' forms instead
            "rss_load_delta_mib": round(loaded - before, 1),
            "rss_serving_weights_delta_mib": round(served - before, 1),
            "kernels": kernels or ["bf16 dense"],
            "kv_dtype": kv["kv_dtype"],
            "kv_block_bytes": kv["block_bytes"],
            "kv_bytes_32x1024": int(kv["block_bytes"]) * CONCURRENCY * CONTEXT // block_tokens,
            "kv_budget_bytes": kv_budget,
            "kv_capacity_tokens_in_budget": kv["capacity_tokens"],
            "kv_sequences_of_1024_in_budget": int(kv["capacity_tokens"]) // CONTEXT,
            "rss_engine_mib": round(rss_mib(), 1),
        }
        return model, engine, facts

    # loaded in a thread that ends, so that only the engine thread keeps an OpenMP pool (Engine.load's reason)
    model, engine, facts = in_passing_thread(load)
    conn.send(facts)
    try:
        while True:
            command, *args = conn.recv()
            if command == "serve":
                prompts, new_tokens = args
                conn.send(asyncio.run(one_round(engine, prompts, new_tokens)))
            elif command == "score":
                conn.send(asyncio.run(_score(engine, args[0])))
            elif command == "reference":
                conn.send(in_passing_thread(functools.partial(_reference_nll, model, args[0])))
            else:
                conn.send({"rss_peak_mib": round(rss_mib("VmHWM"), 1)})
                return
    finally:
        engine.close()


class Variant:
    def __init__(self, name: str, folder: Path, kv_dtype: str, kv_budget: int) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: the RSS figures are this variant's alone
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=worker, args=(child, str(folder), kv_dtype, kv_budget, THREADS), name=name
        )
        self.process.start()
        child.close()
        self.facts: dict[str, Any] = self.conn.recv()

    def ask(self, *command: Any) -> Any:
        self.conn.send(command)
        return self.conn.recv()

    def close(self) -> dict[str, Any]:
        out: dict[str, Any] = self.ask("quit")
        self.process.join(60)
        return out


# ------------------------------------------------------------------------------ the run


def kv_budget(model: Path) -> int:
    """Bytes a bf16 KV cache takes for 32 sequences of 1,024 tokens (the engine's block accounting)."""
    import torch

    from services.inference_gateway.core.kv_cache import kv_block_bytes, resolve_kv_cache_dtype

    config = json.loads((model / "config.json").read_text())
    block = kv_block_bytes(
        layers=config["num_hidden_layers"],
        kv_heads=config["num_key_value_heads"],
        head_dim=config["hidden_size"] // config["num_attention_heads"],
        block_size=16,
        spec=resolve_kv_cache_dtype("auto", torch.bfloat16),
    )
    return block * CONCURRENCY * CONTEXT // 16


def workload(model: Path, windows: int, prompt_tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """Held-out windows of SEQ_LEN tokens (test split, documents joined by EOS) and 32 prompts."""
    from shared.hf_models import load_tokenizer

    tok = load_tokenizer(model)
    stream: list[int] = []
    for text in gsm8k("test"):
        stream += [*tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        if len(stream) >= (windows + CONCURRENCY) * SEQ_LEN:
            break
    held_out = [stream[i * SEQ_LEN : (i + 1) * SEQ_LEN] for i in range(windows)]
    rest = stream[windows * SEQ_LEN :]
    prompts = [rest[i * SEQ_LEN : i * SEQ_LEN + prompt_tokens] for i in range(CONCURRENCY)]
    return held_out, prompts


def goals(v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    bf16, awq, rtn4, kv8 = v["bf16"], v["int4_awq"], v["int4_rtn"], v["bf16_kv_int8"]
    linear_ratio = bf16["linear_weights_bytes"] / max(
        awq["linear_weights_bytes"], rtn4["linear_weights_bytes"]
    )
    awq_gap, rtn_gap = (
        abs(awq["perplexity"] - bf16["perplexity"]),
        abs(rtn4["perplexity"] - bf16["perplexity"]),
    )
    seq_ratio = kv8["kv_sequences_of_1024_in_budget"] / bf16["kv_sequences_of_1024_in_budget"]
    ppl_change = kv8["perplexity"] / bf16["perplexity"] - 1
    tps = min(awq["output_tokens_per_s"], rtn4["output_tokens_per_s"]) / bf16["output_tokens_per_s"]
    return {
        "int4_weights_3.5x_smaller": {"value": round(linear_ratio, 3), "pass": linear_ratio >= 3.5},
        "awq_closer_to_bf16_than_rtn": {
            "value": {"awq_gap": round(awq_gap, 4), "rtn_gap": round(rtn_gap, 4)},
            "pass": awq_gap < rtn_gap,
        },
        "kv_int8_1.9x_sequences": {"value": round(seq_ratio, 3), "pass": seq_ratio >= 1.9},
        "kv_int8_perplexity_within_1pct": {"value": round(ppl_change, 5), "pass": abs(ppl_change) <= 0.01},
        "int4_tokens_per_s_at_least_bf16": {"value": round(tps, 3), "pass": tps >= 1.0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 4 held-out windows, 32 new tokens")
    parser.add_argument("--rounds", type=int, default=2, help="timed serving rounds (after a warm-up)")
    parser.add_argument("--train-steps", type=int, default=480, help="training steps (cached per value)")
    parser.add_argument("--windows", type=int, default=12, help=f"held-out windows of {SEQ_LEN} tokens")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.windows, args.new_tokens = 1, 4, 32
    if not (DATA / "train.jsonl").exists():
        raise SystemExit(f"benchmark data missing: {DATA} (the ../shared/data folder beside the checkout)")
    import torch

    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    model, training = model_folder(args.train_steps)
    reports = quantized_folders(model)
    budget = kv_budget(model)
    held_out, prompts = workload(model, args.windows, args.prompt_tokens)

    figures: dict[str, dict[str, Any]] = {}
    workers: dict[str, Variant] = {}
    try:
        for name, (sub, kv_dtype) in VARIANTS.items():
            log(f"loading {name}")
            workers[name] = Variant(name, model.parent / sub, kv_dtype, budget)
            figures[name] = dict(workers[name].facts)
            workers[name].ask("serve", prompts, args.new_tokens)  # warm-up round, not counted
        rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for r in range(args.rounds):
            for name, w in workers.items():
                rates[name].append(w.ask("serve", prompts, args.new_tokens)["output_tokens_per_s"])
            log(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in rates.items()))
        for name, w in workers.items():
            nll, count = w.ask("score", held_out)
            figures[name] |= {
                "output_tokens_per_s": round(statistics.median(rates[name]), 2),
                "output_tokens_per_s_rounds": [round(x, 2) for x in rates[name]],
                "perplexity": round(float(torch.tensor(nll / count).exp()), 4),
                "scored_tokens": count,
            }
            log(f"{name}: perplexity {figures[name]['perplexity']}")
        nll, count = workers["bf16"].ask("reference", held_out)
        reference_ppl = float(torch.tensor(nll / count).exp())
        for name, w in workers.items():
            figures[name] |= w.close()
    finally:
        for w in workers.values():
            if w.process.is_alive():
                w.process.terminate()

    bf16 = figures["bf16"]
    for f in figures.values():
        f["weights_vs_bf16"] = round(bf16["weights_bytes"] / f["weights_bytes"], 3)
        f["linear_weights_vs_bf16"] = round(bf16["linear_weights_bytes"] / f["linear_weights_bytes"], 3)
        f["serving_weights_vs_bf16"] = round(bf16["serving_weights_bytes"] / f["serving_weights_bytes"], 3)
        f["rss_serving_vs_bf16"] = round(
            bf16["rss_serving_weights_delta_mib"] / f["rss_serving_weights_delta_mib"], 3
        )
        f["tokens_per_s_vs_bf16"] = round(f["output_tokens_per_s"] / bf16["output_tokens_per_s"], 3)
        f["perplexity_vs_bf16"] = round(f["perplexity"] / bf16["perplexity"], 5)
        f["kv_sequences_vs_bf16"] = round(
            f["kv_sequences_of_1024_in_budget"] / bf16["kv_sequences_of_1024_in_budget"], 3
        )
    results = goals(figures)
    for goal, outcome in results.items():
        print(f"{'PASS' if outcome['pass'] else 'FAIL'}  {goal}: {outcome['value']}", file=sys.stderr)
    summary = {
        "benchmark": "quantization",
        "model": {**ARCH, "parameters": training["parameters"], "family": "llama"},
        "training": training,
        "quantize_reports": reports,
        "held_out": {"source": "gsm8k test", "windows": args.windows, "tokens_per_window": SEQ_LEN},
        "perplexity_bf16_transformers_forward": round(reference_ppl, 4),
        "random_perplexity": ARCH["vocab_size"],
        "serving": {
            "concurrency": CONCURRENCY,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "threads": THREADS,
            "activations": "bfloat16",
        },
        "variants": figures,
        "goals": results,
        "load_average_before": load_before,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
