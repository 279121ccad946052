"""Precision and engine settings: ``PUYU_GATEWAY_*`` reach ``puyu serve`` as they reach the service,
flags override them, and ``auto`` picks the dtype ``shared.hf_models`` resolves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from services.cli.__main__ import main as puyu
from services.inference_gateway import cli as serve_module
from services.inference_gateway.app import engine_loader
from services.inference_gateway.cli import build_serve_app, serve_settings
from services.inference_gateway.config import GatewaySettings
from services.inference_gateway.core.engine import Engine
from services.inference_gateway.core.sampling import SamplingParams
from shared.hf_models import formats


def test_serve_settings_read_the_environment_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUYU_GATEWAY_DTYPE")
    plain = serve_settings()
    assert (plain.gateway_max_batch_size, plain.gateway_default_max_tokens, plain.gateway_dtype) == (
        32,
        256,
        "auto",
    )
    monkeypatch.setenv("PUYU_GATEWAY_MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("PUYU_GATEWAY_KV_BLOCKS", "40")
    monkeypatch.setenv("PUYU_GATEWAY_DTYPE", "bfloat16")
    from_env = serve_settings()
    assert (from_env.gateway_max_batch_size, from_env.gateway_kv_blocks, from_env.gateway_dtype) == (
        5,
        40,
        "bfloat16",
    )
    flagged = serve_settings(gateway_max_batch_size=3, gateway_dtype="float32", gateway_max_queue=None)
    assert (flagged.gateway_max_batch_size, flagged.gateway_kv_blocks, flagged.gateway_dtype) == (
        3,
        40,
        "float32",
    )


async def test_the_served_engine_is_built_from_the_environment(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUYU_GATEWAY_MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("PUYU_GATEWAY_KV_BLOCKS", "40")
    monkeypatch.setenv("PUYU_GATEWAY_BLOCK_SIZE", "8")
    monkeypatch.setenv("PUYU_GATEWAY_DTYPE", "bfloat16")
    _, pool = build_serve_app(tiny_model, served_name="tiny")
    await pool.deploy("tiny", 1, tiny_model)
    try:
        engine = pool.resolve("tiny")
        assert engine.max_batch_size == 5
        assert (engine.allocator.num_blocks, engine.allocator.block_size) == (40, 8)
        assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
        assert {k.dtype for k in engine.runner.cache.k} == {torch.bfloat16}
        out = await engine.generate(engine.encode("The river"), SamplingParams(max_tokens=3, logprobs=2))
        assert len(out.logprobs) == 3 and all(lp.logprob <= 0 for lp in out.logprobs)
    finally:
        await pool.close()


def test_puyu_serve_passes_its_flags(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr(serve_module, "serve_cmd", lambda *args, **kw: seen.update(kw, args=args))
    args = ["serve", "--model", str(tiny_model), "--dtype", "bfloat16", "--max-batch-size", "3"]
    result = CliRunner().invoke(puyu, args)
    assert result.exit_code == 0, result.output
    assert (seen["dtype"], seen["max_batch_size"]) == ("bfloat16", 3)
    result = CliRunner().invoke(puyu, ["serve", "--model", str(tiny_model)])
    assert result.exit_code == 0 and (seen["dtype"], seen["max_batch_size"]) == (None, None)


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_the_cpu(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, native_bf16: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(formats, "cpu_has_native_bf16", lambda: native_bf16)
    for engine in (
        Engine.load(tiny_model, device="cpu"),
        engine_loader(GatewaySettings(gateway_dtype="auto"))(tiny_model, "tiny"),
    ):
        assert next(engine.model.parameters()).dtype == expected
        assert engine.runner.cache.k[0].dtype == expected
        engine.close()
