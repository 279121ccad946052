"""InternLM tokenizers read without their remote code give the ids of the original tokenizers."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

from shared.hf_models import UnsupportedModel, load_tokenizer
from shared.hf_models.formats import ModelFormat
from shared.hf_models.tokenizer import save_tokenizer
from tests.support.hf_folders import INTERNLM_SPECIAL, internlm_tokenizer_config, train_sentencepiece

TEXTS = [
    "hello world",
    "<|im_start|>system\nYou are InternLM.<|im_end|>\n<|im_start|>user\nWhat is 12 plus 30?<|im_end|>\n<|im_start|>assistant\n",
    '<|action_start|><|plugin|>\n{"name": "calculator", "parameters": {"a": 12, "b": 30}}<|action_end|>\n',
    "<|interpreter|>print(12 + 30)",
    "  leading spaces",
    "trailing  ",
    "double  space and\ttab",
    "中文 模型 你好世界",
    "emoji 🤖 and ünïcödé ﬁ",
    "",
    " ",
    "\n\n",
    "▁already escaped",
    "numbers 1234567890 3.14",
    "<s>literal bos</s> in text",
    "x<|im_end|>y",
    " <|im_start|> spaced <|im_end|> ",
    "def f(x):\n    return x + 1\n",
    "unknown <unk> token",
]
EXTRA_SPECIAL = ("<think>", "</think>")  # declared past the SentencePiece vocabulary, as InternLM3 does


def sentencepiece_reference(processor, text: str, specials: list[str]) -> list[int]:
    """What InternLM's tokenizer classes do: split at special tokens, SentencePiece on each piece, <s> first."""
    pattern = re.compile("(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")")
    ids = [processor.bos_id()]
    for chunk in pattern.split(text):
        if chunk and pattern.fullmatch(chunk):
            ids.append(processor.piece_to_id(chunk))
        elif chunk:
            ids.extend(processor.encode(chunk))
    return ids


def write_folder(folder: Path, model: bytes, tokenizer_config: dict, model_type: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    return folder


@pytest.fixture(params=[True, False], ids=["dummy-prefix", "no-dummy-prefix"])
def internlm_sentencepiece_model(request: pytest.FixtureRequest, sentencepiece: ModuleType) -> bytes:
    """Both settings of SentencePiece's dummy prefix (a space before each text), which the conversion follows."""
    return train_sentencepiece(sentencepiece, add_dummy_prefix=request.param)


@pytest.fixture
def processor(sentencepiece: ModuleType, internlm_sentencepiece_model: bytes):
    return sentencepiece.SentencePieceProcessor(model_proto=internlm_sentencepiece_model)


@pytest.fixture
def internlm2_folder(tmp_path: Path, processor, internlm_sentencepiece_model: bytes) -> Path:
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    config = {
        **internlm_tokenizer_config(pieces),
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
    }
    return write_folder(tmp_path / "internlm2", internlm_sentencepiece_model, config, "internlm2")


@pytest.fixture
def internlm3_folder(
    tmp_path: Path, processor, internlm_sentencepiece_model: bytes, xtuner_modelings: Path
) -> Path:
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    config = {
        **internlm_tokenizer_config(pieces, EXTRA_SPECIAL),
        "tokenizer_class": "InternLM3Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm3.InternLM3Tokenizer", None]},
    }
    folder = write_folder(tmp_path / "internlm3", internlm_sentencepiece_model, config, "internlm3")
    shutil.copy(xtuner_modelings / "internlm3" / "tokenization_internlm3.py", folder)
    return folder


def original_internlm3_tokenizer(folder: Path):
    """XTuner's InternLM3Tokenizer class (SentencePiece underneath), loaded from the folder's file."""
    spec = importlib.util.spec_from_file_location(
        "tokenization_internlm3", folder / "tokenization_internlm3.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.InternLM3Tokenizer.from_pretrained(folder)


def test_internlm2_ids_match_sentencepiece_split_at_special_tokens(internlm2_folder: Path, processor) -> None:
    tokenizer = load_tokenizer(internlm2_folder)
    specials = ["<unk>", "<s>", "</s>", *INTERNLM_SPECIAL]
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == sentencepiece_reference(processor, text, specials), text
    for token in INTERNLM_SPECIAL:
        assert tokenizer.convert_tokens_to_ids(token) == processor.piece_to_id(token)
        assert token in tokenizer.all_special_tokens
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2 and tokenizer.pad_token == "</s>"


def test_internlm2_decodes_as_sentencepiece_does(internlm2_folder: Path, processor) -> None:
    tokenizer = load_tokenizer(internlm2_folder)
    for text in TEXTS:
        if "<" not in text:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == processor.decode(ids), text
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_internlm3_ids_match_the_original_tokenizer_class(internlm3_folder: Path, processor) -> None:
    tokenizer = load_tokenizer(internlm3_folder)
    original = original_internlm3_tokenizer(internlm3_folder)
    specials = ["<unk>", "<s>", "</s>", *INTERNLM_SPECIAL]
    texts = [*TEXTS, "<think>reasoning</think>answer", "a <think> b"]
    for text in texts:
        assert tokenizer(text)["input_ids"] == original(text)["input_ids"], text
        if "think>" not in text:
            assert tokenizer(text)["input_ids"] == sentencepiece_reference(processor, text, specials), text
    assert tokenizer.convert_tokens_to_ids(list(EXTRA_SPECIAL)) == [512, 513]
    assert len(tokenizer) == len(original) == 514


def test_saving_in_an_internlm_layout_copies_the_sentencepiece_files(
    internlm3_folder: Path, tmp_path: Path
) -> None:
    fmt = ModelFormat("internlm3", internlm3_folder, {"model_type": "internlm3"}, converted=True)
    tokenizer = load_tokenizer(internlm3_folder)
    out = tmp_path / "out"
    out.mkdir()
    save_tokenizer(tokenizer, out, fmt)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (internlm3_folder / name).read_bytes()
    tokenizer.add_tokens(["<new>"])
    with pytest.raises(UnsupportedModel, match="vocabulary differs"):
        save_tokenizer(tokenizer, out, fmt)


def test_a_token_id_that_contradicts_the_sentencepiece_model_is_refused(
    tmp_path: Path, processor, internlm_sentencepiece_model: bytes
) -> None:
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    config = internlm_tokenizer_config(pieces)
    config["added_tokens_decoder"]["10"] = {"content": "<|wrong|>", "special": True}
    folder = write_folder(tmp_path / "bad", internlm_sentencepiece_model, config, "internlm2")
    with pytest.raises(UnsupportedModel, match=re.escape("'<|wrong|>' has id 10")):
        load_tokenizer(folder)


def test_batch_padding_uses_the_declared_pad_token(internlm2_folder: Path) -> None:
    tokenizer = load_tokenizer(internlm2_folder)
    batch = tokenizer(["hello", "hello world again"], padding=True, return_tensors="pt")
    assert (
        batch["input_ids"].shape[0] == 2
        and int(batch["attention_mask"][0].sum()) < batch["input_ids"].shape[1]
    )
    assert torch.all(batch["input_ids"][0][batch["attention_mask"][0] == 0] == tokenizer.pad_token_id)
