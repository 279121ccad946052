"""LoRA finetuning throughput: puyu's finetuner (packed rows, boundary-aware attention) against a
plain transformers + peft loop (dynamic padding with DataCollatorForSeq2Seq), same model, same
LoRA config, same tokenised chat data, in the same run.

    .venv/bin/python benchmarks/bench_finetune_lora.py [--steps 8] [--rounds 2]

Data: GSM8K train as chat (``../shared/data/gsm8k``) when present, else the built-in sample chats.
Throughput counts real (non-padding) tokens per second of training steps; the two loops run in
alternating rounds so that load from other processes hits both alike. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def chat_records(n: int) -> tuple[list[Any], str]:
    from services.finetuner.formats import Conversation

    if GSM8K.exists():
        rows = [json.loads(line) for line in GSM8K.open(encoding="utf-8")][:n]
        recs = [
            Conversation.model_validate(
                {
                    "messages": [
                        {"role": "user", "content": r["question"]},
                        {"role": "assistant", "content": r["answer"]},
                    ]
                }
            )
            for r in rows
        ]
        return recs, "gsm8k"
    from shared.samples import chat_examples

    return [Conversation.model_validate(r) for r in chat_examples(n)], "sample_chats"


def baseline(model: Any, examples: list[Any], pad_id: int, spec: Any, tokenizer: Any) -> tuple[int, float]:
    """The loop people write with transformers + peft: padded batches, AdamW, clip, step."""
    import torch
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq

    from services.finetuner.methods import lora_config
    from services.finetuner.packing import schedule

    peft_model = get_peft_model(model, lora_config(spec.lora, model))
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    peft_model.train()
    tokens, seconds = 0, 0.0
    for idx in schedule(len(examples), spec.micro_batch_size, spec.max_steps, spec.seed):
        t0 = time.perf_counter()
        batch = collator([{"input_ids": examples[i].input_ids, "labels": examples[i].labels} for i in idx])
        loss = peft_model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - t0
        tokens += int(batch["attention_mask"].sum())
    return tokens, seconds


def ours(model: Any, examples: list[Any], pad_id: int, spec: Any) -> tuple[int, float]:
    from services.finetuner.methods import wrap
    from services.finetuner.packing import pack
    from services.finetuner.training import train

    rows = pack(examples, spec.seq_len, spec.seed)
    result = train(wrap(model, spec), rows, [], spec, pad_id=pad_id)
    return result.tokens_seen, result.tokens_seen / result.extra["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per loop per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--examples", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from contracts.events import FinetuneSpec, LoraSpec
    from services.finetuner.packing import build_examples
    from services.finetuner.templates import ensure_chat_template
    from services.finetuner.tiny import build_tiny_base

    torch.set_num_threads(args.threads)
    records, source = chat_records(args.examples)
    texts = [m.content for r in records for m in r.messages]
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = build_tiny_base(Path(tmp) / "base", texts, vocab_size=2048, hidden_size=128, layers=2)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    ensure_chat_template(tokenizer)
    spec = FinetuneSpec(
        method="lora",
        max_steps=args.steps,
        micro_batch_size=8,
        seq_len=512,
        learning_rate=1e-3,
        lora=LoraSpec(r=16, alpha=32, dropout=0.0),
    )
    examples = build_examples(tokenizer, records, spec.seq_len)
    lengths = [len(e.input_ids) for e in examples]
    totals = {"ours": [0, 0.0], "baseline": [0, 0.0]}
    for r in range(args.rounds):
        for name in ("baseline", "ours") if r % 2 == 0 else ("ours", "baseline"):
            model = copy.deepcopy(base)
            if name == "ours":
                tok, sec = ours(model, examples, tokenizer.pad_token_id, spec)
            else:
                tok, sec = baseline(model, examples, tokenizer.pad_token_id, spec, tokenizer)
            totals[name][0] += tok
            totals[name][1] += sec
            print(f"round {r} {name}: {tok / sec:.0f} tokens/s", file=sys.stderr)
    ours_tps = totals["ours"][0] / totals["ours"][1]
    base_tps = totals["baseline"][0] / totals["baseline"][1]
    print(
        json.dumps(
            {
                "benchmark": "finetune_lora_tokens_per_s",
                "data": source,
                "examples": len(examples),
                "mean_tokens": sum(lengths) / len(lengths),
                "max_tokens": max(lengths),
                "ours_tokens_per_s": round(ours_tps, 1),
                "baseline": "transformers+peft loop, DataCollatorForSeq2Seq padding",
                "baseline_tokens_per_s": round(base_tps, 1),
                "ratio": round(ours_tps / base_tps, 3),
                "goal": 1.3,
            }
        )
    )


if __name__ == "__main__":
    main()
