"""Tokenizers of model folders, SentencePiece ones (InternLM's) read without their remote code.

InternLM folders ship a SentencePiece ``tokenizer.model`` and a Python tokenizer class to run as
remote code. That class splits the text at the special tokens of ``tokenizer_config.json`` and runs
SentencePiece on each piece between them; the fast tokenizer built here does the same with the
``tokenizers`` library: transformers' SentencePiece conversion (the model's normalizer settings,
BPE merges ranked by piece score, byte fallback, a dummy prefix per piece between special tokens),
read with protobuf, so neither the folder's code nor the ``sentencepiece`` package is needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

from shared.hf_models.formats import CONVERTED_TYPES, ModelFormat, UnsupportedModel

SENTENCEPIECE_FILE = "tokenizer.model"
# What the original tokenizer classes of these families read; copied as they are when saving.
_SENTENCEPIECE_FILES = (
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
_BPE, _UNIGRAM = 2, 1  # sentencepiece's TrainerSpec.ModelType


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The folder's tokenizer: InternLM's from its SentencePiece model, any other through AutoTokenizer."""
    folder = Path(path)
    if not trust_remote_code and _is_sentencepiece_family(folder):
        return sentencepiece_tokenizer(folder)
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


def _is_sentencepiece_family(folder: Path) -> bool:
    if not (folder / SENTENCEPIECE_FILE).is_file():
        return False
    config_file = folder / "config.json"
    model_type = (
        json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        if config_file.is_file()
        else None
    )
    tokenizer_class = str(_tokenizer_config(folder).get("tokenizer_class") or "")
    return model_type in CONVERTED_TYPES or tokenizer_class.startswith(
        ("InternLM2Tokenizer", "InternLM3Tokenizer")
    )


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    file = folder / "tokenizer_config.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def _content(token: Any) -> str | None:
    """A token as ``tokenizer_config.json`` writes it: a string or an AddedToken dict."""
    if token is None or isinstance(token, str):
        return token
    return str(token["content"])


def sentencepiece_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A fast tokenizer over ``folder/tokenizer.model`` with the special tokens of its tokenizer config."""
    proto = import_protobuf().ModelProto()
    proto.ParseFromString((folder / SENTENCEPIECE_FILE).read_bytes())
    pieces = [piece.piece for piece in proto.pieces]
    kind = proto.trainer_spec.model_type
    if kind == _BPE:
        vocab: Any = {piece: i for i, piece in enumerate(pieces)}
    elif kind == _UNIGRAM:
        vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    else:
        raise UnsupportedModel(
            f"{folder / SENTENCEPIECE_FILE}: SentencePiece model type {kind} is not BPE or unigram"
        )
    # legacy=True: every piece of text between special tokens gets its own dummy prefix, as when the
    # original class calls SentencePiece once per piece.
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto=proto, vocab=vocab, legacy=True)
    if backend is None:
        raise UnsupportedModel(f"{folder / SENTENCEPIECE_FILE} could not be converted")

    config = _tokenizer_config(folder)
    declared = {int(i): spec for i, spec in (config.get("added_tokens_decoder") or {}).items()}
    for token_id, spec in sorted(declared.items()):
        token = AddedToken(
            spec["content"],
            single_word=spec.get("single_word", False),
            lstrip=spec.get("lstrip", False),
            rstrip=spec.get("rstrip", False),
            normalized=spec.get("normalized", False),
            special=spec.get("special", True),
        )
        if token_id < len(pieces) and pieces[token_id] != token.content:
            raise UnsupportedModel(
                f"{folder}: added token {token.content!r} has id {token_id}, which the SentencePiece model "
                f"gives to {pieces[token_id]!r}"
            )
        next_id = backend.get_vocab_size(with_added_tokens=True)
        if token_id >= len(pieces) and token_id != next_id:
            raise UnsupportedModel(
                f"{folder}: added token {token.content!r} has id {token_id}, expected {next_id}"
            )
        if token.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        if backend.token_to_id(token.content) != token_id:
            raise UnsupportedModel(f"{folder}: added token {token.content!r} did not get its id {token_id}")

    special = {
        name: _content(config.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    defaults = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    for name, default in defaults.items():
        if name not in config:
            special[name] = default
    extra = [_content(t) for t in config.get("additional_special_tokens") or []]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{k: v for k, v in special.items() if v is not None},
        additional_special_tokens=[t for t in extra if t],
        add_bos_token=bool(config.get("add_bos_token", True)),
        add_eos_token=bool(config.get("add_eos_token", False)),
        chat_template=config.get("chat_template"),
        model_max_length=config.get("model_max_length", int(1e30)),
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        name_or_path=str(folder),
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: Path, fmt: ModelFormat) -> None:
    """Write the tokenizer the way ``fmt``'s folder had it.

    An InternLM tokenizer is a view of the source folder's SentencePiece files, so those are copied
    (its tokenization code comes along with the modeling code); a tokenizer whose vocabulary no
    longer matches them (tokens added since) cannot be written in that layout and is refused.
    """
    source = fmt.source_dir
    if fmt.model_type in CONVERTED_TYPES and _is_sentencepiece_family(source):
        if tokenizer.get_vocab() != sentencepiece_tokenizer(source).get_vocab():
            raise UnsupportedModel(
                f"the tokenizer's vocabulary differs from {source / SENTENCEPIECE_FILE}: "
                f"it cannot be saved in the {fmt.model_type} layout"
            )
        for name in _SENTENCEPIECE_FILES:
            if (source / name).is_file() and source.resolve() != out_dir.resolve():
                shutil.copy2(source / name, out_dir / name)
        return
    tokenizer.save_pretrained(out_dir)
