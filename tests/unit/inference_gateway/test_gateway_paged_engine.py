"""The paged engine against transformers: prefix caching, chunked prefill, preemption, logprobs, penalties.

Each runs in both KV layouts: ``rows`` (contiguous rows per sequence, the CPU default) and ``paged``
(attention gathers through the block tables, as the CUDA kernel reads them).
"""

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from services.inference_gateway.core.engine import Engine
from services.inference_gateway.core.sampling import SamplingParams

LONG = "The capital of Aldoria is velm and the river runs north past the old mill where traders meet every spring"


@pytest.fixture(params=["rows", "paged"])
def layout(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def hf(tiny_model: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


def make(tiny_model: Path, **kw) -> Engine:
    eng = Engine.load(tiny_model, dtype="float32", **kw).start()
    eng.eos_ids = set()  # full-length runs, comparable with generate(eos_token_id=None)
    return eng


def hf_greedy(hf, ids: list[int], n: int, **kw) -> list[int]:
    out = hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, **kw)
    return out[0, len(ids) :].tolist()


def text_of(eng: Engine, ids: list[int]) -> str:
    return eng.tokenizer.decode(ids, skip_special_tokens=True)


async def test_prefix_cache_hit_gives_the_same_answer(tiny_model: Path, hf, layout: str) -> None:
    eng = make(tiny_model, block_size=4, kv_layout=layout)
    try:
        ids = eng.encode(LONG)
        expected = text_of(eng, hf_greedy(hf, ids, 10))
        greedy = SamplingParams(max_tokens=10, temperature=0)
        first = [d async for d in eng.stream(ids, greedy)]
        # another prompt in between overwrites the freed row: the hit must come from the paged cache
        await eng.generate(eng.encode(LONG[::-1]), greedy)
        second = [d async for d in eng.stream(ids, greedy)]
        assert first[-1].cached_tokens == 0
        # every whole block but the one holding the last prompt token comes from the cache
        assert second[-1].cached_tokens == (len(ids) - 1) // 4 * 4 > 0
        assert "".join(d.text for d in first) == "".join(d.text for d in second) == expected
        # a prompt that shares only a prefix reuses that much and still matches transformers
        other = ids[:9] + eng.encode(" wool salt")
        out = await eng.generate(other, greedy)
        assert out.text == text_of(eng, hf_greedy(hf, other, 10))
        assert eng.allocator.prefix_hits >= second[-1].cached_tokens + 8
    finally:
        eng.close()


async def test_chunked_prefill_and_preemption_match_transformers(tiny_model: Path, hf, layout: str) -> None:
    # 5 tokens per step: long prompts are split into chunks that ride along with the decodes;
    # 20 blocks of 4 cannot hold all four sequences at once: some are preempted and recomputed
    eng = make(
        tiny_model,
        block_size=4,
        num_blocks=20,
        max_step_tokens=5,
        max_batch_size=4,
        prefix_caching=False,
        kv_layout=layout,
    )
    try:
        prompts = [LONG, "Traders meet", "wool salt copper and bright glass beads", "The river runs north"]
        ids = [eng.encode(p) for p in prompts]
        greedy = SamplingParams(max_tokens=14, temperature=0)
        outs = await asyncio.gather(*[eng.generate(i, greedy) for i in ids])
        assert [o.text for o in outs] == [text_of(eng, hf_greedy(hf, i, 14)) for i in ids]
        assert eng.preemptions > 0
        assert eng.allocator.free_blocks == 20  # every block came back
    finally:
        eng.close()


async def test_logprobs_and_prompt_logprobs_match_transformers(tiny_model: Path, hf, layout: str) -> None:
    eng = make(tiny_model, kv_layout=layout)
    try:
        ids = eng.encode("The river runs")
        out = await eng.generate(
            ids, SamplingParams(max_tokens=4, temperature=0, logprobs=3, prompt_logprobs=True)
        )
        full = torch.tensor([ids + [lp.token_id for lp in out.logprobs]])
        with torch.no_grad():
            ref = torch.log_softmax(hf(full).logits[0].float(), -1)
        for k, lp in enumerate(out.logprobs):
            row = ref[len(ids) - 1 + k]
            assert lp.logprob == pytest.approx(float(row[lp.token_id]), abs=1e-4)
            assert lp.top[0][1] == pytest.approx(float(row.max()), abs=1e-4)
            assert len(lp.top) == 3
        assert out.prompt_logprobs is not None and out.prompt_logprobs[0] is None
        assert len(out.prompt_logprobs) == len(ids)
        for p in range(1, len(ids)):
            assert out.prompt_logprobs[p].logprob == pytest.approx(float(ref[p - 1, ids[p]]), abs=1e-4)
    finally:
        eng.close()


async def test_repetition_penalty_matches_transformers(tiny_model: Path, hf, layout: str) -> None:
    eng = make(tiny_model, kv_layout=layout)
    try:
        ids = eng.encode("the river the river the")
        out = await eng.generate(ids, SamplingParams(max_tokens=12, temperature=0, repetition_penalty=1.8))
        assert out.text == text_of(eng, hf_greedy(hf, ids, 12, repetition_penalty=1.8))
        plain = await eng.generate(ids, SamplingParams(max_tokens=12, temperature=0))
        assert plain.text != out.text
    finally:
        eng.close()


async def test_prompt_logprobs_survive_a_request_that_ends_on_its_first_token(tiny_model: Path, hf) -> None:
    # echo + logprobs with max_tokens=1 (how loglikelihood scoring asks): the only delta is the last
    eng = make(tiny_model)
    try:
        ids = eng.encode("The river runs")
        out = await eng.generate(ids, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=True))
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
        assert out.completion_tokens == 1
        assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == len(ids)
        for p in range(1, len(ids)):
            assert out.prompt_logprobs[p].logprob == pytest.approx(float(ref[p - 1, ids[p]]), abs=1e-4)
    finally:
        eng.close()
