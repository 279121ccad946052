"""puyu's training Llama against transformers' LlamaForCausalLM, and the fused ops against references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from services.trainer.core import kernels
from services.trainer.core.attention import attention, short_attention, use_short_attention
from services.trainer.core.llama import PuyuLlama, document_mask, to_hf_state_dict
from services.trainer.core.model import load_model, save_hf


def _config(**kw: object) -> LlamaConfig:
    values: dict[str, object] = dict(
        vocab_size=200,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
    )
    values.update(kw)
    return LlamaConfig(**values)


def _pair(cfg: LlamaConfig) -> tuple[PuyuLlama, LlamaForCausalLM]:
    torch.manual_seed(0)
    ours = PuyuLlama(cfg).eval()
    hf = LlamaForCausalLM(cfg).eval()
    hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    return ours, hf


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"tie_word_embeddings": False},
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
    ],
)
def test_logits_and_loss_match_transformers(kw: dict[str, object]) -> None:
    ours, hf = _pair(_config(**kw))
    ids = torch.randint(0, 200, (2, 24))
    with torch.no_grad():
        logits, loss = ours(ids, ids)
        ref = hf(input_ids=ids, labels=ids)
    assert torch.allclose(logits, ref.logits, atol=1e-5)
    assert loss is not None and abs(float(loss) - float(ref.loss)) < 1e-5


def test_document_attention_equals_each_document_alone() -> None:
    ours, hf = _pair(_config())
    ids = torch.randint(0, 200, (1, 20))
    pos = torch.cat([torch.arange(12), torch.arange(8)]).unsqueeze(0)
    with torch.no_grad():
        packed, _ = ours(ids, position_ids=pos)
        first = hf(input_ids=ids[:, :12]).logits
        second = hf(input_ids=ids[:, 12:]).logits
    assert torch.allclose(packed[:, :12], first, atol=1e-5)
    assert torch.allclose(packed[:, 12:], second, atol=1e-5)
    assert document_mask(torch.arange(20).unsqueeze(0)) is None  # one document: SDPA's causal path


def test_gradients_match_transformers() -> None:
    ours, hf = _pair(_config())
    ids = torch.randint(0, 200, (2, 16))
    ours(ids, ids)[1].backward()  # type: ignore[union-attr]
    hf(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in hf.named_parameters()}
    q_grad = ours.blocks[0].attn.qkv.weight.grad
    assert q_grad is not None
    assert torch.allclose(q_grad[:48], grads["model.layers.0.self_attn.q_proj.weight"], atol=1e-6)
    assert torch.allclose(ours.embed.weight.grad, grads["model.embed_tokens.weight"], atol=1e-6)  # type: ignore[arg-type]


def test_saved_checkpoint_loads_in_transformers_and_back(tmp_path: Path) -> None:
    ours, _ = _pair(_config(tie_word_embeddings=False))
    save_hf(ours, tmp_path / "ckpt")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    back = load_model(tmp_path / "ckpt")
    ids = torch.randint(0, 200, (1, 10))
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids).logits, ours(ids)[0], atol=1e-6)
        assert torch.equal(back(ids)[0], ours(ids)[0])


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    cfg = _config()
    torch.manual_seed(0)
    plain = PuyuLlama(cfg)
    ckpt = PuyuLlama(cfg, activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 200, (2, 16))
    plain(ids, ids)[1].backward()  # type: ignore[union-attr]
    ckpt(ids, ids)[1].backward()  # type: ignore[union-attr]
    for a, b in zip(plain.parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)  # type: ignore[arg-type]


# ----------------------------------------------------------------- fused ops: the CPU fallbacks


def test_rms_norm_fallback_matches_llama_rmsnorm() -> None:
    ref = LlamaRMSNorm(48, eps=1e-5)
    torch.nn.init.normal_(ref.weight)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 7, 48, dtype=dtype)
        assert torch.equal(kernels.rms_norm(x, ref.weight, 1e-5), ref(x))


def test_rotary_fallback_matches_llama_rotary() -> None:
    q, k = torch.randn(2, 6, 9, 16), torch.randn(2, 2, 9, 16)
    angles = torch.randn(2, 9, 8)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    got = kernels.rotary(q, k, cos, sin)
    want = apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_cross_entropy_fallback_matches_torch_and_ignores_padding() -> None:
    logits = torch.randn(10, 50, requires_grad=True)
    labels = torch.randint(0, 50, (10,))
    labels[7:] = -100
    got = kernels.cross_entropy(logits, labels)
    want = torch.nn.functional.cross_entropy(logits[:7], labels[:7])
    assert torch.allclose(got, want)
    got.backward()
    assert logits.grad is not None and torch.all(logits.grad[7:] == 0)


def test_no_triton_path_without_cuda() -> None:
    assert not kernels.triton_available() or torch.cuda.is_available()


def test_cpu_bf16_autocast_runs_attention_in_fp32() -> None:
    """Under CPU bf16 autocast the projections run in bf16 but SDPA in fp32 (its bf16 backward is ~3x
    slower on the CPU): the result is the fp32 attention of the same inputs, handed back in bf16."""
    torch.manual_seed(0)
    q = torch.randn(2, 6, 16, 8, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(2, 2, 16, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attention(q, k, v, None, gqa=True)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, ref.to(torch.bfloat16))
    y.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16


def test_bf16_autocast_training_step_tracks_fp32() -> None:
    """One forward/backward under CPU bf16 autocast stays close to fp32 (loss and gradient direction)."""
    model = PuyuLlama(_config()).train()
    ids = torch.randint(0, 200, (2, 24))
    _, loss32 = model(ids, ids)
    assert loss32 is not None
    loss32.backward()
    weight = dict(model.named_parameters())["blocks.0.mlp.gate_up.weight"]
    assert weight.grad is not None
    grad32 = weight.grad.clone()
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss16 = model(ids, ids)
    assert loss16 is not None
    loss16.backward()
    grad16 = weight.grad
    assert grad16 is not None
    assert abs(float(loss16) - float(loss32)) < 0.02 * float(loss32)
    assert F.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("documents", [False, True])
def test_short_attention_is_sdpa(documents: bool) -> None:
    """The matmul-softmax-matmul attention that compiled CPU bf16 runs: the same maths as SDPA (causal
    or with a document mask, grouped-query), forward and backward, checked here in fp32."""
    torch.manual_seed(0)
    q = torch.randn(2, 6, 16, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, 16, 8, requires_grad=True) for _ in range(2))
    positions = torch.tensor([list(range(16)), list(range(5)) + list(range(11))])
    mask = document_mask(positions) if documents else None
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
    ours = short_attention(q, k, v, mask)
    assert torch.allclose(ours, ref, atol=1e-5)
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, grads_ref, strict=True))


def test_short_attention_only_where_its_scores_stay_small() -> None:
    assert use_short_attention(torch.empty(16, 6, 128, 32))  # the demo's batch: 1.6M scores
    assert not use_short_attention(torch.empty(1, 6, 512, 32))  # long sequences: flash
    assert not use_short_attention(torch.empty(64, 32, 256, 64))  # 134M scores: flash's memory
