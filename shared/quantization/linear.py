"""``QuantLinear``: a linear layer holding a checkpoint's packed integer weight, scales and zeros.

Its buffers carry the checkpoint's own names and shapes (``qweight``, ``qzeros``, ``scales``,
``g_idx`` for GPTQ, ``bias``), so a model's ``state_dict`` is the checkpoint. ``forward``
dequantises and multiplies (the reference) or runs an int4/int8 kernel where one applies to the
layer's grid: on the CPU aten's weight-only ones (``kernels``, exact up to floating-point rounding),
or, once ``serve_only`` (``prepare_for_serving``) opted in, puyu's W4A8 / W8A8 kernel (``cpu_kernel``:
activations quantised to int8 per row, AVX512-VNNI); puyu's Triton kernel on CUDA (``triton_matmul``).
``backend``: ``auto`` (that choice), ``reference`` (always dequantise), ``triton`` (the Triton kernel
on any device: under ``TRITON_INTERPRET=1`` on the CPU, as the tests run it).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from shared.quantization import cpu_kernel, kernels
from shared.quantization.grid import QuantizedWeight
from shared.quantization.packing import PackedWeight, pack_awq, pack_gptq, unpack_awq, unpack_gptq
from shared.quantization.spec import Layout

Backend = Literal["auto", "reference", "triton"]


class QuantLinear(nn.Module):
    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bits: int,
        group_size: int,
        layout: Layout,
        bias: bool,
        gptq_v1: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.layout: Layout = layout
        self.gptq_v1 = gptq_v1
        self.backend: Backend = "auto"
        per_word = 32 // bits
        n_groups = 1 if group_size == -1 else in_features // group_size
        if layout == "awq-gemm":
            qweight_shape = (in_features, out_features // per_word)
        else:
            qweight_shape = (in_features // per_word, out_features)
        self.register_buffer("qweight", torch.zeros(qweight_shape, dtype=torch.int32, device=device))
        self.register_buffer(
            "qzeros", torch.zeros(n_groups, out_features // per_word, dtype=torch.int32, device=device)
        )
        self.register_buffer(
            "scales", torch.zeros(n_groups, out_features, dtype=torch.float16, device=device)
        )
        self.g_idx: torch.Tensor | None
        if layout == "gptq":
            self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32, device=device))
        else:
            self.g_idx = None
        self.bias: torch.Tensor | None
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16, device=device))
        else:
            self.bias = None
        # the CPU's weight-only kernels (exact) or, where serving opted in, the W4A8 / W8A8 one
        self.cpu_exact = True
        self._cpu_weights: dict[
            torch.dtype, kernels.CpuWeight | kernels.DequantWeight | cpu_kernel.WxA8Weight | None
        ] = {}
        self._triton_weights: dict[tuple[torch.dtype, torch.device], Any] = {}
        self.released = False  # serve_only freed the packed tensors

    @classmethod
    def from_quantized(
        cls, weight: QuantizedWeight, layout: Layout, bias: torch.Tensor | None = None
    ) -> QuantLinear:
        module = cls(
            weight.in_features,
            weight.out_features,
            bits=weight.bits,
            group_size=weight.group_size,
            layout=layout,
            bias=bias is not None,
        )
        packed = pack_awq(weight) if layout == "awq-gemm" else pack_gptq(weight)
        module.qweight.copy_(packed.qweight)
        module.qzeros.copy_(packed.qzeros)
        module.scales.copy_(packed.scales)
        if packed.g_idx is not None and module.g_idx is not None:
            module.g_idx.copy_(packed.g_idx)
        if bias is not None and module.bias is not None:
            module.bias.copy_(bias.detach().half())
        return module

    def unpacked(self) -> QuantizedWeight:
        if self.released:
            raise RuntimeError(
                "this layer's packed weights were freed for serving (serve_only): load the folder again"
            )
        packed = PackedWeight(self.qweight.cpu(), self.qzeros.cpu(), self.scales.cpu(), None)
        if self.layout == "awq-gemm":
            return unpack_awq(packed, self.bits, self.group_size)
        assert self.g_idx is not None
        packed.g_idx = self.g_idx.cpu()
        return unpack_gptq(packed, self.bits, self.group_size, v1=self.gptq_v1)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] every reader of the layout reconstructs."""
        return self.unpacked().dequantize(dtype).to(self.qweight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "auto" and x.device.type == "cpu":  # a served step: the least Python
            ready = self._cpu_weights.get(x.dtype)
            if ready is not None:
                return kernels.matmul(x, ready, self.bias)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.backend == "triton" or (self.backend == "auto" and x.device.type == "cuda"):
            triton_weight = self._triton_weight(x)
            if triton_weight is not None:
                from shared.quantization import triton_matmul

                out = triton_matmul.matmul(x, triton_weight)
                return out if bias is None else out + bias
        prepared = self._cpu_weight(x) if self.backend == "auto" else None
        if prepared is None:
            return F.linear(x, self.dequantize(x.dtype), bias)
        return kernels.matmul(x, prepared, self.bias)

    def serve_only(self, dtype: torch.dtype, *, exact: bool | None = None) -> int:
        """Prepare the kernel form for activations of ``dtype`` on this layer's device and free the
        checkpoint's packed tensors, which the kernel's own copy replaces (keeping both would double
        the weights' memory). Returns the bytes freed: 0 where no kernel applies (the layer keeps
        dequantising from them). Afterwards the layer serves ``dtype`` only and cannot be saved.

        On the CPU, ``exact=False`` takes the W4A8 / W8A8 kernel where it applies (its activations
        rounded to int8 per row: errors up to ~0.5% of the output's range), ``exact=True`` the weight-only
        kernels; ``None``: the W4A8 / W8A8 kernel for bf16 activations (rounded to 8 bits already),
        the exact ones for fp32 (a model served in fp32 computes as its reference does)."""
        if exact is None:
            exact = dtype != torch.bfloat16
        if exact != self.cpu_exact and not self.released:
            self.cpu_exact = exact
            self._cpu_weights.clear()
        probe = torch.empty(0, dtype=dtype, device=self.qweight.device)
        form = self._triton_weight(probe) if probe.device.type == "cuda" else self._cpu_weight(probe)
        if form is None or self.released:
            return 0
        freed = 0
        for name in ("qweight", "qzeros", "scales", "g_idx"):
            tensor = getattr(self, name, None)
            if tensor is not None:
                freed += tensor.numel() * tensor.element_size()
                setattr(self, name, tensor.new_empty(0))
        self.released = True
        return freed

    @property
    def kernel(self) -> str:
        """Which path the last forward of each activation dtype took (for logs and tests)."""
        if any(w is not None for w in self._triton_weights.values()):
            return "triton"
        if any(isinstance(w, cpu_kernel.WxA8Weight) for w in self._cpu_weights.values()):
            return f"wxa8-int{self.bits}"
        if any(isinstance(w, kernels.DequantWeight) for w in self._cpu_weights.values()):
            return f"dequant-int{self.bits}"  # fp32: rebuilt into a scratch weight, one fp32 matmul
        if any(w is not None for w in self._cpu_weights.values()):
            return f"aten-int{self.bits}"
        return "dequantize"

    def _cpu_weight(
        self, x: torch.Tensor
    ) -> kernels.CpuWeight | kernels.DequantWeight | cpu_kernel.WxA8Weight | None:
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return None
        if x.dtype not in self._cpu_weights:
            self._cpu_weights[x.dtype] = kernels.prepare(self.unpacked(), x.dtype, exact=self.cpu_exact)
        return self._cpu_weights[x.dtype]

    def _triton_weight(self, x: torch.Tensor) -> Any:
        key = (x.dtype, x.device)
        if key not in self._triton_weights:
            try:
                from shared.quantization import triton_matmul
            except ImportError:  # no Triton: the dequantising reference
                self._triton_weights[key] = None
            else:
                self._triton_weights[key] = triton_matmul.prepare(self.unpacked(), x.dtype, x.device)
        return self._triton_weights[key]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cpu_weights.clear()  # new tensors: the kernel forms are stale
        self._triton_weights.clear()
        self.released = False
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, layout={self.layout}, bias={self.bias is not None}"
        )
