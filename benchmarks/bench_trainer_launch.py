"""What the controller costs: a job through the trainer's controller with the ``local`` launcher (the
default: ``make demo``) against calling ``run_training`` directly (what the service did before it
became a controller, on a thread as the service called it), on the demo's model, the same data and spec, end to end (data preparation,
tokenizer, training, final checkpoint). The controller adds the run folder (spec.json,
progress.jsonl on every step, result.json), the run on a thread and the watch loop.

``BENCH_TORCHRUN=1`` adds the same job through ``torchrun`` with one rank (a new interpreter and
torchrun's agent: the fixed price of leaving the service's process).

Alternating rounds (``BENCH_ROUNDS``, default 3; the machine is shared); the median wall time per
system counts. Prints one JSON line last: the medians, the ratio controller / direct and the load.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from contracts.events import DatasetRef, TrainSpec
from services.trainer.core import Trainer, TrainJob, run_training
from shared.artifacts import ArtifactStore
from shared.launch.torchrun import TorchrunLauncher
from shared.read_roots import ReadRoots
from shared.samples import heldout_texts

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
STEPS = int(os.environ.get("BENCH_STEPS", 60))
THREADS = 2


def direct(spec: TrainSpec, manifest: Path, root: Path) -> float:
    """On a thread, as the service called it (asyncio.to_thread). The thread matters on a loaded
    machine: OpenMP's spinning workers make the main thread's GEMMs many times slower there."""
    job = TrainJob("bench", spec, [str(manifest)])
    start = time.perf_counter()
    worker = threading.Thread(target=run_training, args=(job, root / "run", ArtifactStore(root.as_uri())))
    worker.start()
    worker.join()
    return time.perf_counter() - start


def controller(spec: TrainSpec, manifest: Path, root: Path, torchrun: bool = False) -> float:
    store = ArtifactStore(root.as_uri())
    roots = ReadRoots([store.root_uri, str(manifest.parent)])
    core = Trainer(store, "cpu", roots, launcher=TorchrunLauncher() if torchrun else None)
    dataset = DatasetRef(dataset_id="bench", manifest_uri=manifest.as_uri(), digest="d")
    start = time.perf_counter()
    outcome = core.train("bench", spec, [dataset])
    assert outcome.last is not None and outcome.last.step == spec.max_steps
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(THREADS)
    spec = TrainSpec(max_steps=STEPS, num_threads=THREADS, warmup_steps=2, torch_compile="off")
    systems = ["direct", "local"] + (["torchrun_1"] if os.environ.get("BENCH_TORCHRUN") == "1" else [])
    times: dict[str, list[float]] = {s: [] for s in systems}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        texts = heldout_texts(600, seed=5)
        (data / "shard-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        manifest = data / "manifest.json"
        manifest.write_text(
            json.dumps(
                {"dataset_id": "bench", "documents": len(texts), "shards": [{"path": "shard-0.jsonl"}]}
            )
        )
        direct(spec.model_copy(update={"max_steps": 3}), manifest, root / "warm-up")  # imports, caches
        for r in range(ROUNDS):
            order = systems if r % 2 == 0 else systems[::-1]
            for name in order:
                where = root / f"{name}-{r}"
                if name == "direct":
                    times[name].append(direct(spec, manifest, where))
                else:
                    times[name].append(controller(spec, manifest, where, torchrun=name == "torchrun_1"))
                loads.append(os.getloadavg()[0])
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result: dict[str, object] = {
        "benchmark": "trainer_launch_overhead",
        "steps": STEPS,
        "model": "the demo's (TrainSpec defaults), fp32/bf16 as auto picks, torch_compile off",
        "baseline": "run_training called directly (the service before it became a controller)",
        **{f"{k}_seconds": round(v, 3) for k, v in med.items()},
        "ratio_local_vs_direct": round(med["local"] / med["direct"], 4),
        "rounds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "load_avg_1m": [round(x, 2) for x in loads],
    }
    if "torchrun_1" in med:
        result["ratio_torchrun_1_vs_direct"] = round(med["torchrun_1"] / med["direct"], 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
