"""Model FLOPs utilisation: achieved training FLOP/s over the device's peak.

CUDA peaks come from the vendors' data sheets (dense, no sparsity); ``PUYU_TRAINER_PEAK_TFLOPS``
overrides. The CPU has no data-sheet figure that means much for one process: its peak is the fp32
matmul rate measured once (1024² GEMM after a warm-up, best over half a second) with the threads the run uses.
"""

from __future__ import annotations

import functools
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


@functools.cache
def peak_flops(device_type: str, device_name: str, bf16: bool, threads: int) -> float:
    if env := os.environ.get("PUYU_TRAINER_PEAK_TFLOPS"):
        return float(env) * 1e12
    if device_type == "cuda":
        for fragment, bf, fp in _CUDA_PEAKS:
            if fragment in device_name:
                return (bf if bf16 else fp) * 1e12
        return 0.0  # unknown GPU: no MFU rather than a wrong one
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool start and page faults are not the peak
    best = float("inf")
    # Best of many, over at least half a second: a measurement that another process interrupts is too
    # slow, never too fast, and an underestimated peak reports an MFU above 1 (the demo's services
    # starting beside the trainer once made ten back-to-back runs all slow).
    started, runs = time.perf_counter(), 0
    while runs < 10 or (time.perf_counter() - started < 0.5 and runs < 500):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
        runs += 1
    return 2 * n**3 / best


def device_peak(device: torch.device, bf16: bool) -> float:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return peak_flops(device.type, name, bf16, torch.get_num_threads())


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    return tokens_per_s * flops_per_token / peak if peak > 0 else 0.0
