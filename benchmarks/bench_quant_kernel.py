"""Microbenchmark of one quantised linear layer on the CPU: bf16 prepacked oneDNN vs aten's int4pack
weight-only kernel vs puyu's W4A8 and W8A8 kernels (``shared.quantization.cpu_kernel``).

Per shape (out x in: 768x768, 256x768, 4096x768, 768x2048) and rows M (32, a decode step of 32
sequences, and 1), with bf16 activations, group 128 and 2 intra-op threads:

- ``bf16``: ``mkldnn._linear_pointwise`` over a weight ``mkldnn._reorder_linear_weight`` prepacked
  once (what the engine serves a bf16 model with, ``cpu_linear.PackedLinear``);
- ``aten_int4``: ``_weight_int4pack_mm_for_cpu`` (``kernels``, the weight-only path);
- ``wxa8_int4`` / ``wxa8_int8``: ``puyu::wxa8_linear``, the activations' quantisation included.

The variants alternate within each round; each round times every variant for ``--sample-ms``. The
figures are the best round's mean microseconds per call (on a shared machine a round another process
interrupts only gets slower; the medians are printed too). Goal: both wxa8 kernels faster than bf16
at M=32 on every shape. The last line printed is one JSON object with the figures, the ratios (bf16
time / variant time: above 1 is faster than bf16), the goal, the load average before and after, and
the torch version.

    .venv/bin/python benchmarks/bench_quant_kernel.py [--rounds 10] [--sample-ms 5] [--threads 2]

Runtime: about 5 s (the kernel's first build adds ~10 s once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.quantization import cpu_kernel, kernels
from shared.quantization.grid import quantize_rtn

SHAPES = [(768, 768), (256, 768), (4096, 768), (768, 2048)]  # (out, in)
ROWS = (32, 1)
GROUP = 128


def per_call_us(fn: Callable[[], object], sample_s: float) -> float:
    fn()
    calls = 0
    started = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= sample_s:
            return elapsed / calls * 1e6


def variants(out_f: int, in_f: int, rows: int) -> dict[str, Callable[[], object]]:
    generator = torch.Generator().manual_seed(out_f * 7 + in_f)
    weight = torch.randn(out_f, in_f, generator=generator) * 0.02
    x = torch.randn(rows, in_f, generator=generator).to(torch.bfloat16)
    dense = torch.ops.mkldnn._reorder_linear_weight(weight.to(torch.bfloat16), 32)
    int4 = quantize_rtn(weight, 4, GROUP)
    int8 = quantize_rtn(weight, 8, GROUP)
    aten4 = kernels.prepare(int4, torch.bfloat16, exact=True)
    wx4 = cpu_kernel.prepare(int4, GROUP, None)
    wx8 = cpu_kernel.prepare(int8, GROUP, None)
    assert aten4 is not None and wx4 is not None and wx8 is not None
    return {
        "bf16": lambda: torch.ops.mkldnn._linear_pointwise(x, dense, None, "none", [], ""),
        "aten_int4": lambda: kernels.matmul(x, aten4),
        "wxa8_int4": lambda: cpu_kernel.matmul(x, wx4),
        "wxa8_int8": lambda: cpu_kernel.matmul(x, wx8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sample-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not cpu_kernel.available():
        sys.exit("the W4A8/W8A8 kernel is not available here (no AVX512-VNNI or no compiler): see the log")
    load_before = os.getloadavg()
    results: dict[str, dict[str, float]] = {}
    medians: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for rows in ROWS:
            for out_f, in_f in SHAPES:
                key = f"M{rows}_{out_f}x{in_f}"
                fns = variants(out_f, in_f, rows)
                samples: dict[str, list[float]] = {name: [] for name in fns}
                for _ in range(args.rounds):
                    for name, fn in fns.items():
                        samples[name].append(per_call_us(fn, args.sample_ms / 1000))
                results[key] = {name: round(min(s), 1) for name, s in samples.items()}
                medians[key] = {name: round(statistics.median(s), 1) for name, s in samples.items()}
                base = results[key]["bf16"]
                ratios[key] = {name: round(base / t, 2) for name, t in results[key].items() if name != "bf16"}
                print(key, "best us", results[key], "speed-up vs bf16:", ratios[key], flush=True)
    goal = all(ratios[f"M32_{o}x{i}"][name] > 1.0 for o, i in SHAPES for name in ("wxa8_int4", "wxa8_int8"))
    print(f"goal (wxa8 int4 and int8 faster than bf16 at M=32 on every shape): {'PASS' if goal else 'FAIL'}")
    summary = {
        "benchmark": "quant_kernel",
        "us_per_call": results,
        "us_per_call_median": medians,
        "speedup_vs_bf16": ratios,
        "goal_wxa8_faster_than_bf16_m32": goal,
        "threads": args.threads,
        "group_size": GROUP,
        "activations": "bfloat16",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
