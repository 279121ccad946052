import itertools
import math

import pytest
import torch
from pydantic import ValidationError

from contracts.events import ModelArchitecture, TrainSpec
from services.trainer.core.optim import build_optimizer, build_scheduler, lr_at
from services.trainer.core.run import TrainConfigError, validate


def test_warmup_then_cosine_to_floor() -> None:
    spec = TrainSpec(max_steps=110, warmup_steps=10, learning_rate=1e-3, min_learning_rate=1e-4)
    assert lr_at(0, spec) == pytest.approx(1e-4)
    assert lr_at(9, spec) == pytest.approx(1e-3)
    assert lr_at(10, spec) == pytest.approx(1e-3)
    assert lr_at(60, spec) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(110, spec) == pytest.approx(1e-4)
    assert lr_at(500, spec) == pytest.approx(1e-4)
    lrs = [lr_at(s, spec) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_scheduler_follows_lr_at_and_norms_are_not_decayed() -> None:
    spec = TrainSpec(
        max_steps=20, warmup_steps=5, learning_rate=2e-3, min_learning_rate=0.0, weight_decay=0.1
    )
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, spec)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.ndim == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    sched = build_scheduler(opt, spec)
    for step in range(20):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, spec))
        opt.step()
        sched.step()
    assert math.isclose(opt.param_groups[0]["lr"], 0.0, abs_tol=1e-12)


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValidationError, match="divisible by num_attention_heads"):
        ModelArchitecture(hidden_size=100, num_attention_heads=3, num_key_value_heads=1)
    with pytest.raises(ValidationError, match="multiple of num_key_value_heads"):
        ModelArchitecture(num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValidationError, match="exceeds the model's max_position_embeddings"):
        TrainSpec(seq_len=1024, architecture=ModelArchitecture(max_position_embeddings=512))
    with pytest.raises(TrainConfigError, match="warmup_steps"):
        validate(TrainSpec(max_steps=10, warmup_steps=10))
    with pytest.raises(TrainConfigError, match="torch_compile 'on' is not supported with ZeRO"):
        validate(TrainSpec(torch_compile="on", zero_stage=2))


def test_cpu_peak_keeps_the_best_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peak measured while other processes were busy is low and would overstate the MFU: a later
    measurement replaces it only when higher."""
    from services.trainer.core import mfu

    readings = iter([100e9, 50e9, 200e9])
    monkeypatch.setattr(mfu, "measure_cpu_peak", lambda dtype=None: next(readings))
    monkeypatch.setattr(mfu, "_CPU_BEST", {})
    monkeypatch.delenv("PUYU_TRAINER_PEAK_TFLOPS", raising=False)
    cpu = torch.device("cpu")
    assert mfu.device_peak(cpu, False) == 100e9
    assert mfu.device_peak(cpu, False) == 100e9  # measured once unless asked again
    assert mfu.device_peak(cpu, False, remeasure=True) == 100e9  # 50 was contended
    assert mfu.device_peak(cpu, False, remeasure=True) == 200e9
    assert mfu.mfu(1000.0, 1e6, 200e9) == pytest.approx(0.005)


def test_precision_auto_is_bf16_where_the_hardware_multiplies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.trainer.core import engine

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert engine.use_bf16(TrainSpec(), cpu) and engine.use_bf16(TrainSpec(), cuda)
    assert not engine.use_bf16(TrainSpec(zero_stage=1), cpu)  # DeepSpeed's CPU engine: fp32 only
    assert not engine.use_bf16(TrainSpec(precision="fp32"), cpu)
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    assert not engine.use_bf16(TrainSpec(), cpu)
    assert engine.use_bf16(TrainSpec(precision="bf16"), cpu)


def test_cpu_peak_is_measured_in_the_run_precision() -> None:
    from services.trainer.core import mfu

    assert mfu.measure_cpu_peak(torch.bfloat16) > 0 and mfu.measure_cpu_peak(torch.float32) > 0
