"""GSM8K before/after: pretrain a small base with puyu's trainer, finetune it on GSM8K as chat with
puyu's finetuner, and score both through puyu's evaluator on held-out GSM8K test questions.

    .venv/bin/python benchmarks/finetune_gsm8k.py [--work DIR] [--eval 100] ...

Data: ``../shared/data/gsm8k`` (train.jsonl for pretraining and finetuning, disjoint slices;
test.jsonl for evaluation). The base is pretrained on GSM8K train solutions as plain text
("Question: ...\\nAnswer: ..."); the finetune teaches the same model to answer in the chat
template. Both models are asked the same zero-shot chat prompt; the figures are the share of answers
ending in ``#### <number>`` (the answer format) and strict exact match. This script is not a
service: it may use the trainer's, finetuner's and evaluator's cores together. Prints one JSON
line last.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "gsm8k"
_CALC = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: noise for a tiny model
ENDS_WITH_ANSWER = re.compile(r"####\s*\$?\s*-?[0-9][0-9,]*(?:\.[0-9]+)?\s*$")
SENTINEL = "\x00QUESTION\x00"


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _clean(answer: str) -> str:
    return _CALC.sub("", answer)


def write_data(work: Path, n_finetune: int, with_answers: bool = True) -> tuple[Path, Path]:
    rows = _read(DATA / "train.jsonl")
    chat, text = work / "gsm8k_chat.jsonl", work / "gsm8k_pretrain.jsonl"
    with open(chat, "w", encoding="utf-8") as f:
        for r in rows[:n_finetune]:
            messages = [
                {"role": "user", "content": r["question"]},
                {"role": "assistant", "content": _clean(r["answer"])},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    with open(text, "w", encoding="utf-8") as f:
        for r in rows[n_finetune:]:
            doc = (
                f"Question: {r['question']}\nAnswer: {_clean(r['answer'])}" if with_answers else r["question"]
            )
            f.write(json.dumps({"text": doc}) + "\n")
    return chat, text


def pretrain(work: Path, corpus: Path, steps: int, threads: int, hidden: int, layers: int) -> Path:
    from contracts.events import ModelArchitecture, TrainSpec
    from services.trainer.core import TrainJob, run_training
    from shared.artifacts import ArtifactStore

    spec = TrainSpec(
        model_name="gsm8k-base",
        architecture=ModelArchitecture(
            hidden_size=hidden,
            intermediate_size=hidden * 8 // 3,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 32,
            num_key_value_heads=2,
            vocab_size=2048,
        ),
        seq_len=256,
        micro_batch_size=8,
        max_steps=steps,
        learning_rate=3e-3,
        warmup_steps=max(1, steps // 20),
        num_threads=threads,
    )
    store = ArtifactStore((work / "artifacts").as_uri())
    result = run_training(TrainJob("gsm8k-base", spec, [str(corpus)]), work / "pretrain", store, device="cpu")
    print(f"base: {result.final_step} steps, loss {result.metrics['loss']:.3f}", file=sys.stderr)
    return result.checkpoint


def finetune(work: Path, base: Path, chat: Path, steps: int, threads: int, method: str) -> Path:
    from contracts.events import FinetuneSpec, LoraSpec
    from services.finetuner.core import run_finetune

    spec = FinetuneSpec(
        method=method,  # type: ignore[arg-type]
        max_steps=steps,
        micro_batch_size=8,
        seq_len=384,
        learning_rate=2e-3 if method != "full" else 5e-4,
        lora=LoraSpec(r=32, alpha=64, dropout=0.0),
        packing=True,
    )
    out = run_finetune(base, chat, spec, work / f"finetune-{method}", device="cpu", num_threads=threads)
    print(f"finetune: {json.dumps(out.metrics)}", file=sys.stderr)
    return out.model_dir


def chat_task(model_dir: Path, max_new_tokens: int) -> Any:
    """The evaluator's GSM8K task with the model's own chat prompt, zero-shot."""
    from transformers import AutoTokenizer

    from services.evaluator.core.tasks import GenerationConfig, LoaderConfig, TaskConfig

    tok = AutoTokenizer.from_pretrained(model_dir)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    template = str(rendered).replace("{", "{{").replace("}", "}}").replace(SENTINEL, "{question}")
    return TaskConfig(
        name="gsm8k_chat",
        description="GSM8K test, zero-shot, in the model's chat template; strict '#### n' exact match.",
        loader=LoaderConfig(kind="gsm8k", path="gsm8k", split="test"),
        output_type="generation",
        prompt_template=template,
        generation=GenerationConfig(max_new_tokens=max_new_tokens, stop=["\nUser:", "<|im_end|>", "</s>"]),
        extractor="gsm8k_strict",
        metrics=["exact_match"],
        primary_metric="exact_match",
    )


def score(model_dir: Path, n_eval: int, threads: int, max_new_tokens: int) -> dict[str, Any]:
    from services.evaluator.core.hf_backend import HFBackend
    from services.evaluator.core.loaders import load
    from services.evaluator.core.runner import run_task

    task = chat_task(model_dir, max_new_tokens)
    dataset = load(task.loader, DATA.parent)
    backend = HFBackend(model_dir, batch_size=16, num_threads=threads)
    outcome = run_task(task, backend, dataset, limit=n_eval)
    preds = [str(d["prediction"]).strip() for d in outcome.details]
    formatted = sum(1 for p in preds if ENDS_WITH_ANSWER.search(p))
    return {
        "exact_match": outcome.metrics["exact_match"],
        "answer_format_share": formatted / max(len(preds), 1),
        "samples": outcome.num_samples,
        "example": preds[0][:300] if preds else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/puyu-finetune-gsm8k"))
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--finetune-examples", type=int, default=480)
    ap.add_argument("--finetune-steps", type=int, default=60)
    ap.add_argument("--method", default="lora", choices=["lora", "full"])
    ap.add_argument("--eval", type=int, default=100, help="held-out test questions")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128, help="base model width (multiple of 64)")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument(
        "--pretrain-questions-only",
        action="store_true",
        help="pretrain on questions only: the answer format can then only come from the finetune",
    )
    args = ap.parse_args()
    if not (DATA / "train.jsonl").exists():
        sys.exit(f"GSM8K data not found at {DATA}")
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    chat, corpus = write_data(args.work, args.finetune_examples, not args.pretrain_questions_only)
    base = pretrain(args.work, corpus, args.pretrain_steps, args.threads, args.hidden, args.layers)
    tuned = finetune(args.work, base, chat, args.finetune_steps, args.threads, args.method)
    before = score(base, args.eval, args.threads, args.max_new_tokens)
    after = score(tuned, args.eval, args.threads, args.max_new_tokens)
    print(f"base example: {before.pop('example')!r}", file=sys.stderr)
    print(f"finetuned example: {after.pop('example')!r}", file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "finetune_gsm8k",
                "method": args.method,
                "pretrain_corpus": "questions" if args.pretrain_questions_only else "questions+answers",
                "finetune_examples": args.finetune_examples,
                "held_out_questions": after["samples"],
                "base": before,
                "finetuned": after,
                "answer_format_share_delta": after["answer_format_share"] - before["answer_format_share"],
                "exact_match_delta": after["exact_match"] - before["exact_match"],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
