"""The transformers backend on a tiny random Llama built here (no download), and the CLI over it."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from services.evaluator.cli import eval_cmd
from services.evaluator.config import EvaluatorSettings
from services.evaluator.core import ModelSpec
from services.evaluator.core.backends import ModelLoadError, make_backend
from services.evaluator.core.hf_backend import HFBackend
from services.evaluator.core.tasks import GenerationConfig, UnknownTask
from shared import samples
from shared.hf_models import resolve_dtype
from tests.support.tiny_model import build_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = samples.heldout_texts(200, seed=5) + [p + " " + t for p, t in samples.fact_prompts()]
    return build_tiny_model(tmp_path_factory.mktemp("evalmodel") / "m", texts, vocab_size=400)


def test_random_model_perplexity_is_about_vocab_size(tiny_model: Path) -> None:
    backend = HFBackend(tiny_model, batch_size=4)
    vocab = len(backend.tokenizer)
    scores = backend.loglikelihood_rolling(samples.heldout_texts(6))
    ppl = math.exp(-sum(s.logprob for s in scores) / sum(s.num_tokens for s in scores))
    assert math.isfinite(ppl)
    assert vocab / 10 < ppl < vocab * 10


def test_rolling_matches_loglikelihood_and_windows_cover_long_texts(tiny_model: Path) -> None:
    backend = HFBackend(tiny_model, batch_size=3, max_length=32, dtype="float32")
    text = samples.heldout_texts(1)[0]
    n_tokens = len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert n_tokens > 64  # several windows
    rolling = backend.loglikelihood_rolling([text])[0]
    assert rolling.num_tokens == n_tokens  # every token scored once (BOS gives the first its context)
    short = "The capital of"
    assert backend.loglikelihood_rolling([short])[0].logprob == pytest.approx(
        backend.loglikelihood([("", short)])[0].logprob, abs=1e-4
    )


def test_batching_and_padding_do_not_change_results(tiny_model: Path) -> None:
    prompts = [p for p, _ in samples.fact_prompts()[:5]] + ["A much longer prompt about the old market " * 3]
    one = HFBackend(tiny_model, batch_size=1, dtype="float32")
    many = HFBackend(tiny_model, batch_size=6, dtype="float32")
    reqs = [(p, " Velm") for p in prompts]
    for a, b in zip(one.loglikelihood(reqs), many.loglikelihood(reqs), strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
    config = GenerationConfig(max_new_tokens=6)
    assert one.generate(prompts, config) == many.generate(prompts, config)  # left padding is right


def test_eval_cmd_writes_results_and_table(tiny_model: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    settings = EvaluatorSettings(evaluator_data_dir=tmp_path / "nodata", evaluator_batch_size=4)
    report = eval_cmd(
        ["perplexity", "demo_facts", "gsm8k"],
        tiny_model,
        tmp_path / "out",
        limit=4,
        settings=settings,
        console=Console(file=out, width=160),
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary) == {"perplexity", "demo_facts"}
    assert 0.0 <= summary["demo_facts"]["accuracy"] <= 1.0 and summary["perplexity"]["perplexity"] > 1
    assert "gsm8k" in report.skipped
    assert len((tmp_path / "out" / "details" / "demo_facts.jsonl").read_text().splitlines()) == 4
    printed = out.getvalue()
    assert "perplexity" in printed and "skipped" in printed


def test_bad_inputs_are_named(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownTask, match="nope"):
        eval_cmd(["nope"], tiny_model, tmp_path, console=Console(file=io.StringIO()))
    with pytest.raises(ModelLoadError, match="missing"):
        HFBackend(tmp_path / "missing")


def test_dtype_is_loaded_as_asked_and_keys_the_cache(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto`` follows shared.hf_models.resolve_dtype; results of one precision are never reused for
    another (the model key holds the dtype the model was loaded in)."""
    keys = {}
    for dtype in ("float32", "bfloat16", "auto"):
        backend, keys[dtype] = make_backend(ModelSpec(path=tiny_model), dtype=dtype)
        assert isinstance(backend, HFBackend)
        config = json.loads((tiny_model / "config.json").read_text())
        assert backend.model.dtype == resolve_dtype(dtype, "cpu", config)
    assert keys["float32"] != keys["bfloat16"] and keys["auto"] in (keys["float32"], keys["bfloat16"])
    with pytest.raises(ModelLoadError, match="float64"):
        HFBackend(tiny_model, dtype="float64")  # type: ignore[arg-type]

    settings = EvaluatorSettings(evaluator_data_dir=tmp_path / "nodata", evaluator_batch_size=4)
    assert settings.evaluator_dtype == "auto"
    quiet = Console(file=io.StringIO())

    def cached(dtype: str) -> int:
        report = eval_cmd(
            ["demo_facts"],
            tiny_model,
            tmp_path / dtype,
            limit=3,
            dtype=dtype,
            settings=settings,
            console=quiet,
        )
        return report.outcomes[0].cached

    assert (cached("float32"), cached("float32"), cached("bfloat16")) == (0, 3, 0)
    monkeypatch.setenv("PUYU_EVALUATOR_DTYPE", "float16")
    assert EvaluatorSettings().evaluator_dtype == "float16"


def test_puyu_eval_passes_dtype(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import services.evaluator.cli
    from services.cli.__main__ import main

    seen: list[object] = []
    monkeypatch.setattr(services.evaluator.cli, "eval_cmd", lambda *a, **kw: seen.append(kw["dtype"]))
    base = ["eval", "--tasks", "demo_facts", "--model", str(tiny_model), "--out", str(tmp_path)]
    for extra, expected in (([], None), (["--dtype", "bfloat16"], "bfloat16")):
        result = CliRunner().invoke(main, [*base, *extra])
        assert result.exit_code == 0, result.output
        assert seen.pop() == expected
    refused = CliRunner().invoke(main, [*base, "--dtype", "float64"])
    assert refused.exit_code != 0 and "float64" in refused.output


def test_grouping_and_prefix_reuse_match_one_request_at_a_time(tiny_model: Path) -> None:
    """Context grouping (one pass for all single-token choices), logits_to_keep and the shared
    few-shot prefix's KV cache must give the scores of plain one-by-one scoring."""
    shots = "\n\n".join(f"{p} {t}." for p, t in samples.fact_prompts()[:4])
    prompts = [f"{shots}\n\n{p}" for p, _ in samples.fact_prompts()[4:10]]
    reqs = [(p, c) for p in prompts for c in (" A", " B", " Velm was", "\n")]
    plain = HFBackend(tiny_model, batch_size=1, prefix_reuse=False, dtype="float32")
    fast = HFBackend(tiny_model, batch_size=8, dtype="float32")
    for a, b in zip(plain.loglikelihood(reqs), fast.loglikelihood(reqs), strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert a.is_greedy == b.is_greedy
    assert fast.prefix_tokens_reused > 0 and plain.prefix_tokens_reused == 0
    # and against a direct full forward of one request
    ctx, cont = fast.encode_pair(*reqs[2])
    with torch.no_grad():
        logits = fast.model(input_ids=torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
    direct = sum(float(logits[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert fast.loglikelihood([reqs[2]])[0].logprob == pytest.approx(direct, abs=1e-3)


def test_batches_bound_padding_and_size(tiny_model: Path) -> None:
    """Longest-first batches hold at most batch_size rows and close before a row much shorter than
    the batch's longest one (padding is computed work)."""
    from services.evaluator.core.hf_backend import _PAD_BOUND, _Row

    backend = HFBackend(tiny_model, batch_size=4, prefix_reuse=False)
    lengths = [100, 99, 98, 97, 96, 95, 40, 39, 12, 11, 10, 3]
    rows = [_Row(list(range(1, n + 1)), [(i, [1])], context_only=True) for i, n in enumerate(lengths)]
    batches = backend._batches(rows)
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))
    assert max(len(b) for b in batches) == 4
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert all(lengths[i] >= _PAD_BOUND * longest for i in b)
    assert [len(b) for b in batches] == [4, 2, 2, 3, 1]
