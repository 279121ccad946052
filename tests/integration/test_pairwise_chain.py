"""The chain with a head-to-head gate, through the real registry and evaluator processes on a real
nats-server: a version that knows the facts is promoted over the champion, one that does not is
rejected against it.

The construction is honest end to end: three tiny chat models (the demo chat template) are
registered in turn. Version 1 and 3 are random weights; version 2 is trained here, in the test, on
"User: The capital of X is / Assistant: Y" for the ten capitals the task asks (and checked to have
learnt them). The evaluator asks each candidate and the registry's champion the same prompts through
the chat template and a scripted judge (``test_evaluator_judge.ScriptedJudge``: the answer holding
the reference wins) compares them in both orders; the registry's policy gates on the win rate and
the lower end of its interval. Nothing about the outcome is scripted: it follows from what the
models answer.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from rich.console import Console
from test_evaluator_judge import ScriptedJudge

from contracts.events import ArtifactRef, CheckpointReady
from services.cli.stack import Stack
from services.evaluator.cli import compare_cmd
from services.evaluator.config import EvaluatorSettings
from shared import samples
from shared.artifacts import ArtifactStore
from shared.auth import ClientAuth
from shared.bus import Bus
from shared.ports import http_port
from shared.settings import CommonSettings
from tests.support.tiny_model import build_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]
torch.set_num_threads(2)

LIMIT = 10
FACTS = samples.fact_prompts()[:LIMIT]
POLICY = {
    "gates": {
        "pairwise_facts": {"min_win_rate": 0.5, "min_win_rate_lower_bound": 0.45, "required": True},
        "demo_facts": {"tolerance": 1.0, "tolerance_kind": "absolute"},
    }
}


def _chat_text(tok: Any, prompt: str, answer: str | None) -> str:
    messages = [{"role": "user", "content": prompt}]
    if answer is None:
        return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return str(tok.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False))


def _tiny_chat_model(dest: Path, seed: int) -> Path:
    from transformers import AutoTokenizer

    texts = samples.heldout_texts(60, seed=11) + [
        f"User: {p}\nAssistant: {c}" for p, c in samples.fact_prompts()
    ]
    build_tiny_model(dest, texts, vocab_size=400, seed=seed)
    tok = AutoTokenizer.from_pretrained(str(dest))
    tok.chat_template = samples.CHAT_TEMPLATE
    tok.save_pretrained(str(dest))
    return dest


def _teach_capitals(folder: Path, steps: int = 300) -> list[str]:
    """Train the folder's model on the ten chat turns; returns its greedy answers afterwards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32)
    rows = [tok(_chat_text(tok, p, c), add_special_tokens=False)["input_ids"] for p, c in FACTS]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.tensor(r)
    mask = (labels != -100).long()
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval()
    model.save_pretrained(str(folder))
    answers = []
    for prompt, _ in FACTS:
        enc = tok(_chat_text(tok, prompt, None), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        answers.append(str(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)))
    return answers


async def _publish(stack: Stack, event: CheckpointReady) -> None:
    # a final checkpoint is the trainer's fact to publish: the test speaks as the trainer
    bus = Bus(stack.settings.nats_url, "trainer", identity=stack.identity("trainer"))
    await bus.start()
    try:
        await bus.publish(event)
    finally:
        await bus.stop()


def _admin() -> dict[str, str]:
    """The stack's admin token (service_stack names its file in PUYU_AUTH_TOKEN_FILE)."""
    return ClientAuth.from_settings(CommonSettings()).headers()


def _decided(registry: str, version: int, timeout: float = 600) -> dict[str, Any]:
    url = f"{registry}/v1/models/capitals/versions/{version}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(url, timeout=30, headers=_admin())
        if response.status_code == 200:
            shown: dict[str, Any] = response.json()
            if shown["evaluations"] and shown["status"] in ("champion", "rejected"):
                return shown
        time.sleep(0.5)
    raise TimeoutError(f"version {version} not decided in {timeout}s")


def _audit_reason(registry: str, version: int) -> str:
    entries = httpx.get(
        f"{registry}/v1/audit", params={"model": "capitals"}, timeout=30, headers=_admin()
    ).json()
    rows = entries if isinstance(entries, list) else entries.get("entries", [])
    return " | ".join(str(e.get("reason", "")) for e in rows if e.get("version") == version)


def test_a_pairwise_gate_promotes_the_better_version_and_rejects_the_worse(
    service_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    with ScriptedJudge() as judge:
        stack = service_stack(
            ("model_registry", "evaluator"),
            PUYU_REGISTRY_POLICY=json.dumps(POLICY),
            PUYU_EVALUATOR_REGISTRATION_TASKS=json.dumps(["demo_facts", "pairwise_facts"]),
            PUYU_EVALUATOR_LIMIT=str(LIMIT),
            PUYU_EVALUATOR_JUDGE_URL=judge.url,
            PUYU_EVALUATOR_JUDGE_MODEL="rule-judge",
            PUYU_EVALUATOR_DATA_DIR=str(tmp_path / "data"),
        )
        store = ArtifactStore(stack.settings.artifact_root_uri)
        ignorant = _tiny_chat_model(store.local_staging("models/capitals/1"), seed=0)
        knower = _tiny_chat_model(store.local_staging("models/capitals/2"), seed=0)
        answers = _teach_capitals(knower)
        learnt = sum(c in a for a, (_, c) in zip(answers, FACTS, strict=True))
        assert learnt >= 8, answers  # version 2 really knows (nearly) every capital asked
        forgetful = _tiny_chat_model(store.local_staging("models/capitals/3"), seed=1)

        registry = f"http://{stack.settings.host}:{http_port('model_registry', stack.settings)}"
        shown: dict[int, dict[str, Any]] = {}
        for version, folder in ((1, ignorant), (2, knower), (3, forgetful)):
            ref: ArtifactRef = store.ref_for(folder.as_uri())
            event = CheckpointReady(
                job_id=f"train-{version}",
                run_id=f"run-{version}",
                model_name="capitals",
                step=1,
                checkpoint=ref,
            )
            asyncio.run(_publish(stack, event))
            shown[version] = _decided(registry, version)

        def pairwise(version: int) -> dict[str, float]:
            (row,) = [e for e in shown[version]["evaluations"] if e["task"] == "pairwise_facts"]
            return dict(row["metrics"])

        # the first version has no champion to play: it is promoted on its other gate
        assert shown[1]["status"] == "champion"
        assert {e["task"] for e in shown[1]["evaluations"]} == {"demo_facts"}
        # the one that knows the capitals wins head-to-head against it, and is promoted
        assert shown[2]["status"] == "champion", _audit_reason(registry, 2)
        won = pairwise(2)
        assert won["win_rate"] >= 0.8 and won["win_rate_lower"] >= 0.45
        assert "win_rate_stderr" in won and 0 <= won["judge_agreement"] <= 1
        # the one that does not loses against the new champion, and is rejected naming the gate
        assert shown[3]["status"] == "rejected"
        lost = pairwise(3)
        assert lost["win_rate"] <= 0.2 and lost["win_rate_upper"] < 0.5
        assert "win_rate" in _audit_reason(registry, 3)
        current = httpx.get(f"{registry}/v1/models/capitals/versions/2", timeout=30, headers=_admin()).json()
        assert "champion" in current["aliases"]
        # the judge saw both orders of every prompt, for each of the two head-to-head runs
        pair_requests = [
            r for r in judge.requests if "Assistant A's Answer]\n" in r["messages"][-1]["content"]
        ]
        assert len(pair_requests) >= 2 * 2 * LIMIT

    out = io.StringIO()
    settings = EvaluatorSettings(home=tmp_path / "cli-home", artifact_root=stack.settings.artifact_root_uri)
    rows = compare_cmd(["capitals:2", "capitals:3"], settings=settings, console=Console(file=out, width=160))
    table = out.getvalue()
    print(table)  # the closing note's sample comparison
    assert "capitals:2" in table and "capitals:3" in table
    by_metric = {(r.task, r.metric): r for r in rows}
    # both pairwise results exist, against different champions: not comparable, marked so
    assert by_metric[("pairwise_facts", "win_rate")].cells[1].mark == "≠"
