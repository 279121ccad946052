"""``min_p``, ``logit_bias`` and ``stop_token_ids``: the sampler against transformers' logits processors
(``MinPLogitsWarper``, ``SequenceBiasLogitsProcessor``, composed in vLLM's order), the engine's tokens
against a greedy loop over transformers' forward with those processors, refusals naming the field (also
as 400s through the official openai client), and the mapping to workers and to vLLM."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import openai
import pytest
import torch
import uvicorn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from services.inference_gateway.cli import build_serve_app
from services.inference_gateway.core.engine import Engine
from services.inference_gateway.core.sampling import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    InvalidRequest,
    SamplingParams,
    adjust_logits,
    sample_next,
    token_probs,
)
from services.inference_gateway.core.vllm_engine.params import vllm_sampling_kwargs
from services.inference_gateway.wire import params_from_proto, params_to_proto
from shared.natsserver import free_port

TINY = 5e-324
KEY = "sk-extras"


def row(vocab: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, generator=g) * 4
    logits[7] = -float("inf")  # a token masked out (as a grammar does)
    return logits


def hf(
    processors: list[LogitsProcessor], logits: torch.Tensor, seen: list[int] | None = None
) -> torch.Tensor:
    ids = torch.tensor([seen or [0]])
    scores = logits[None].clone()
    for p in processors:
        scores = p(ids, scores)
    return scores[0]


# ------------------------------------------------------------------------------------ the sampler


@pytest.mark.parametrize(("temperature", "min_p"), [(1.0, 0.05), (0.7, 0.2), (1.6, 0.5), (1.0, 1.0)])
def test_min_p_is_transformers_min_p_warper(temperature: float, min_p: float) -> None:
    logits = row()
    got = token_probs(logits, SamplingParams(temperature=temperature, min_p=min_p))
    want = torch.softmax(hf([TemperatureLogitsWarper(temperature), MinPLogitsWarper(min_p)], logits), -1)
    assert torch.allclose(got, want, atol=1e-6)
    assert 0 < int((got > 0).sum()) < logits.numel() - 1  # some tokens dropped, the top one kept


@pytest.mark.parametrize(("top_k", "top_p"), [(10, 1.0), (0, 0.8), (12, 0.6)])
def test_min_p_with_top_k_and_top_p_in_vllms_order(top_k: int, top_p: float) -> None:
    """vLLM applies min-p after temperature and before top-k / top-p (transformers puts it after them:
    min-p then changes top-p's nucleus); the reference is transformers' warpers composed in vLLM's order."""
    logits = row(seed=3)
    params = SamplingParams(temperature=0.9, min_p=0.02, top_k=top_k, top_p=top_p)
    warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(0.9), MinPLogitsWarper(0.02)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    assert torch.allclose(token_probs(logits, params), torch.softmax(hf(warpers, logits), -1), atol=1e-6)


def test_logit_bias_then_repetition_penalty_as_transformers() -> None:
    logits = row(seed=1)
    bias = ((3, 5.5), (11, -100.0), (40, 100.0), (50, -2.25))
    seen = [3, 9, 40, 40, 62]
    params = SamplingParams(logit_bias=bias, repetition_penalty=1.3)
    got = adjust_logits(logits, params, prompt=seen[:2], generated=seen[2:])
    sequence_bias = SequenceBiasLogitsProcessor([[[t], b] for t, b in bias])
    want = hf([sequence_bias, RepetitionPenaltyLogitsProcessor(1.3)], logits, seen)
    assert torch.equal(got, want)
    assert torch.equal(
        adjust_logits(logits, SamplingParams(logit_bias=bias), [], []), hf([sequence_bias], logits)
    )
    # greedy follows the bias: +100 picks token 40, -100 bans the argmax
    greedy = SamplingParams(temperature=0, logit_bias=((40, 100.0),))
    assert sample_next(adjust_logits(logits, greedy, [], []), greedy, torch.Generator()) == 40
    top = int(torch.argmax(logits))
    banned = SamplingParams(temperature=0, logit_bias=((top, -100.0),))
    assert sample_next(adjust_logits(logits, banned, [], []), banned, torch.Generator()) != top


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=MIN_TEMPERATURE, min_p=1.0),
        SamplingParams(temperature=MIN_TEMPERATURE, min_p=TINY),
        SamplingParams(temperature=MAX_TEMPERATURE, min_p=1.0, top_p=TINY),
        SamplingParams(temperature=MIN_TEMPERATURE, logit_bias=((7, 100.0), (1, 100.0), (2, -100.0))),
        SamplingParams(temperature=MAX_TEMPERATURE, logit_bias=((1, -100.0),), min_p=0.999),
    ],
)
def test_extreme_accepted_values_give_finite_probabilities(params: SamplingParams) -> None:
    params.validate()
    probs = token_probs(adjust_logits(row(), params, [1, 2], [3]), params)
    assert torch.isfinite(probs).all() and abs(float(probs.sum()) - 1) < 1e-4
    assert float(probs[7]) == 0  # a masked token stays impossible, whatever its bias


@pytest.mark.parametrize(
    ("params", "says"),
    [
        (SamplingParams(min_p=math.nan), "^min_p must be a finite number"),
        (SamplingParams(min_p=-TINY), "^min_p must be >= 0"),
        (SamplingParams(min_p=1.5), "^min_p must be <= 1"),
        (SamplingParams(logit_bias=((5, 100.5),)), r"^logit_bias\[5\] must be <= 100"),
        (SamplingParams(logit_bias=((5, -math.inf),)), r"^logit_bias\[5\] must be a finite number"),
        (SamplingParams(logit_bias=((5, math.nan),)), r"^logit_bias\[5\] must be a finite number"),
        (SamplingParams(logit_bias=((-2, 1.0),)), r"^logit_bias must hold token ids \(>= 0\), got \[-2\]"),
        (SamplingParams(stop_token_ids=(4, -1)), r"^stop_token_ids must hold token ids \(>= 0\), got \[-1\]"),
    ],
)
def test_bad_values_are_refused_naming_the_field(params: SamplingParams, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        params.validate()


def test_ids_outside_the_vocabulary_are_refused_naming_the_field() -> None:
    SamplingParams(stop_token_ids=(95,), logit_bias=((0, 1.0),)).check_token_ids(96)
    with pytest.raises(InvalidRequest, match=r"^stop_token_ids holds token id\(s\) \[96\] out of vocabulary"):
        SamplingParams(stop_token_ids=(96, 3)).check_token_ids(96)
    with pytest.raises(InvalidRequest, match=r"^logit_bias holds token id\(s\) \[500\] out of vocabulary"):
        SamplingParams(logit_bias=((500, 1.0),)).check_token_ids(96)


def test_the_options_reach_workers_and_vllm() -> None:
    sent = SamplingParams(min_p=0.25, stop_token_ids=(9, 4), logit_bias=((3, -100.0), (12, 2.5)))
    assert params_from_proto(params_to_proto(sent), 16) == sent
    kw = vllm_sampling_kwargs(sent, 4, 256)
    assert kw["min_p"] == 0.25 and kw["stop_token_ids"] == [9, 4]
    assert kw["logit_bias"] == {3: -100.0, 12: 2.5}
    plain = vllm_sampling_kwargs(SamplingParams(), 4, 256)
    assert (plain["min_p"], plain["stop_token_ids"], plain["logit_bias"]) == (0.0, None, None)


# ------------------------------------------------------------------------------------ the engine


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[Engine]:
    eng = Engine.load(tiny_model, max_batch_size=4, dtype=torch.float32).start()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> Callable[..., list[int]]:
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()

    def greedy(
        ids: list[int],
        steps: int,
        processors: Sequence[LogitsProcessor] = (),
        stop: frozenset[int] = frozenset(),
    ) -> list[int]:
        """Greedy decoding with transformers' forward and logits processors (no KV cache, no EOS)."""
        seq = list(ids)
        with torch.no_grad():
            for _ in range(steps):
                scores = model(torch.tensor([seq])).logits[:, -1].float()
                for p in processors:
                    scores = p(torch.tensor([seq]), scores)
                seq.append(int(scores[0].argmax()))
                if seq[-1] in stop:
                    break
        return seq[len(ids) :]

    return greedy


def _ids(out: object) -> list[int]:
    return [t.token_id for t in out.logprobs]  # type: ignore[attr-defined]


async def test_logit_bias_in_the_engine_equals_transformers(
    engine: Engine, reference: Callable[..., list[int]]
) -> None:
    ids = engine.encode("The river runs")
    plain = reference(ids, 8)
    bias = [[[plain[1]], -100.0], [[plain[0] + 1], 6.0]]  # ban the second greedy token, favour another
    want = reference(ids, 8, [SequenceBiasLogitsProcessor(bias)])
    assert want != plain
    params = SamplingParams(
        max_tokens=8, temperature=0, ignore_eos=True, logprobs=0, logit_bias=tuple((t[0], b) for t, b in bias)
    )
    assert _ids(await engine.generate(ids, params)) == want
    # and in a batch beside a plain greedy request (the one argmax for plain rows must leave it out)
    together = await _both(
        engine, ids, params, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=0)
    )
    assert together == (want, plain)


async def _both(
    engine: Engine, ids: list[int], a: SamplingParams, b: SamplingParams
) -> tuple[list[int], list[int]]:
    first, second = await asyncio.gather(engine.generate(ids, a), engine.generate(ids, b))
    return _ids(first), _ids(second)


async def test_min_p_one_samples_the_greedy_tokens(
    engine: Engine, reference: Callable[..., list[int]]
) -> None:
    """min_p 1 keeps only the most likely token: a hot seeded sample becomes transformers' greedy output,
    which the same sample without min_p is not."""
    ids = engine.encode("Traders meet")
    greedy = reference(ids, 10)
    hot = SamplingParams(max_tokens=10, temperature=1.8, seed=5, ignore_eos=True, logprobs=0)
    assert _ids(await engine.generate(ids, hot)) != greedy
    assert _ids(await engine.generate(ids, replace(hot, min_p=1.0))) == greedy


async def test_stop_token_ids_end_the_output_as_vllm(
    engine: Engine, reference: Callable[..., list[int]], tiny_model: Path
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = engine.encode("The capital of Aldoria is")
    plain = reference(ids, 12)
    k = next(i for i in range(2, len(plain)) if plain[i] not in plain[:i])  # the first new token after two
    params = SamplingParams(
        max_tokens=12, temperature=0, ignore_eos=True, logprobs=0, stop_token_ids=(plain[k],)
    )
    out = await engine.generate(ids, params)
    # ended by the stop token even with ignore_eos: counted, logprob given, its text left out
    assert (out.finish_reason, out.completion_tokens, _ids(out)) == ("stop", k + 1, plain[: k + 1])
    assert out.text == tok.decode(plain[:k])
    # before min_tokens the stop token cannot be sampled (transformers masks it the same way)
    at_least = k + 3
    want = reference(
        ids,
        12,
        [MinNewTokensLengthLogitsProcessor(len(ids), at_least, [plain[k]])],
        stop=frozenset({plain[k]}),
    )
    held = replace(params, min_tokens=at_least)
    got = await engine.generate(ids, held)
    assert _ids(got) == want and plain[k] not in want[:at_least]
    assert got.finish_reason == ("stop" if want[-1] == plain[k] else "length")


async def test_out_of_vocabulary_ids_are_refused_before_compute(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="stop_token_ids holds token id"):
        await engine.generate([1, 2], SamplingParams(stop_token_ids=(10**6,)))


# ------------------------------------------------------------------------------------ over HTTP


@pytest.fixture(scope="module")
def client(tiny_model: Path) -> Iterator[openai.OpenAI]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PUYU_GATEWAY_DTYPE", "float32")
        app, _ = build_serve_app(tiny_model, served_name="tiny", api_key=KEY)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"min_p": 1.5}, "min_p"),
        ({"logit_bias": {"5": 150}}, r"logit_bias\[5\] must be <= 100"),
        ({"logit_bias": {"five": 1}}, "logit_bias keys must be token ids, got 'five'"),
        ({"logit_bias": {"100000": 1}}, r"logit_bias holds token id\(s\) \[100000\] out of vocabulary"),
        ({"stop_token_ids": [100000]}, r"stop_token_ids holds token id\(s\) \[100000\] out of vocabulary"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ],
)
def test_bad_values_are_400s_naming_the_field(
    client: openai.OpenAI, extra: dict[str, object], says: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=says):
        client.completions.create(model="tiny", prompt="The river", max_tokens=2, extra_body=extra)
    with pytest.raises(openai.BadRequestError, match=says):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body=extra
        )


def test_logit_bias_and_stop_token_ids_through_the_client(
    client: openai.OpenAI, tiny_model: Path, reference: Callable[..., list[int]]
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok("The river runs")["input_ids"]
    plain = reference(ids, 6)
    favoured = plain[0] - 1 if plain[0] > 0 else 1
    want = reference(ids, 6, [SequenceBiasLogitsProcessor([[[favoured], 100.0]])])
    out = client.completions.create(
        model="tiny",
        prompt=ids,
        max_tokens=6,
        temperature=0,
        logit_bias={str(favoured): 100},
        extra_body={"ignore_eos": True},
    )
    assert out.choices[0].text == tok.decode(want)
    stopped = client.completions.create(
        model="tiny", prompt=ids, max_tokens=6, temperature=0, extra_body={"stop_token_ids": [plain[0]]}
    )
    assert stopped.choices[0].text == "" and stopped.choices[0].finish_reason == "stop"
    assert stopped.usage is not None and stopped.usage.completion_tokens == 1
