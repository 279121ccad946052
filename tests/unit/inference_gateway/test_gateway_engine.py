import asyncio
import threading
from pathlib import Path

import pytest
import torch

from services.inference_gateway.core.engine import Engine, EngineClosed
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams, StopChecker

PROMPTS = [
    "The capital of Aldoria is",
    "Traders meet",
    "wool salt copper and bright glass beads from the hills",
]


@pytest.fixture
def engine(tiny_model: Path):
    eng = Engine.load(tiny_model, max_batch_size=8, dtype="float32").start()
    yield eng
    eng.close()


def hf_greedy(engine: Engine, prompt: str, n: int) -> str:
    ids = engine.encode(prompt)
    out = engine.model.generate(
        torch.tensor([ids]),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=engine.tokenizer.pad_token_id,
    )
    return engine.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


async def test_batched_greedy_equals_hf_generate(engine: Engine) -> None:
    engine.eos_ids = set()  # compare full-length runs with generate(eos_token_id=None)
    expected = [hf_greedy(engine, p, 12) for p in PROMPTS]
    greedy = SamplingParams(max_tokens=12, temperature=0)
    outs = await asyncio.gather(*[engine.generate(engine.encode(p), greedy) for p in PROMPTS])
    assert [o.text for o in outs] == expected
    assert all(o.finish_reason == "length" and o.completion_tokens == 12 for o in outs)
    assert outs[0].prompt_tokens == len(engine.encode(PROMPTS[0]))
    # a request that joins a running batch later still matches
    first = asyncio.create_task(engine.generate(engine.encode(PROMPTS[2]), SamplingParams(40, temperature=0)))
    await asyncio.sleep(0.05)
    late = await engine.generate(engine.encode(PROMPTS[1]), greedy)
    assert late.text == expected[1]
    await first


async def test_stop_sequence_spanning_tokens(engine: Engine) -> None:
    engine.eos_ids = set()
    ids = engine.encode(PROMPTS[0])
    full = (await engine.generate(ids, SamplingParams(max_tokens=20, temperature=0))).text
    gen_ids = engine.tokenizer(full, add_special_tokens=False)["input_ids"]
    assert len(gen_ids) >= 6
    # a stop string made of several tokens from the middle of the output
    cut = len(engine.tokenizer.decode(gen_ids[:3]))
    stop = full[cut : len(engine.tokenizer.decode(gen_ids[:6]))]
    assert len(engine.tokenizer(stop, add_special_tokens=False)["input_ids"]) > 1
    pieces = [d async for d in engine.stream(ids, SamplingParams(max_tokens=20, temperature=0, stop=(stop,)))]
    text = "".join(d.text for d in pieces)
    assert text == full[: full.find(stop)]
    assert stop not in text
    assert pieces[-1].finish_reason == "stop"


async def test_concurrent_requests_all_complete(engine: Engine) -> None:
    params = [
        SamplingParams(max_tokens=4 + i % 7, temperature=0.8, top_p=0.9, top_k=20, seed=i) for i in range(20)
    ]
    outs = await asyncio.gather(
        *[engine.generate(engine.encode(PROMPTS[i % 3]), p) for i, p in enumerate(params)]
    )
    for out, p in zip(outs, params, strict=True):
        assert out.finish_reason in ("stop", "length")
        assert out.completion_tokens <= p.max_tokens
    assert engine.in_flight == 0


async def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    p = SamplingParams(max_tokens=10, temperature=1.0, top_k=50, seed=7)
    a = await engine.generate(engine.encode("Traders"), p)
    b = await engine.generate(engine.encode("Traders"), p)
    assert a.text == b.text


async def test_cancel_stops_the_request(engine: Engine) -> None:
    stream = engine.stream(
        engine.encode("The river"), SamplingParams(max_tokens=200, temperature=0, stop=("zzz",))
    )
    await stream.__anext__()
    await stream.aclose()  # client went away
    for _ in range(100):
        if engine.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.in_flight == 0
    assert engine.finished["cancelled"] == 1


async def test_invalid_requests_and_drain(engine: Engine) -> None:
    with pytest.raises(InvalidRequest):
        engine.submit(engine.encode("x"), SamplingParams(max_tokens=0), lambda d: None)
    with pytest.raises(InvalidRequest, match="tokens"):
        engine.submit(list(range(5)) * 100, SamplingParams(), lambda d: None)
    assert await engine.drain(5)
    with pytest.raises(EngineClosed):
        engine.submit(engine.encode("x"), SamplingParams(), lambda d: None)


def test_stop_checker_holds_back_partial_stop() -> None:
    sc = StopChecker(("END",))
    assert sc.safe_end("hello EN") == len("hello ")
    assert sc.find_stop("hello ENDx") == 6
    assert sc.safe_end("caf\ufffd") == 3


def test_load_report_leaves_out_a_finished_request_before_its_step_ends(engine: Engine) -> None:
    # The engine thread drops finished sequences after its step, while the caller already has the last
    # delta: held there, a router reading the load must not see a request running (it once did, and the
    # next two requests read as one running and one waiting: a 503 for a queue of one).
    scheduler = engine.loop.scheduler
    drop, holding, release = scheduler.drop_finished, threading.Event(), threading.Event()

    def held_drop() -> None:
        if any(seq.finished for seq in scheduler.running):
            holding.set()
            release.wait(10)
        drop()

    scheduler.drop_finished = held_drop  # type: ignore[method-assign]
    try:
        engine.generate_sync(engine.encode("The river"), SamplingParams(max_tokens=2, temperature=0))
        assert holding.wait(10)
        assert len(scheduler.running) == 1  # still listed ...
        assert engine.load_info()["running"] == 0  # ... but not reported
    finally:
        release.set()
