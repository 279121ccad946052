"""Convert a Hugging Face folder to GGUF with llama.cpp's own ``convert_hf_to_gguf.py``.

Run with the peers' venv (``.venv-vllm``: torch, transformers, numpy) and the llama.cpp tree that
``install.sh`` unpacked. The benchmark's tokenizers are byte-level BPEs trained on GSM8K questions;
the converter recognizes a BPE pre-tokenizer only by the hash of published tokenizers, so it is told
what ours is: GPT-2's (``pre_tokenizers.ByteLevel`` splits with GPT-2's regex).

    .venv-vllm/bin/python benchmarks/peers/convert_gguf.py LLAMA_CPP_DIR MODEL_DIR --outtype f32 \
        --outfile X.gguf
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


def main() -> None:
    llama_cpp = sys.argv[1]
    sys.path.insert(0, llama_cpp)
    # first the script's module: it puts its own gguf-py on sys.path, which its conversion package needs
    convert_hf_to_gguf = importlib.import_module("convert_hf_to_gguf")
    conversion = importlib.import_module("conversion")

    def gpt2_pre_tokenizer(self: Any, tokenizer: Any) -> str:
        return "gpt-2"

    conversion.base.TextModel.get_vocab_base_pre = gpt2_pre_tokenizer
    sys.argv = [f"{llama_cpp}/convert_hf_to_gguf.py", *sys.argv[2:]]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
