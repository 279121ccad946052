"""One loader for Hugging Face model folders, for every service that opens one.

    model, fmt = load_causal_lm(path, dtype="auto", device="cpu")   # (PreTrainedModel, ModelFormat)
    tokenizer = load_tokenizer(path)
    save_in_format(model, tokenizer, out_dir, fmt)                  # the layout the folder came in

Supported ``model_type``s: llama (rope scaling included), mistral, qwen2 (Qwen2/2.5), qwen3,
qwen2_moe, mixtral, which transformers implements and loads as they are; and internlm2
(InternLM2/2.5) and internlm3, whose folders ship their modeling code. Those are read without
running that code: config and weights are mapped onto ``LlamaForCausalLM`` in memory (see
``internlm2`` and ``internlm3``) and mapped back by ``save_in_format``, so a model fine-tuned or
trained further from an InternLM folder is saved as one that InternLM's own code loads. Their
SentencePiece tokenizers are read the same way (``tokenizer``). ``trust_remote_code=True`` runs the
folder's own code instead (off by default). Any other ``model_type`` is refused with
``UnsupportedModel`` (a ``shared.errors.Refusal``) naming it.

``dtype``: a ``torch.dtype`` or ``auto|bfloat16|float16|float32``; ``auto`` is the checkpoint's
dtype on CUDA and, on the CPU, bf16 where the processor multiplies bf16 natively, else fp32.
"""

from shared.hf_models.formats import SUPPORTED_TYPES, ModelFormat, UnsupportedModel, resolve_dtype
from shared.hf_models.loader import detect_format, load_causal_lm, save_in_format
from shared.hf_models.tokenizer import load_tokenizer

__all__ = [
    "SUPPORTED_TYPES",
    "ModelFormat",
    "UnsupportedModel",
    "detect_format",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_dtype",
    "save_in_format",
]
