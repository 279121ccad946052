"""vLLM behind puyu's engine interface (``core/vllm_engine``) answers every option as puyu's engine does.

One vLLM engine (vLLM's CPU build, in ``.venv-vllm``'s Python: ``tests.support.engine_requests``) and
puyu's engine in this process run the same requests on the same fp32 model, a tiny Llama taught one
reply. References: the taught reply (EOS after it, counted as puyu counts), transformers' forward for
logprobs and prompt logprobs, transformers' ``SequenceBiasLogitsProcessor`` for ``logit_bias``, and each
engine's answers against the other's (stop strings, stop token ids, min_tokens, min_p, ignore_eos,
special tokens kept, repetition penalty, JSON schema, echo, scoring only, refusals).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
PROMPT = "User: Where does the river run?\nAssistant:"
REPLY = " The river runs north past the old mill."
# bounded: a random model's digits could run to any length, an answer of this schema cannot
SCHEMA = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
LOGIT_BIAS = [[17, 6.0], [40, -100.0], [41, 3.5]]


def _requests(p: list[int], other: list[int], n_reply: int, stop_id: int) -> dict[str, dict[str, Any]]:
    greedy = {"temperature": 0}
    return {
        "eos": {"prompt_ids": p, "params": {**greedy, "max_tokens": 40}},
        "ignore_eos": {
            "prompt_ids": p,
            "params": {**greedy, "max_tokens": n_reply + 4, "ignore_eos": True, "skip_special_tokens": False},
        },
        "min_tokens": {
            "prompt_ids": p,
            "params": {**greedy, "max_tokens": n_reply + 6, "min_tokens": n_reply + 3, "logprobs": 0},
        },
        "stop": {"prompt_ids": p, "params": {**greedy, "max_tokens": 40, "stop": ["past", "zzz"]}},
        "logprobs": {
            "prompt_ids": other,
            "params": {**greedy, "max_tokens": 6, "logprobs": 3, "ignore_eos": True},
        },
        "repetition": {
            "prompt_ids": other,
            "params": {
                **greedy,
                "max_tokens": 12,
                "repetition_penalty": 1.5,
                "ignore_eos": True,
                "logprobs": 0,
            },
        },
        "scoring": {
            "prompt_ids": p,
            "params": {"max_tokens": 0, "prompt_logprobs": True, "echo": True, "logprobs": 2},
        },
        "json": {"prompt_ids": p, "params": {**greedy, "max_tokens": 30, "json_schema": json.dumps(SCHEMA)}},
        "stop_token_ids": {
            "prompt_ids": p,
            "params": {**greedy, "max_tokens": 40, "stop_token_ids": [stop_id]},
        },
        "logit_bias": {
            "prompt_ids": other,
            "params": {
                **greedy,
                "max_tokens": 6,
                "ignore_eos": True,
                "logprobs": 0,
                "logit_bias": LOGIT_BIAS,
            },
        },
        "min_p": {  # min_p 1 keeps only the most likely token: a seeded hot sample is the greedy answer
            "prompt_ids": other,
            "params": {
                "temperature": 1.5,
                "seed": 3,
                "min_p": 1.0,
                "max_tokens": 6,
                "ignore_eos": True,
                "logprobs": 0,
            },
        },
        "bad_stop_token_ids": {"prompt_ids": p, "params": {"max_tokens": 4, "stop_token_ids": [100000]}},
        "out_of_vocab": {"prompt_ids": [5, 100000], "params": {"max_tokens": 4}},
        "too_long": {"prompt_ids": p, "params": {"max_tokens": 250}},
        "bad_min_tokens": {"prompt_ids": p, "params": {"max_tokens": 4, "min_tokens": 5}},
    }


def _ids(result: dict[str, Any]) -> list[int]:
    return [lp[0] for lp in result["logprobs"]]


def test_vllm_engine_answers_every_option_as_puyus_engine(tmp_path: Path) -> None:
    if not VLLM_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{VLLM_PYTHON} is missing: `make vllm-worker-env` makes it")
        pytest.skip(f"vLLM's worker venv is missing ({VLLM_PYTHON}): `make vllm-worker-env`")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, SequenceBiasLogitsProcessor

    from services.inference_gateway.core.engine import Engine
    from tests.support.engine_requests import run_requests
    from tests.support.tiny_model import build_serving_model, teach_reply

    folder = teach_reply(build_serving_model(tmp_path / "m", seed=3, head_dim=32), PROMPT, REPLY)
    tok = AutoTokenizer.from_pretrained(folder)
    p = list(tok(PROMPT, add_special_tokens=False)["input_ids"])
    other = list(tok("Wool salt copper and", add_special_tokens=False)["input_ids"])
    reply = tok(REPLY, add_special_tokens=False)["input_ids"]
    n_reply = len(reply)
    k = next(i for i in range(2, n_reply) if reply[i] not in reply[:i])  # a reply token seen first at k
    named = _requests(p, other, n_reply, reply[k])
    requests = list(named.values())

    job = json.dumps({"model": str(folder), "requests": requests})
    done = subprocess.run(
        [str(VLLM_PYTHON), "-m", "tests.support.engine_requests"],
        input=job,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    vllm = dict(zip(named, json.loads(done.stdout.strip().splitlines()[-1]), strict=True))
    engine = Engine.load(folder, dtype="float32", max_batch_size=4).start()
    try:
        puyu = dict(zip(named, run_requests(engine, requests), strict=True))
    finally:
        engine.close()

    # the taught reply, ended by EOS, which neither counts
    for got in (puyu["eos"], vllm["eos"]):
        assert (got["text"], got["finish_reason"], got["completion_tokens"]) == (REPLY, "stop", n_reply)
        assert got["prompt_tokens"] == len(p)
    # past EOS: its text kept (special tokens kept), to the limit
    assert puyu["ignore_eos"]["text"].startswith(REPLY + "</s>")
    for key in ("ignore_eos", "min_tokens", "stop"):
        fields = ("text", "finish_reason", "completion_tokens")
        assert [vllm[key][f] for f in fields] == [puyu[key][f] for f in fields], key
    assert vllm["ignore_eos"]["finish_reason"] == "length"
    assert vllm["min_tokens"]["completion_tokens"] >= n_reply + 3
    assert _ids(vllm["min_tokens"]) == _ids(puyu["min_tokens"])
    assert vllm["stop"]["text"] == REPLY[: REPLY.index("past")] and vllm["stop"]["finish_reason"] == "stop"
    # JSON of the schema, no free whitespace (vLLM's separators are "," and ":", puyu's ", " and ": ")
    for got in (puyu["json"], vllm["json"]):
        obj = json.loads(got["text"])
        assert got["finish_reason"] == "stop" and obj.keys() == {"a"} and isinstance(obj["a"], bool)
        assert got["text"] == json.dumps(obj, separators=(",", ":") if got is vllm["json"] else None)
    assert _ids(vllm["repetition"]) == _ids(puyu["repetition"]) and len(_ids(vllm["repetition"])) == 12

    # a stop token id ends the output: counted, its text left out (vLLM's behaviour, puyu's too)
    for got in (puyu["stop_token_ids"], vllm["stop_token_ids"]):
        assert (got["text"], got["finish_reason"], got["completion_tokens"]) == (
            tok.decode(reply[:k]),
            "stop",
            k + 1,
        )

    # logprobs: the chosen tokens' and the best three's, against transformers' forward
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    chosen = _ids(puyu["logprobs"])
    assert _ids(vllm["logprobs"]) == chosen
    # min_p 1 samples the greedy tokens; logit_bias as transformers' SequenceBiasLogitsProcessor
    assert _ids(vllm["min_p"]) == _ids(puyu["min_p"]) == chosen
    biased, bias = list(other), SequenceBiasLogitsProcessor([[[t], b] for t, b in LOGIT_BIAS])
    with torch.no_grad():
        for _ in range(6):
            scores = bias(torch.tensor([biased]), model(torch.tensor([biased])).logits[:, -1].float())
            biased.append(int(scores[0].argmax()))
    assert _ids(vllm["logit_bias"]) == _ids(puyu["logit_bias"]) == biased[len(other) :] != chosen
    with torch.no_grad():
        logits = model(torch.tensor([other + chosen])).logits[0].float()
    ref = torch.log_softmax(logits, -1)[len(other) - 1 : -1]
    for result in (puyu["logprobs"], vllm["logprobs"]):
        for row, (token_id, _, logprob, top) in zip(ref, result["logprobs"], strict=True):
            assert logprob == pytest.approx(float(row[token_id]), abs=1e-4)
            assert [v for _, v in top] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)

    # scoring only: no token, the prompt's logprobs (and the prompt's text, echoed)
    with torch.no_grad():
        prompt_ref = torch.log_softmax(model(torch.tensor([p])).logits[0].float(), -1)
    for result in (puyu["scoring"], vllm["scoring"]):
        assert (result["text"], result["completion_tokens"], result["finish_reason"]) == ("", 0, "length")
        assert result["prompt_text"] == PROMPT
        lps = result["prompt_logprobs"]
        assert lps[0] is None and [t[0] for t in lps[1:]] == p[1:]
        expected = [float(prompt_ref[i, t]) for i, t in enumerate(p[1:])]
        assert [t[2] for t in lps[1:]] == pytest.approx(expected, abs=1e-4)

    # refused before any compute, in the same words
    for key in ("out_of_vocab", "too_long", "bad_min_tokens", "bad_stop_token_ids"):
        assert vllm[key] == puyu[key] and "refused" in puyu[key], key
