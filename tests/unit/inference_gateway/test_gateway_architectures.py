"""Every family the loader supports, served by the paged engine, against an independent reference.

The reference is transformers' own class loaded from the folder (eager attention), and for
InternLM2/InternLM3 the original modeling code that XTuner ships, run as the folder's remote code
(here only: the engine opens the folder through ``shared.hf_models`` without running it). The
reference runs the plain way, the whole sequence every step without a KV cache. The engine serves
several requests of different lengths at once, with prefill chunks of a few tokens and small KV
blocks, so batching, chunking and block tables all take part.

- fp32: the logprob of every prompt token (echo) and of every sampled token within 1e-4 of the
  reference's; 16 greedy tokens per request identical.
- bf16: engine and reference both in bf16, teacher-forced on the engine's tokens: the engine's
  greedy token is the reference's argmax at most steps, and the logprobs agree within a bf16 bound.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from services.inference_gateway.core.engine import Completion, Engine
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams
from shared.errors import Refusal
from tests.support.model_references import ARCHITECTURES, INTERNLM, build_folder, build_native, load_reference

PROMPT_LENGTHS = (5, 33, 12, 21)  # several blocks of 4, chunks of 12 tokens per step
NEW_TOKENS = 16
FP32_ATOL = 1e-4


@pytest.fixture(scope="module", params=ARCHITECTURES)
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    architecture = str(request.param)
    return build_folder(tmp_path_factory.mktemp("arch") / architecture, architecture, request)


def reference_model(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The independent implementation: InternLM's original code, else transformers' own class."""
    if dtype == torch.float32:
        return load_reference(folder)
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8"))["model_type"]
    if model_type in INTERNLM:
        return load_reference(folder).to(dtype)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()


def reference_logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """log p(next token) at every position, from one forward over the whole sequence, in fp32."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def reference_greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(reference_logprobs(model, ids)[-1].argmax()))
    return ids[len(prompt) :]


def prompts(vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(11)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


async def serve(folder: Path, dtype: str, layout: str) -> tuple[Engine, list[list[int]], list[Completion]]:
    engine = Engine.load(
        folder,
        dtype=dtype,
        device="cpu",
        block_size=4,
        max_batch_size=4,
        max_step_tokens=12,
        prefix_caching=False,  # prompt logprobs bypass it anyway
        kv_layout=layout,
    ).start()
    engine.eos_ids = set()  # every request runs its 16 tokens, as the reference does
    try:
        asked = prompts(int(engine.model.config.vocab_size))
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, logprobs=1, prompt_logprobs=True)
        outs = await asyncio.gather(*[engine.generate(ids, params) for ids in asked])
    finally:
        engine.close()
    # a 33-token prompt at 12 tokens a step took three prefill steps while others decoded
    assert engine.steps <= 2 * NEW_TOKENS  # decodes were batched: one at a time would take 4 * 16 steps
    return engine, asked, list(outs)


@pytest.mark.parametrize("layout", ["rows", "paged"])
async def test_fp32_logprobs_and_greedy_tokens_equal_the_reference(folder: Path, layout: str) -> None:
    engine, asked, outs = await serve(folder, "float32", layout)
    assert {p.dtype for p in engine.runner.cache.k} == {torch.float32}
    reference = reference_model(folder, torch.float32)
    for ids, out in zip(asked, outs, strict=True):
        generated = [lp.token_id for lp in out.logprobs]
        assert out.completion_tokens == NEW_TOKENS and len(generated) == NEW_TOKENS
        assert generated == reference_greedy(reference, ids, NEW_TOKENS), folder.name
        expected = reference_logprobs(reference, ids + generated)
        assert out.prompt_logprobs is not None and out.prompt_logprobs[0] is None
        got_prompt = torch.tensor([lp.logprob for lp in out.prompt_logprobs[1:] if lp is not None])
        want_prompt = expected[: len(ids) - 1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        torch.testing.assert_close(got_prompt, want_prompt, atol=FP32_ATOL, rtol=0)
        got = torch.tensor([lp.logprob for lp in out.logprobs])
        want = expected[len(ids) - 1 : -1].gather(-1, torch.tensor(generated)[:, None])[:, 0]
        torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=0)


async def test_bf16_agrees_with_the_reference_in_bf16(folder: Path) -> None:
    engine, asked, outs = await serve(folder, "bfloat16", "rows")
    assert {p.dtype for p in engine.runner.cache.k} == {torch.bfloat16}
    assert engine.runner.rows is not None and {p.dtype for p in engine.runner.rows.k} == {torch.bfloat16}
    reference = reference_model(folder, torch.bfloat16)
    agree = total = 0
    differences = []
    for ids, out in zip(asked, outs, strict=True):
        generated = [lp.token_id for lp in out.logprobs]
        expected = reference_logprobs(reference, ids + generated)  # teacher-forced on the engine's tokens
        agree += sum(int(expected[len(ids) - 1 + k].argmax()) == t for k, t in enumerate(generated))
        total += len(generated)
        assert out.prompt_logprobs is not None
        got = torch.tensor([lp.logprob for lp in [*out.prompt_logprobs[1:], *out.logprobs] if lp is not None])
        whole = ids + generated
        differences.append((got - expected[:-1].gather(-1, torch.tensor(whole[1:])[:, None])[:, 0]).abs())
    difference = torch.cat(differences)
    # bf16 keeps 8 bits of mantissa and the two sum in different orders: dense models stay within
    # 0.08 (0.01 on average); a MoE model's router amplifies roundings (0.035 on average), and one can
    # flip a near-tied expert choice, which moves that token further (0.5 seen). A wrong weight,
    # mask or position moves them all.
    assert (difference <= 0.15).float().mean() >= 0.95, f"{folder.name}: {difference.max():.3f}"
    assert difference.mean() < 0.05
    assert agree >= 0.9 * total, f"{folder.name}: {agree}/{total} greedy steps agree in bf16"


def test_a_sliding_window_caps_the_context(tmp_path: Path) -> None:
    """Attention over the whole context equals a window's only within it: longer prompts are refused."""
    folder = build_native(tmp_path / "mistral-window", "mistral")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**config, "sliding_window": 24}), encoding="utf-8")
    engine = Engine.load(folder, dtype="float32", device="cpu")
    try:
        assert engine.max_positions == 24
        with pytest.raises(InvalidRequest, match="23"):  # the longest prompt: 24 positions, one to generate
            engine.submit(list(range(3, 30)), SamplingParams(max_tokens=1), sink=lambda delta: None)
    finally:
        engine.close()


def test_an_architecture_the_engine_cannot_run_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(Refusal, match="model_type 'gpt2' is not supported"):
        Engine.load(tmp_path, device="cpu")
    with pytest.raises(Refusal, match=r"no config\.json"):
        Engine.load(tmp_path / "missing", device="cpu")
