"""LoRA finetuning throughput: puyu's finetuner (packed rows, per-example packed attention, logits
only where a label follows, fused AdamW) against a plain transformers + peft loop (dynamic padding
with DataCollatorForSeq2Seq, stock SDPA attention, torch.optim.AdamW), same model, same LoRA
config, same tokenised chat data, in the same run.

    .venv/bin/python benchmarks/bench_finetune_lora.py [--steps 16] [--repeats 3] [--ablate]

Data: GSM8K train as chat (``../shared/data/gsm8k``) when present, else the built-in sample chats.
Throughput counts real (non-padding) tokens per second of training steps. The loops take their
steps in turn (order alternating), after untimed warm-up steps, and each step is timed as the best
of ``--repeats`` runs of it (the same batch, trained on again): on a shared machine a burst of load
from another process lands on single steps, and the best of three is the step's cost on a quiet
machine; ``--repeats 1`` times each step once. ``--ablate`` adds puyu's loop with transformers'
own packed mask instead of packed attention. Prints one JSON line last.
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
    from services.finetuner.core.formats import Conversation

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


class Baseline:
    """The loop people write with transformers + peft: padded batches, AdamW, clip, step."""

    def __init__(self, model: Any, examples: list[Any], spec: Any, tokenizer: Any, steps: int) -> None:
        import torch
        from peft import get_peft_model
        from transformers import DataCollatorForSeq2Seq

        from services.finetuner.core.methods import lora_config
        from services.finetuner.core.packing import schedule

        torch.manual_seed(spec.seed)
        self.model = get_peft_model(model, lora_config(spec.lora, model))
        self.collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=spec.learning_rate, weight_decay=0.0)
        self.examples = examples
        self.plan = schedule(len(examples), spec.micro_batch_size, steps, spec.seed)
        self.model.train()

    def step(self, i: int) -> tuple[int, float]:
        import torch

        t0 = time.perf_counter()
        ex = [self.examples[k] for k in self.plan[i]]
        batch = self.collator([{"input_ids": e.input_ids, "labels": e.labels} for e in ex])
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum()), time.perf_counter() - t0


class Ours:
    """puyu's finetuner step (``training.train_step``) over packed rows."""

    def __init__(
        self, model: Any, examples: list[Any], spec: Any, pad_id: int, steps: int, packed: bool
    ) -> None:
        import torch

        from services.finetuner.core.attention import use_packed_attention
        from services.finetuner.core.engine import build_engine
        from services.finetuner.core.methods import wrap
        from services.finetuner.core.packing import pack, schedule

        self.rows = pack(examples, spec.seq_len, spec.seed)
        if packed and not use_packed_attention(model, spec.seq_len):
            raise RuntimeError("packed attention did not apply to the benchmark model")
        torch.manual_seed(spec.seed)
        self.engine = build_engine(wrap(model, spec), spec, "cpu")
        self.engine.forward.train()
        self.spec, self.pad_id, self.packed = spec, pad_id, packed
        self.plan = schedule(len(self.rows), spec.micro_batch_size, steps, spec.seed)

    def step(self, i: int) -> tuple[int, float]:
        from services.finetuner.core.training import train_step

        t0 = time.perf_counter()
        chunk = [self.rows[k] for k in self.plan[i]]
        _, ntok = train_step(self.engine, chunk, self.spec, self.pad_id, "cpu", flatten=self.packed)
        return ntok, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=16, help="timed optimizer steps per loop")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per loop first")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each step; its best counts")
    ap.add_argument("--examples", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ablate", action="store_true", help="also: puyu's loop with transformers' packed mask")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from contracts.events import FinetuneSpec, LoraSpec
    from services.finetuner.core.packing import build_examples
    from services.finetuner.core.templates import ensure_chat_template
    from tests.support.tiny_model import build_tiny_model

    torch.set_num_threads(args.threads)
    records, source = chat_records(args.examples)
    texts = [m.content for r in records for m in r.messages]
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = build_tiny_model(
            Path(tmp) / "base",
            texts,
            vocab_size=2048,
            hidden_size=128,
            layers=2,
            unk_token="<unk>",
            max_positions=512,
        )
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
    steps = args.warmup + args.steps
    loops: dict[str, Any] = {
        "baseline": Baseline(copy.deepcopy(base), examples, spec, tokenizer, steps),
        "ours": Ours(copy.deepcopy(base), examples, spec, tokenizer.pad_token_id, steps, packed=True),
    }
    if args.ablate:
        loops["ours_stock_attention"] = Ours(
            copy.deepcopy(base), examples, spec, tokenizer.pad_token_id, steps, packed=False
        )
    totals = {name: [0, 0.0] for name in loops}
    for i in range(steps):
        names = list(loops) if i % 2 == 0 else list(reversed(loops))
        for name in names:
            runs = [loops[name].step(i) for _ in range(args.repeats if i >= args.warmup else 1)]
            tok, sec = runs[0][0], min(t for _, t in runs)
            if i >= args.warmup:
                totals[name][0] += tok
                totals[name][1] += sec
    rates = {name: tok / sec for name, (tok, sec) in totals.items()}
    for name, rate in rates.items():
        print(f"{name}: {rate:.0f} tokens/s", file=sys.stderr)
    ours_tps, base_tps = rates["ours"], rates["baseline"]
    extra = (
        {"ours_stock_attention_tokens_per_s": round(rates["ours_stock_attention"], 1)} if args.ablate else {}
    )
    print(
        json.dumps(
            {
                "benchmark": "finetune_lora_tokens_per_s",
                "data": source,
                "examples": len(examples),
                "mean_tokens": sum(lengths) / len(lengths),
                "max_tokens": max(lengths),
                "ours_tokens_per_s": round(ours_tps, 1),
                "baseline": "transformers+peft loop, DataCollatorForSeq2Seq padding, sdpa, AdamW",
                "steps_per_loop": args.steps,
                "timing": f"best of {args.repeats} per step",
                "baseline_tokens_per_s": round(base_tps, 1),
                "ratio": round(ours_tps / base_tps, 3),
                "goal": 1.3,
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()
