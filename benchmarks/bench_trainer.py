"""Pretraining throughput: puyu's trainer (``run_training``, the code ``puyu train`` and the service
run) against a plain ``transformers.Trainer`` on the same model (the demo's Llama, same initial
weights), the same packed sequences and the same batch (16 x 128), both fp32 on the CPU with the
same threads, in the same run. puyu runs as a long job does (``torch_compile`` on: the compile happens
in the warm-up steps, which are not timed); its eager figure is reported too. Steady-state tokens/s is measured the same way for both: wall time
between the ends of optimizer steps, after warm-up steps. The two alternate over ``ROUNDS`` rounds
(the machine is shared: alternation keeps drifts out of the ratio) and the median per side counts.

Prints one JSON line last: both rates, their ratio (puyu / baseline) and puyu's MFU.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from contracts.events import TrainSpec
from services.trainer.core import TrainJob, run_training
from services.trainer.core.data import PackedDataset, tokenize_stream
from services.trainer.core.llama import to_hf_state_dict
from services.trainer.core.mfu import device_peak, mfu
from services.trainer.core.model import build_model, flops_per_token
from services.trainer.core.tokenizer import train_bpe
from shared.artifacts import ArtifactStore
from shared.samples import heldout_texts

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
STEPS, WARMUP, ROUNDS = 10, 3, int(os.environ.get("BENCH_ROUNDS", "2"))


def steady_rate(step_ends: list[float], tokens_per_step: int) -> float:
    window = step_ends[WARMUP:]
    return tokens_per_step * (len(window) - 1) / (window[-1] - window[0])


def bench_puyu(
    spec: TrainSpec, data: Path, tok_dir: Path, work: Path, doc_attention: bool, compile_: bool = True
) -> float:
    ends: list[float] = []

    def progress(stage: str, fraction: float, message: str = "", **m: float) -> None:
        if "step" in m:
            ends.append(time.perf_counter())

    update = {"document_attention": doc_attention, "torch_compile": "on" if compile_ else "off"}
    spec = spec.model_copy(update=update)
    run_training(
        TrainJob("bench", spec, [str(data)]),
        work,
        ArtifactStore(work.as_uri()),
        progress=progress,
        resume=False,
    )
    return steady_rate(ends, spec.micro_batch_size * spec.seq_len)


class _Clock(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.ends.append(time.perf_counter())


def bench_hf(
    spec: TrainSpec, model: LlamaForCausalLM, sequences: list[dict[str, list[int]]], work: Path
) -> float:
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=spec.micro_batch_size,
        max_steps=STEPS,
        learning_rate=spec.learning_rate,
        warmup_steps=spec.warmup_steps,
        lr_scheduler_type="cosine",
        weight_decay=spec.weight_decay,
        adam_beta2=0.95,
        max_grad_norm=spec.grad_clip,
        save_strategy="no",
        report_to="none",
        logging_steps=STEPS,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=spec.seed,
    )
    clock = _Clock()
    Trainer(model=model, args=args, train_dataset=sequences, callbacks=[clock]).train()
    return steady_rate(clock.ends, spec.micro_batch_size * spec.seq_len)


def main() -> None:
    torch.set_num_threads(THREADS)
    hf_logging.set_verbosity_error()
    spec = TrainSpec(max_steps=STEPS, num_threads=THREADS, warmup_steps=2)  # the demo's model and batch
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        texts = heldout_texts(600, seed=5)
        data = root / "corpus.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        tok = train_bpe(texts, spec.architecture.vocab_size)
        tok.save_pretrained(root / "tok")
        spec = spec.model_copy(update={"tokenizer_uri": str(root / "tok")})
        packed = PackedDataset(tokenize_stream(tok, texts), spec.seq_len, tok.pad_token_id, spec.seed)
        sequences = [
            {"input_ids": (ids := packed.sequence(0, i)[0].tolist()), "labels": ids}
            for i in range(len(packed))
        ]
        ours = build_model(spec.architecture, tok, spec.seed)
        hf_init = to_hf_state_dict(ours)
        rates: dict[str, list[float]] = {"hf": [], "puyu": [], "puyu_eager": [], "puyu_doc": []}
        for r in range(ROUNDS):
            hf_model = LlamaForCausalLM(ours.config)
            hf_model.load_state_dict(hf_init, strict=False)
            rates["hf"].append(bench_hf(spec, hf_model, sequences, root / f"hf-{r}"))
            rates["puyu"].append(bench_puyu(spec, data, root / "tok", root / f"puyu-{r}", False))
            rates["puyu_eager"].append(
                bench_puyu(spec, data, root / "tok", root / f"eager-{r}", False, compile_=False)
            )
            rates["puyu_doc"].append(bench_puyu(spec, data, root / "tok", root / f"doc-{r}", True))
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in rates.items()), flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        fpt = flops_per_token(ours, spec.seq_len)
        peak = device_peak(torch.device("cpu"), bf16=False)
        print(
            json.dumps(
                {
                    "benchmark": "trainer_tokens_per_s",
                    "model_parameters": sum(p.numel() for p in ours.parameters()),
                    "batch": f"{spec.micro_batch_size}x{spec.seq_len}",
                    "threads": THREADS,
                    "baseline": "transformers.Trainer (LlamaForCausalLM, sdpa, fused AdamW)",
                    "baseline_tokens_per_s": round(med["hf"], 1),
                    "puyu_tokens_per_s": round(med["puyu"], 1),
                    "ratio": round(med["puyu"] / med["hf"], 3),
                    "puyu_eager_tokens_per_s": round(med["puyu_eager"], 1),
                    "ratio_eager": round(med["puyu_eager"] / med["hf"], 3),
                    "puyu_document_attention_tokens_per_s": round(med["puyu_doc"], 1),
                    "ratio_document_attention": round(med["puyu_doc"] / med["hf"], 3),
                    "cpu_peak_gflops_measured": round(peak / 1e9, 1),
                    "puyu_mfu": round(mfu(med["puyu"], fpt, peak), 4),
                    "baseline_mfu": round(mfu(med["hf"], fpt, peak), 4),
                    "rounds": rates,
                }
            )
        )


if __name__ == "__main__":
    main()
