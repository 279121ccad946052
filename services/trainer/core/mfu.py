"""Model FLOPs utilisation: achieved training FLOP/s over the device's peak.

CUDA peaks come from the vendors' data sheets (dense, no sparsity); ``PUYU_TRAINER_PEAK_TFLOPS``
overrides. The CPU has no data-sheet figure that means much for one process: its peak is the
matmul rate in the run's precision (fp32, or bf16 under autocast) measured with the threads the run
uses (best 1024² GEMM over half a second), at the start and again before the final checkpoint, the
best of the two counting.
"""

from __future__ import annotations

import os
import time

import torch

# (name fragment, bf16 TFLOPS, fp32/tf32 TFLOPS)
_CUDA_PEAKS = (
    ("H200", 989.0, 494.0),
    ("H100", 989.0, 494.0),
    ("A100", 312.0, 156.0),
    ("L40S", 362.0, 183.0),
    ("A10", 125.0, 62.5),
    ("4090", 165.0, 82.6),
)


def _cuda_peak(device_name: str, bf16: bool) -> float:
    for fragment, bf, fp in _CUDA_PEAKS:
        if fragment in device_name:
            return (bf if bf16 else fp) * 1e12
    return 0.0  # unknown GPU: no MFU rather than a wrong one


def measure_cpu_peak(dtype: torch.dtype = torch.float32) -> float:
    """GEMM FLOP/s in ``dtype`` with the current threads: the best 1024² matmul over at least half a
    second. A run that another process interrupts is too slow, never too fast."""
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool start and page faults are not the peak
    best, started, runs = float("inf"), time.perf_counter(), 0
    while runs < 10 or (time.perf_counter() - started < 0.5 and runs < 500):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
        runs += 1
    return 2 * n**3 / best


_CPU_BEST: dict[tuple[int, bool], float] = {}  # (threads, bf16) -> best CPU peak measured in this process


def device_peak(device: torch.device, bf16: bool, remeasure: bool = False) -> float:
    """The device's peak FLOP/s. The CPU's is measured (once, or again with ``remeasure``) and the
    best measurement counts: other processes busy at the first one (in the demo, the agent runtime
    embedding the new corpus as training starts) make it low, and a low peak overstates the MFU."""
    if env := os.environ.get("PUYU_TRAINER_PEAK_TFLOPS"):
        return float(env) * 1e12
    if device.type == "cuda":
        return _cuda_peak(torch.cuda.get_device_name(device), bf16)
    key = (torch.get_num_threads(), bf16)
    if remeasure or key not in _CPU_BEST:
        peak = measure_cpu_peak(torch.bfloat16 if bf16 else torch.float32)
        _CPU_BEST[key] = max(_CPU_BEST.get(key, 0.0), peak)
    return _CPU_BEST[key]


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    return tokens_per_s * flops_per_token / peak if peak > 0 else 0.0
