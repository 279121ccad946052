"""Prepacked CPU linear layers (``cpu_linear``) against torch's plain linear and transformers' Llama MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from services.inference_gateway.core.cpu_linear import PackedLinear, fused_mlp, pack_linears, packable

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_plain_linear(dtype: torch.dtype, bias: bool) -> None:
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no oneDNN bf16 on this processor")
    torch.manual_seed(0)
    linear = nn.Linear(96, 160, bias=bias).to(dtype)
    packed = PackedLinear(linear, batch_hint=8)
    for shape in [(1, 96), (7, 96), (2, 5, 96)]:  # a decode, a step, a batch of sequences
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(packed(x), nn.functional.linear(x, linear.weight, linear.bias))
    assert packed.weight.shape == linear.weight.shape


def test_fused_mlp_equals_llama_mlp() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=176, hidden_act="silu")
    mlp = LlamaMLP(config).eval()
    x = torch.randn(9, 64)
    with torch.inference_mode():
        want = mlp(x)
        assert fused_mlp(mlp) is None  # plain linears: the module's own forward
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(mlp, name, PackedLinear(getattr(mlp, name), batch_hint=8))
        fused = fused_mlp(mlp)
        assert fused is not None
        torch.testing.assert_close(fused(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mlp(x), want, atol=1e-5, rtol=1e-5)  # the module still serves others


@pytest.mark.parametrize("tied", [False, True])
def test_pack_linears_keeps_the_model_s_outputs(tied: bool) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 128, (2, 11))
    with torch.inference_mode():
        want = model(ids).logits
        packed = pack_linears(model, batch_hint=4)
        got = model(ids).logits
    assert packed == 2 * 7 + (0 if tied else 1)  # q k v o gate up down per layer, the head unless tied
    assert packable(model.lm_head) == tied  # a tied head stays the embedding's dense weight
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
