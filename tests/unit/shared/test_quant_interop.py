"""puyu's quantised checkpoints read by transformers with its quantisation backend, and checkpoints written
by that backend read by puyu: the same logits on both sides.

The backend is gptqmodel 7.7.0 (transformers 5's GPTQ and AWQ integration), in ``.venv-quant``, built by
``make quant-backend`` (a prerequisite of ``make test``; see ``tests/support/quant_backend/install.sh``)
because it pins a newer torch than puyu. One process in that venv (``backend.py``) quantises two
folders with gptqmodel (its GPTQ, and its AWQ in AutoAWQ's GEMM layout) and computes, with
``AutoModelForCausalLM.from_pretrained``, the logits of every folder here. gptqmodel's torch kernels
build the weight in the scales' dtype (fp16, or bf16 where gptqmodel wrote the checkpoint) before
multiplying, puyu in fp32 from the same scales: the logits agree within a bf16 rounding of their scale
(0.3% of the largest seen), and the greedy token at every position is the same.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from shared.hf_models import load_causal_lm
from shared.quantization import QuantLinear, QuantSpec, quantize_folder
from tests.support import hf_folders
from tests.support.model_references import build_native, train_byte_level_bpe

ROOT = Path(__file__).resolve().parents[3]
BACKEND_VENV = ROOT / ".venv-quant"
BACKEND = ROOT / "tests" / "support" / "quant_backend" / "backend.py"
# of the largest logit: gptqmodel's 16-bit weights (see above); a wrong code, zero or order moves logits
# by tenths of their scale
MAX_DIFFERENCE, MEAN_DIFFERENCE = 1e-2, 1e-3
PUYU_CASES = {
    # puyu writes -> transformers + gptqmodel reads
    "llama-awq4": (
        "llama",
        QuantSpec(method="awq", bits=4, group_size=32, min_calibration_tokens=256, awq_grid=5),
    ),
    "llama-rtn4": ("llama", QuantSpec(method="rtn", bits=4, group_size=32)),
    "qwen2-gptq8-actorder": (
        "qwen2",
        QuantSpec(method="gptq", bits=8, group_size=32, desc_act=True, min_calibration_tokens=256),
    ),
}
BACKEND_CASES = ("gptq", "awq")  # gptqmodel writes -> puyu reads


def backend_python() -> Path:
    failed = BACKEND_VENV / "FAILED"
    if failed.is_file():
        pytest.skip(f"the quantisation backend could not be installed: {failed.read_text().strip()}")
    if not (BACKEND_VENV / ".installed").is_file():
        pytest.skip(f"{BACKEND_VENV} is not built: run `make quant-backend` (make test does)")
    return BACKEND_VENV / "bin" / "python"


def llama_for_gptqmodel(folder: Path) -> Path:
    """A random Llama whose every projection has a multiple of 64 outputs (gptqmodel's AWQ clips in
    batches of 64 output channels)."""
    tokenizer = train_byte_level_bpe()
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    hf_folders.randomize(model, seed=3)
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exchanged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.Tensor, torch.Tensor]]:
    """For each case: (quantised folder, the backend's logits, the token ids)."""
    python = backend_python()
    root = tmp_path_factory.mktemp("interop")
    generator = torch.Generator().manual_seed(9)
    calibration = [torch.randint(3, 300, (64,), generator=generator).tolist() for _ in range(8)]
    ids = torch.randint(3, 300, (2, 23), generator=generator)
    folders: dict[str, Path] = {}
    sources: dict[str, Path] = {}
    for name, (architecture, spec) in PUYU_CASES.items():
        if architecture not in sources:
            sources[architecture] = build_native(root / f"source-{architecture}", architecture)
        folders[name] = quantize_folder(sources[architecture], root / name, spec, calibration).out_dir
    wide = llama_for_gptqmodel(root / "source-wide")
    job = {
        "ids": ids.tolist(),
        "calibration": calibration,
        "quantize": [[str(wide), str(root / f"gptqmodel-{m}"), m] for m in BACKEND_CASES],
        "logits": [],
    }
    for method in BACKEND_CASES:
        folders[f"gptqmodel-{method}"] = root / f"gptqmodel-{method}"
    job["logits"] = [[str(folder), str(root / f"{name}.pt")] for name, folder in folders.items()]
    (root / "job.json").write_text(json.dumps(job), encoding="utf-8")
    run = subprocess.run(
        [str(python), str(BACKEND), str(root / "job.json")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return {name: (folder, torch.load(root / f"{name}.pt"), ids) for name, folder in folders.items()}


def puyu_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model, fmt = load_causal_lm(folder, dtype="float32")
    assert fmt.quantization_config is not None
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 7 * model.config.num_hidden_layers
    with torch.no_grad():
        return model(ids).logits.float()


def assert_same_logits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = float(theirs.abs().max())
    difference = (ours - theirs).abs()
    message = f"max {float(difference.max()):.4f}, mean {float(difference.mean()):.5f}, scale {scale:.2f}"
    assert float(difference.max()) <= MAX_DIFFERENCE * scale, message
    assert float(difference.mean()) <= MEAN_DIFFERENCE * scale, message
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1)), message


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PUYU_CASES))
def test_transformers_reads_puyus_checkpoint_with_the_same_logits(exchanged, case: str) -> None:
    folder, theirs, ids = exchanged[case]
    assert_same_logits(puyu_logits(folder, ids), theirs)


@pytest.mark.slow
@pytest.mark.parametrize("method", BACKEND_CASES)
def test_puyu_reads_what_gptqmodel_wrote_with_the_same_logits(exchanged, method: str) -> None:
    folder, theirs, ids = exchanged[f"gptqmodel-{method}"]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["quantization_config"]["quant_method"] == method
    assert "gptqmodel" in str(config["quantization_config"]["meta"]["quantizer"])  # the other tool wrote it
    assert_same_logits(puyu_logits(folder, ids), theirs)
