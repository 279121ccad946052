"""Pretraining throughput: puyu's trainer (``run_training``, the code ``puyu train`` and the service
run) against a plain ``transformers.Trainer`` on the same model (the demo's Llama, same initial
weights), the same packed sequences and the same batch (16 x 128) on the CPU with the same threads,
in the same run, at the same precision on both sides:

- fp32 on both;
- bf16 mixed precision on both (autocast, fp32 master weights: ``TrainSpec.precision='bf16'`` and
  ``TrainingArguments(bf16=True)``), on CPUs that multiply bf16 natively (AVX512-BF16 or AMX), where
  it is puyu's ``precision: auto``.

puyu runs as a long job does (``torch_compile`` on: the compile happens in the warm-up steps, which
are not timed); its eager figure and its figure with document attention are reported too. Both sides
are timed the same way: the median wall time between the ends of optimizer steps after the warm-up
steps. The systems alternate over ``BENCH_ROUNDS`` rounds (the machine is shared: alternation keeps
drifts out of the ratios) and the median per system counts.

Prints one JSON line last: the rates, the ratios (puyu / baseline at the same precision), the
headline ratio at puyu's default precision on this machine, and the MFUs.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from contracts.events import TrainSpec
from services.trainer.core import TrainJob, run_training
from services.trainer.core.data import PackedDataset, tokenize_stream
from services.trainer.core.engine import use_bf16
from services.trainer.core.llama import to_hf_state_dict
from services.trainer.core.mfu import device_peak, mfu
from services.trainer.core.model import build_model, flops_per_token
from services.trainer.core.tokenizer import train_bpe
from shared.artifacts import ArtifactStore
from shared.samples import heldout_texts

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
STEPS, WARMUP, ROUNDS = 16, 4, int(os.environ.get("BENCH_ROUNDS", "2"))


def steady_rate(step_ends: list[float], tokens_per_step: int) -> float:
    """Tokens over the median step time after warm-up (one preempted step does not move it)."""
    window = step_ends[WARMUP:]
    return tokens_per_step / statistics.median(b - a for a, b in itertools.pairwise(window))


def bench_puyu(spec: TrainSpec, data: Path, work: Path, **update: object) -> float:
    ends: list[float] = []

    def progress(stage: str, fraction: float, message: str = "", **m: float) -> None:
        if "step" in m:
            ends.append(time.perf_counter())

    spec = spec.model_copy(update={"document_attention": False, "torch_compile": "on", **update})
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
    spec: TrainSpec, model: LlamaForCausalLM, sequences: list[dict[str, list[int]]], work: Path, bf16: bool
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
        bf16=bf16,
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
    cpu = torch.device("cpu")
    default_bf16 = use_bf16(spec, cpu)  # precision 'auto' on this machine
    precisions = ["fp32", "bf16"] if default_bf16 else ["fp32"]
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
        default = precisions[-1]
        rates: dict[str, list[float]] = {}
        for r in range(ROUNDS):
            for p in precisions:
                hf_model = LlamaForCausalLM(ours.config)
                hf_model.load_state_dict(hf_init, strict=False)
                run: dict[str, Callable[[], float]] = {
                    f"hf_{p}": partial(bench_hf, spec, hf_model, sequences, root / f"hf-{r}", p == "bf16"),
                    f"puyu_{p}": partial(bench_puyu, spec, data, root / f"puyu-{r}-{p}", precision=p),
                }
                if p == default:
                    run[f"puyu_{p}_eager"] = partial(
                        bench_puyu, spec, data, root / f"eager-{r}", precision=p, torch_compile="off"
                    )
                    run[f"puyu_{p}_document_attention"] = partial(
                        bench_puyu, spec, data, root / f"doc-{r}", precision=p, document_attention=True
                    )
                for name, fn in run.items():
                    rates.setdefault(name, []).append(fn())
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        fpt = flops_per_token(ours, spec.seq_len)
        result: dict[str, object] = {
            "benchmark": "trainer_tokens_per_s",
            "model_parameters": sum(p.numel() for p in ours.parameters()),
            "batch": f"{spec.micro_batch_size}x{spec.seq_len}",
            "threads": THREADS,
            "baseline": "transformers.Trainer (LlamaForCausalLM, sdpa, fused AdamW), same precision",
            "default_precision": default,
        }
        for p in precisions:
            peak = device_peak(cpu, bf16=p == "bf16")
            result |= {
                f"baseline_tokens_per_s_{p}": round(med[f"hf_{p}"], 1),
                f"puyu_tokens_per_s_{p}": round(med[f"puyu_{p}"], 1),
                f"ratio_{p}": round(med[f"puyu_{p}"] / med[f"hf_{p}"], 3),
                f"cpu_peak_gflops_{p}": round(peak / 1e9, 1),
                f"puyu_mfu_{p}": round(mfu(med[f"puyu_{p}"], fpt, peak), 4),
                f"baseline_mfu_{p}": round(mfu(med[f"hf_{p}"], fpt, peak), 4),
            }
        for variant in ("eager", "document_attention"):
            result[f"ratio_{default}_{variant}"] = round(
                med[f"puyu_{default}_{variant}"] / med[f"hf_{default}"], 3
            )
        result["ratio"] = result[f"ratio_{default}"]  # at puyu's default precision on this machine
        result["rounds"] = {k: [round(x) for x in v] for k, v in rates.items()}
        print(json.dumps(result))


if __name__ == "__main__":
    main()
