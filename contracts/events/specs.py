"""What a request asks for: the options of ingest and dedup, the model and training specs, the pipeline
that a corpus request carries through ingest, dedup and training.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from contracts.events.common import StrictModel


class IngestOptions(StrictModel):
    languages: list[str] = Field(default_factory=lambda: ["en", "zh"], description="ISO 639-1 codes to keep.")
    min_language_score: float = Field(default=0.5, ge=0, le=1)
    min_words: int = Field(default=5, ge=0)
    max_words: int = Field(default=100_000, ge=1)
    min_mean_word_length: float = Field(default=2.0, ge=0)
    max_mean_word_length: float = Field(default=12.0, ge=0)
    max_symbol_ratio: float = Field(default=0.1, ge=0, le=1)
    max_duplicate_line_fraction: float = Field(default=0.3, ge=0, le=1)
    min_alpha_fraction: float = Field(default=0.6, ge=0, le=1)
    shard_docs: int = Field(default=10_000, ge=1, description="Documents per output shard.")
    filters: list[Literal["url", "gopher_quality", "gopher_repetition", "c4", "fineweb", "safety"]] = Field(
        default=["url", "gopher_quality", "safety"],
        description="Filter stages to run (language identification always runs); web crawls add "
        "gopher_repetition, c4 and fineweb (they remove dialogue and code-like documents).",
    )
    max_bullet_line_fraction: float = Field(default=0.9, ge=0, le=1)
    max_ellipsis_line_fraction: float = Field(default=0.3, ge=0, le=1)
    max_duplicate_paragraph_fraction: float = Field(default=0.3, ge=0, le=1)
    max_duplicate_line_char_fraction: float = Field(default=0.2, ge=0, le=1)
    max_duplicate_paragraph_char_fraction: float = Field(default=0.2, ge=0, le=1)
    c4_min_sentences: int = Field(default=5, ge=0)
    fineweb_min_line_punct_fraction: float = Field(default=0.12, ge=0, le=1)
    fineweb_max_short_line_fraction: float = Field(default=0.67, ge=0, le=1)
    fineweb_max_char_dup_fraction: float = Field(default=0.01, ge=0, le=1)
    fineweb_max_newline_word_ratio: float = Field(default=0.3, ge=0)
    blocked_domains: list[str] = Field(default_factory=list, description="Domains (and subdomains) to drop.")
    blocked_url_substrings: list[str] = Field(default_factory=list)
    safety_keywords: list[str] | None = Field(default=None, description="None: the built-in list.")
    max_safety_keyword_hits: int = Field(default=2, ge=0)
    output_format: Literal["jsonl.gz", "jsonl.zst", "parquet"] = Field(
        default="jsonl.gz", description="Format of the output shards (the manifest records it)."
    )


class DedupOptions(StrictModel):
    exact: bool = True
    near: bool = True
    shingle_size: int = Field(default=5, ge=1)
    bands: int = Field(default=14, ge=1)
    rows: int = Field(default=8, ge=1)
    jaccard_threshold: float = Field(default=0.8, ge=0, le=1)
    seed: int = 1
    paragraph_dedup: bool = Field(
        default=False, description="Drop paragraphs already seen in an earlier document (keeps the first)."
    )
    line_dedup: bool = Field(default=False, description="Drop lines already seen in an earlier document.")
    min_span_chars: int = Field(default=50, ge=1, description="Shorter lines/paragraphs are never dropped.")
    against_indexes: list[str] = Field(
        default_factory=list,
        description="Folders/URIs of earlier dedup outputs: their persisted index removes matches too.",
    )
    output_format: Literal["jsonl.gz", "jsonl.zst", "parquet"] | None = Field(
        default=None,
        description="Format of the output shards; None: that of the input (zstd or Parquet when every "
        "input shard is, else gzip).",
    )


class ModelArchitecture(StrictModel):
    """A Llama-family decoder (grouped-query attention, RoPE, RMSNorm, SwiGLU)."""

    hidden_size: int = Field(default=192, ge=8)
    intermediate_size: int = Field(default=512, ge=8)
    num_hidden_layers: int = Field(default=4, ge=1)
    num_attention_heads: int = Field(default=6, ge=1)
    num_key_value_heads: int = Field(default=2, ge=1)
    max_position_embeddings: int = Field(default=512, ge=16)
    rope_theta: float = Field(default=10_000.0, gt=0)
    vocab_size: int = Field(default=2048, ge=64, description="Tokenizer vocabulary size when one is trained.")
    tie_word_embeddings: bool = True
    rope_scaling: dict[str, Any] | None = Field(
        default=None,
        description="HF rope_parameters beyond rope_theta, e.g. {'rope_type': 'linear', 'factor': 2.0}.",
    )

    @field_validator("num_key_value_heads")
    @classmethod
    def _kv_divides(cls, v: int, info: Any) -> int:
        heads = info.data.get("num_attention_heads")
        if heads and heads % v:
            raise ValueError(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({v})")
        return v

    @field_validator("num_attention_heads")
    @classmethod
    def _heads_divide(cls, v: int, info: Any) -> int:
        hidden = info.data.get("hidden_size")
        if hidden and hidden % v:
            raise ValueError(f"hidden_size ({hidden}) must be divisible by num_attention_heads ({v})")
        return v


class TrainSpec(StrictModel):
    model_name: str = Field(default="puyu-demo", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
    architecture: ModelArchitecture = Field(default_factory=ModelArchitecture)
    tokenizer_uri: str | None = Field(
        default=None, description="Existing HF tokenizer folder; else train BPE."
    )
    init_from: str | None = Field(
        default=None,
        description=(
            "Continued pretraining: the path or artifact URI of a model folder of any supported "
            "architecture (llama, mistral, qwen2, qwen3, qwen2_moe, mixtral, internlm2, internlm3). "
            "Training starts from its weights with its tokenizer (tokenizer_uri must be unset) and "
            "checkpoints are saved in its format. architecture fields left at their defaults take the "
            "checkpoint's values; any other value must equal the checkpoint's."
        ),
    )
    seq_len: int = Field(default=128, ge=8)
    micro_batch_size: int = Field(default=16, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_steps: int = Field(default=200, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    min_learning_rate: float = Field(default=3e-4, ge=0)
    warmup_steps: int = Field(default=15, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    checkpoint_interval: int = Field(
        default=0, ge=0, description="Steps between checkpoints; 0: only at the end."
    )
    seed: int = 1234
    num_threads: int | None = Field(default=None, ge=1)
    lr_schedule: Literal["cosine", "wsd"] = Field(
        default="cosine",
        description="After warm-up: cosine to min_learning_rate, or WSD (stable, then decay).",
    )
    decay_fraction: float = Field(default=0.2, gt=0, le=1, description="WSD: share of the steps that decay.")
    global_batch_size: int | None = Field(
        default=None, ge=1, description="Sequences per optimizer step over all ranks; sets the accumulation."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Train this many tokens (overrides max_steps)."
    )
    eval_interval: int = Field(
        default=0, ge=0, description="Steps between held-out loss evaluations; 0: none."
    )
    eval_fraction: float = Field(default=0.02, ge=0, lt=0.5, description="Share of documents held out.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description=(
            "bf16 is autocast with fp32 master weights. auto: bf16 on CUDA and, without ZeRO, on CPUs with "
            "native bf16 matmul (AVX512-BF16 or AMX); else fp32."
        ),
    )
    zero_stage: int = Field(
        default=0, ge=0, le=3, description="0: plain torch (DDP if distributed); 1-3: ZeRO."
    )
    activation_checkpointing: bool = False
    torch_compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "torch.compile the model (fuses norms, rotary, SwiGLU and the loss; costs a one-off compile). "
            "auto: on for CPU runs of at least 500 steps without ZeRO when a C++ compiler is present."
        ),
    )
    document_attention: bool = Field(
        default=True, description="Packed documents attend only within themselves (position ids restart)."
    )

    @field_validator("seq_len")
    @classmethod
    def _fits_positions(cls, v: int, info: Any) -> int:
        arch = info.data.get("architecture")
        if info.data.get("init_from"):  # the checkpoint's own length applies (checked by the trainer)
            return v
        if arch is not None and v > arch.max_position_embeddings:
            raise ValueError(
                f"seq_len ({v}) exceeds the model's max_position_embeddings ({arch.max_position_embeddings})"
            )
        return v


class PipelineSpec(StrictModel):
    """What to do after the corpus is ready: carried through ingest and dedup (event-driven automation)."""

    dedup: DedupOptions = Field(default_factory=DedupOptions)
    train: TrainSpec | None = None


class LoraSpec(StrictModel):
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class FinetuneSpec(StrictModel):
    method: Literal["lora", "qlora", "full", "dpo"] = Field(
        default="lora",
        description="A service refuses, with the reason, a method its build or machine cannot run.",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    max_steps: int = Field(default=60, ge=1)
    micro_batch_size: int = Field(default=8, ge=1)
    seq_len: int = Field(default=256, ge=8)
    learning_rate: float = Field(default=2e-3, gt=0)
    seed: int = 1234
    data_format: Literal["auto", "openai", "alpaca", "xtuner", "text", "preference"] = Field(
        default="auto", description="Dataset record format; auto detects it from the first record."
    )
    packing: bool = Field(default=True, description="Pack short examples into full seq_len sequences.")
    gradient_checkpointing: bool = False
    dpo_beta: float = Field(default=0.1, gt=0, description="DPO: strength of the pull to the reference.")
    checkpoint_interval: int = Field(default=0, ge=0, description="Save resumable state every N steps.")
    zero_stage: int = Field(
        default=0,
        ge=0,
        le=3,
        description="0: plain torch; 1-3: DeepSpeed ZeRO (optimizer state, + gradients, + parameters).",
    )


class QuantizeSpec(StrictModel):
    """Weight quantisation of a registered version (``quantize.requested``, ``puyu quantize``).

    AWQ and GPTQ read calibration text (the request's ``calibration_uri``): it is tokenised, joined and
    cut into ``calibration_samples`` sequences of ``calibration_seq_len`` tokens, as AutoAWQ does.
    """

    method: Literal["rtn", "awq", "gptq"] = Field(
        default="awq",
        description="rtn: round to nearest; awq: activation-aware scales; gptq: error-compensating.",
    )
    bits: Literal[4, 8] = 4
    group_size: int = Field(
        default=128,
        ge=-1,
        description="Input channels sharing one scale and zero; -1: one group per output row.",
    )
    sym: bool = Field(default=False, description="gptq only: a fixed zero point at the grid's middle.")
    desc_act: bool = Field(default=False, description="gptq only: act-order (columns by decreasing Hessian).")
    calibration_samples: int = Field(default=128, ge=1, le=1024)
    calibration_seq_len: int = Field(default=512, ge=16, le=4096)


__all__ = [
    "IngestOptions",
    "DedupOptions",
    "ModelArchitecture",
    "TrainSpec",
    "PipelineSpec",
    "LoraSpec",
    "FinetuneSpec",
    "QuantizeSpec",
]
