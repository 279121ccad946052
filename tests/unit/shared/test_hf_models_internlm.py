"""InternLM2 / InternLM3 folders through puyu's loader, against the original modeling code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shared.errors import Refusal
from shared.hf_models import UnsupportedModel, load_causal_lm, load_tokenizer, save_in_format, weights
from tests.support.hf_folders import build_original, internlm_tokenizer_config, load_original

ATOL = 2e-5  # fp32; observed differences are ~5e-6 on logits of magnitude ~6

INTERNLM2 = {
    "model_type": "internlm2",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000,
    "bias": False,
    "tie_word_embeddings": False,
    "attn_implementation": "eager",
    "pad_token_id": 2,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}
INTERNLM3 = {
    "model_type": "internlm3",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 24,  # not hidden_size / heads, as InternLM3 allows
    "max_position_embeddings": 32,
    "rms_norm_eps": 1e-5,
    "rope_theta": 50000000,
    "qkv_bias": False,
    "bias": False,
    "tie_word_embeddings": False,
    "pad_token_id": 2,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}

CASES = {
    "internlm2-gqa-dynamic": {**INTERNLM2, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "internlm2-mha-bias-linear": {
        **INTERNLM2,
        "num_key_value_heads": 8,
        "bias": True,
        "rope_scaling": {"type": "linear", "factor": 3.0},
    },
    "internlm2-plain": {**INTERNLM2, "rope_scaling": None},
    "internlm3-dynamic": {**INTERNLM3, "rope_scaling": {"rope_type": "dynamic", "factor": 6.0}},
    "internlm3-bias-linear": {
        **INTERNLM3,
        "qkv_bias": True,
        "bias": True,
        "rope_scaling": {"type": "linear", "factor": 2.0},
    },
}
ROTARY = {"dynamic": "Dynamic", "linear": "Linear"}


def original_greedy(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding the plain way (the whole sequence every step), as the original code runs without a cache."""
    ids = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


def assert_reference_uses_scaling(reference: torch.nn.Module, config: dict) -> None:
    """The reference must really run the configured rope scaling, or the comparison proves little."""
    scaling = config.get("rope_scaling")
    if config["model_type"] == "internlm2":
        rotary = type(reference.model.layers[0].attention.rotary_emb).__name__
        assert (ROTARY[scaling["type"]] in rotary) if scaling else rotary == "InternLM2RotaryEmbedding"
    elif scaling:
        assert reference.model.rotary_emb.rope_type == scaling.get("rope_type", scaling.get("type"))


@pytest.fixture(params=sorted(CASES))
def original_folder(
    request: pytest.FixtureRequest, tmp_path: Path, xtuner_modelings: Path
) -> tuple[Path, dict]:
    config = CASES[request.param]
    return build_original(tmp_path / request.param, xtuner_modelings, config, seed=7), config


def test_logits_and_greedy_tokens_match_the_original_code(original_folder: tuple[Path, dict]) -> None:
    folder, config = original_folder
    reference = load_original(folder)
    assert_reference_uses_scaling(reference, config)
    model, fmt = load_causal_lm(folder, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM" and fmt.converted and not fmt.remote_code
    assert fmt.model_type == config["model_type"]

    ids = torch.randint(3, 512, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # Increasing lengths, past max_position_embeddings (32): the original keeps a grown dynamic
        # base for later shorter inputs, so a fresh reference sees each length in order.
        for length in (5, 31, 32, 33, 48):
            expected = reference(ids[:, :length], use_cache=False).logits
            got = model(ids[:, :length]).logits
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)

    reference = load_original(folder)
    prompt = ids[:, :9]
    # Within the trained length the KV cache changes nothing: puyu's model decodes with it.
    expected = original_greedy(reference, prompt, 16)
    got = model.generate(prompt, max_new_tokens=16, do_sample=False, min_new_tokens=16, pad_token_id=0)
    assert torch.equal(got, expected)
    # Past it, a dynamic base changes with the length: both recompute the whole sequence.
    reference = load_original(folder)
    expected = original_greedy(reference, ids[:, :28], 12)
    got = model.generate(
        ids[:, :28], max_new_tokens=12, min_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0
    )
    assert torch.equal(got, expected)


def test_saved_in_format_the_original_code_loads_it(
    original_folder: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = original_folder
    model, fmt = load_causal_lm(folder, dtype=torch.float32)
    out = save_in_format(model, None, tmp_path / "saved", fmt)

    saved_config = json.loads((out / "config.json").read_text())
    source_config = json.loads((folder / "config.json").read_text())
    # Every field of the source kept as it was (defaults it left out may now be spelled out).
    assert {k: saved_config.get(k) for k in source_config if k != "torch_dtype"} == {
        k: v for k, v in source_config.items() if k != "torch_dtype"
    }
    assert saved_config["torch_dtype"] == "float32"
    saved, source = load_file(str(out / "model.safetensors")), load_file(str(folder / "model.safetensors"))
    assert saved.keys() == source.keys()
    for name, tensor in source.items():
        assert torch.equal(saved[name].to(tensor.dtype), tensor), name

    ids = torch.randint(3, 512, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            load_original(out)(ids, use_cache=False).logits,
            load_original(folder)(ids, use_cache=False).logits,
            atol=0,
            rtol=0,
        )


def test_half_precision_load_keeps_the_checkpoint_names_and_shapes(
    original_folder: tuple[Path, dict],
) -> None:
    folder, _ = original_folder
    model, _ = load_causal_lm(folder, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    reference = load_original(folder)
    ids = torch.randint(3, 512, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model(ids).logits.float()
        expected = reference(ids, use_cache=False).logits
    # bf16 weights and activations: a loose bound, but tight enough to catch a wrong mapping.
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


def test_opt_in_remote_code_runs_the_folders_own_classes(
    original_folder: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, config = original_folder
    model, fmt = load_causal_lm(folder, dtype=torch.float32, trust_remote_code=True)
    assert fmt.remote_code and not fmt.converted
    assert (
        type(model).__name__
        == {"internlm2": "InternLM2ForCausalLM", "internlm3": "InternLM3ForCausalLM"}[config["model_type"]]
    )
    ids = torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = load_original(folder)(ids, use_cache=False).logits
        torch.testing.assert_close(model(ids, use_cache=False).logits, expected, atol=ATOL, rtol=0)
        out = save_in_format(model, None, tmp_path / "saved", fmt)
        torch.testing.assert_close(
            load_original(out)(ids, use_cache=False).logits, expected, atol=ATOL, rtol=0
        )


def test_sharded_and_pickled_checkpoints_load_alike(
    original_folder: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = original_folder
    state = load_file(str(folder / "model.safetensors"))
    sharded, pickled = tmp_path / "sharded", tmp_path / "pickled"
    for target in (sharded, pickled):
        shutil.copytree(folder, target)
        (target / "model.safetensors").unlink()
    monkeypatch.setattr(weights, "MAX_SHARD_BYTES", 40_000)
    assert len(weights.write_safetensors(state, sharded)) > 2
    names = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for file_name, part in halves.items():
        torch.save({name: state[name] for name in part}, pickled / file_name)
    weight_map = {name: file_name for file_name, part in halves.items() for name in part}
    (pickled / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))

    ids = torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = load_causal_lm(folder, dtype=torch.float32)[0](ids).logits
        for target in (sharded, pickled):
            assert torch.equal(load_causal_lm(target, dtype=torch.float32)[0](ids).logits, expected)


def test_internlm3_with_different_bias_switches_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**INTERNLM3, "qkv_bias": True, "bias": False}))
    with pytest.raises(UnsupportedModel, match="qkv_bias=True and bias=False"):
        load_causal_lm(folder, dtype=torch.float32)


def test_unknown_internlm2_rope_scaling_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({**INTERNLM2, "rope_scaling": {"type": "yarn", "factor": 2.0}})
    )
    with pytest.raises(Refusal, match="internlm2 rope_scaling type 'yarn'"):
        load_causal_lm(folder, dtype=torch.float32)


def test_chat_prompt_through_tokenizer_and_model_matches_the_original(
    tmp_path: Path, xtuner_modelings: Path, internlm_sentencepiece_model: bytes, sentencepiece
) -> None:
    """A whole folder as users bring it: weights, SentencePiece tokenizer, special tokens, chat template."""
    folder = build_original(tmp_path / "chat", xtuner_modelings, CASES["internlm2-gqa-dynamic"], seed=11)
    (folder / "tokenizer.model").write_bytes(internlm_sentencepiece_model)
    processor = sentencepiece.SentencePieceProcessor(model_proto=internlm_sentencepiece_model)
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**internlm_tokenizer_config(pieces), "tokenizer_class": "InternLM2Tokenizer"})
    )

    tokenizer = load_tokenizer(folder)
    model, fmt = load_causal_lm(folder, dtype=torch.float32)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 plus 30?"}], tokenize=False)
    assert text == "<|im_start|>user\nWhat is 12 plus 30?<|im_end|>\n"
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    assert ids[0, 0] == processor.bos_id() and processor.piece_to_id("<|im_start|>") == ids[0, 1]
    got = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(got, original_greedy(load_original(folder), ids, 8))

    out = save_in_format(model, tokenizer, tmp_path / "saved", fmt)
    assert (out / "tokenizer.model").read_bytes() == internlm_sentencepiece_model
    assert load_tokenizer(out)(text)["input_ids"] == ids[0].tolist()
