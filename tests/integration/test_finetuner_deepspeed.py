"""Finetuning through DeepSpeed ZeRO 1/2/3 on the CPU (one process, gloo) against the plain torch
path: the same losses, the same adapter and merged model, and a ZeRO run that resumes after an
interruption from DeepSpeed's own checkpoint.

The jobs run in one child process: DeepSpeed initialises torch.distributed for the whole process,
which a pytest worker shared with other services' tests should not inherit.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from shared.samples import CHAT_TEMPLATE, chat_examples, heldout_texts
from tests.support.data import write_chat_dataset
from tests.support.tiny_model import build_tiny_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,  # DeepSpeed builds its shm comm op on first use
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed"),
]
ROOT = Path(__file__).resolve().parents[2]


# Runs each job {name, stage, method, stop_at?} with run_finetune; prints {name: outcome} as JSON.
DRIVER = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from contracts.events import FinetuneSpec, LoraSpec
from services.finetuner.core import run_finetune

args = json.loads(sys.argv[1])
results = {}
for job in args["jobs"]:
    spec = FinetuneSpec(
        method=job["method"], max_steps=6, micro_batch_size=4, seq_len=96, learning_rate=1e-2,
        lora=LoraSpec(r=4, alpha=8, dropout=0.0), checkpoint_interval=3, zero_stage=job["stage"],
    )
    def stop(stage, fraction, message="", stop_at=job.get("stop_at"), **metrics):
        if stage == "train" and stop_at and message.startswith(f"step {stop_at}/"):
            raise KeyboardInterrupt
    out_dir = Path(args["root"]) / job["name"]
    try:
        out = run_finetune(Path(args["base"]), Path(args["data"]), spec, out_dir, device="cpu", progress=stop)
    except KeyboardInterrupt:
        results[job["name"]] = {"interrupted": True}
        continue
    results[job["name"]] = {
        "losses": out.losses, "metrics": out.metrics, "model": str(out.model_dir),
        "adapter": str(out.adapter_dir) if out.adapter_dir else None,
        "resumed_from": out.lineage["resumed_from_step"],
    }
print("RESULT " + json.dumps(results))
"""


def _run(tmp_path: Path, base: Path, data: Path, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = {"jobs": jobs, "root": str(tmp_path), "base": str(base), "data": str(data)}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=600,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out[-2000:] + done.stderr.decode()[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ds-inputs")
    texts = list(heldout_texts(120)) + [m["content"] for r in chat_examples(60) for m in r["messages"]]  # type: ignore[attr-defined]
    base = build_tiny_model(
        root / "base", texts, chat_template=CHAT_TEMPLATE, unk_token="<unk>", max_positions=512
    )
    return base, write_chat_dataset(root / "chat.jsonl", n=48)


def _weights(folder: str, name: str) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / name)


def test_zero_stages_match_plain_lora_and_export(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    base, data = inputs
    stages = {"plain": 0, "zero1": 1, "zero2": 2, "zero3": 3}
    res = _run(tmp_path, base, data, [{"name": n, "stage": s, "method": "lora"} for n, s in stages.items()])
    plain = res["plain"]
    assert len(plain["losses"]) == 6 and plain["losses"][-1] < plain["losses"][0]
    adapter_ref = _weights(plain["adapter"], "adapter_model.safetensors")
    merged_ref = _weights(plain["model"], "model.safetensors")
    for name in ("zero1", "zero2", "zero3"):
        run = res[name]
        assert run["losses"] == pytest.approx(plain["losses"], rel=1e-4), name
        assert run["metrics"]["trainable_params"] == plain["metrics"]["trainable_params"], name
        # DeepSpeed's own checkpoint sits in the state folder, one tag (the last step)
        assert [p.name for p in (tmp_path / name / "state" / "deepspeed").glob("step-*")] == ["step-6"]
        adapter = _weights(run["adapter"], "adapter_model.safetensors")
        assert adapter.keys() == adapter_ref.keys() and all(t.numel() for t in adapter.values()), name
        for key, ref in adapter_ref.items():
            torch.testing.assert_close(adapter[key], ref, atol=1e-5, rtol=1e-3)
        merged = _weights(run["model"], "model.safetensors")
        assert merged.keys() == merged_ref.keys(), name
        for key, ref in merged_ref.items():
            torch.testing.assert_close(merged[key], ref, atol=1e-5, rtol=1e-3)

    # The ZeRO-3 exports (gathered from partitions) load as they are: adapter on base == merged.
    ids = torch.tensor([list(range(5, 40))])
    merged_model = AutoModelForCausalLM.from_pretrained(res["zero3"]["model"])
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), res["zero3"]["adapter"])
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(input_ids=ids).logits, merged_model(input_ids=ids).logits, atol=1e-4, rtol=1e-4
        )


def test_zero_runs_resume_after_interruption_and_full_zero3(
    tmp_path: Path, inputs: tuple[Path, Path]
) -> None:
    base, data = inputs
    jobs = []
    for stage in (2, 3):
        jobs += [
            {"name": f"whole{stage}", "stage": stage, "method": "lora"},
            {"name": f"cut{stage}", "stage": stage, "method": "lora", "stop_at": 4},
            {"name": f"cut{stage}", "stage": stage, "method": "lora"},  # the same job again: resumes
        ]
    jobs += [{"name": "full0", "stage": 0, "method": "full"}, {"name": "full3", "stage": 3, "method": "full"}]
    res = _run(tmp_path, base, data, jobs)
    for stage in (2, 3):
        cut, whole = res[f"cut{stage}"], res[f"whole{stage}"]
        assert cut["resumed_from"] == 4, stage
        assert cut["losses"] == pytest.approx(whole["losses"], rel=1e-5), stage
        resumed = _weights(cut["adapter"], "adapter_model.safetensors")
        for key, ref in _weights(whole["adapter"], "adapter_model.safetensors").items():
            torch.testing.assert_close(resumed[key], ref, atol=1e-6, rtol=1e-5)

    assert res["full3"]["adapter"] is None
    assert res["full3"]["losses"] == pytest.approx(res["full0"]["losses"], rel=1e-4)
    full0 = _weights(res["full0"]["model"], "model.safetensors")
    full3 = _weights(res["full3"]["model"], "model.safetensors")
    assert full3.keys() == full0.keys()
    for key, ref in full0.items():
        torch.testing.assert_close(full3[key], ref, atol=1e-5, rtol=1e-3)
