"""Chat models in process: generation goes through the tokenizer's chat template (equal to
transformers' own greedy decoding of the rendered turns), and the template is part of the result's
version, so a cached result is never reused under another template."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.evaluator.core.cache import ResultCache
from services.evaluator.core.chat import chat_messages
from services.evaluator.core.hf_backend import HFBackend
from services.evaluator.core.loaders import load
from services.evaluator.core.runner import run_task
from services.evaluator.core.tasks import get_task
from shared import samples
from tests.support.tiny_model import build_tiny_model

torch.set_num_threads(1)
OTHER_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    texts = samples.heldout_texts(40, seed=9) + [p + " " + c for p, c in samples.fact_prompts()]
    path = build_tiny_model(tmp_path_factory.mktemp("chat") / "m", texts, vocab_size=320)
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.chat_template = samples.CHAT_TEMPLATE
    tok.save_pretrained(str(path))
    return path


def test_generation_through_the_template_equals_transformers(chat_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = get_task("demo_facts")
    dataset = load(task.loader, None)
    backend = HFBackend(chat_model, batch_size=3, dtype="float32")
    assert backend.chat_format is not None
    outcome = run_task(task, backend, dataset, limit=4)
    tok = AutoTokenizer.from_pretrained(str(chat_model))
    model = AutoModelForCausalLM.from_pretrained(str(chat_model), dtype=torch.float32).eval()
    for sample, row in zip(dataset.samples[:4], outcome.details, strict=True):
        text = tok.apply_chat_template(
            chat_messages(task, dataset, sample), tokenize=False, add_generation_prompt=True
        )
        assert text.startswith("User: The capital of") and text.endswith("Assistant:")
        ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id
        )
        expected = tok.decode(out[0, len(ids) :], skip_special_tokens=True).split("\n")[0]
        assert row["prediction"] == expected
    assert outcome.version_hash != task.version_hash  # the template extends the task's hash


def test_a_cached_result_is_not_reused_under_another_template(chat_model: Path, tmp_path: Path) -> None:
    task = get_task("demo_facts")
    dataset = load(task.loader, None)
    cache = ResultCache(tmp_path / "cache.sqlite")
    first = run_task(
        task, HFBackend(chat_model, dtype="float32"), dataset, limit=3, cache=cache, model_key="m"
    )
    again = run_task(
        task, HFBackend(chat_model, dtype="float32"), dataset, limit=3, cache=cache, model_key="m"
    )
    assert first.cached == 0 and again.cached == 3
    other = HFBackend(chat_model, dtype="float32")
    other.tokenizer.chat_template = OTHER_TEMPLATE
    other.chat_format = "chat:other"
    changed = run_task(task, other, dataset, limit=3, cache=cache, model_key="m")
    assert changed.cached == 0 and changed.version_hash != first.version_hash
    plain = task.model_copy(update={"chat": "never"})
    assert run_task(plain, other, dataset, limit=3).version_hash == plain.version_hash  # no template
