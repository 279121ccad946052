"""vLLM's engine configuration for a model folder, from puyu's engine settings where vLLM has them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from vllm import AsyncEngineArgs
from vllm.config import VllmConfig
from vllm.usage.usage_lib import UsageContext

from services.inference_gateway.core.sampling import InvalidRequest

log = logging.getLogger(__name__)


def engine_config(
    path: Path,
    name: str,
    *,
    max_batch_size: int = 16,
    block_size: int = 16,
    num_blocks: int | None = None,
    max_step_tokens: int = 256,
    prefix_caching: bool = True,
    dtype: str = "auto",
    kv_cache_dtype: str = "auto",
    kv_cache_memory: int | None = None,
    vllm_args: dict[str, Any] | None = None,
    **ignored: Any,
) -> VllmConfig:
    """vLLM's configuration for the model folder ``path``, with puyu's engine settings where vLLM has them.

    ``max_batch_size`` is vLLM's ``max_num_seqs``; ``max_step_tokens`` its ``max_num_batched_tokens``,
    raised to the context (vLLM needs a whole prompt's worth per step); ``prefix_caching`` its own;
    ``kv_cache_dtype`` auto or fp8 (e4m3; vLLM has no int8 KV cache: refused). The KV cache takes
    ``kv_cache_memory`` bytes, or ``num_blocks`` of ``block_size`` tokens, when given; else, on the
    CPU, where vLLM would take most of the memory, room for a full batch at 2048 tokens as puyu's
    engine has (VLLM_CPU_KVCACHE_SPACE goes first); on a GPU, ``gpu_memory_utilization`` 0.45, so
    that two versions fit during a switch. ``vllm_args``: more ``AsyncEngineArgs`` (e.g.
    ``tensor_parallel_size``, ``enforce_eager``), which win over all of the above.
    """
    extra = dict(vllm_args or {})
    unknown = sorted(set(extra) - set(AsyncEngineArgs.__dataclass_fields__))
    if unknown:
        raise InvalidRequest(f"PUYU_WORKER_VLLM_ARGS: not vLLM engine arguments: {', '.join(unknown)}")
    if kv_cache_dtype not in ("auto", "fp8"):
        raise InvalidRequest(f"vLLM has no {kv_cache_dtype} KV cache: use auto or fp8 with vLLM")
    if ignored:
        log.info("vLLM engine %s: puyu engine settings vLLM has no use for: %s", name, sorted(ignored))
    # vLLM's CPU build pins its OpenMP threads to cores unless told not to; a host runs several
    # workers, and a switch two engines in one worker, which would all be pinned to the same cores
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    args: dict[str, Any] = {
        "model": str(path),
        "served_model_name": name,
        "dtype": dtype,
        "kv_cache_dtype": kv_cache_dtype,
        "max_num_seqs": max_batch_size,
        "enable_prefix_caching": prefix_caching,
        "disable_log_stats": True,  # its own loggers off; ours (stats.LoadLogger) still gets the stats
        **({"kv_cache_memory_bytes": int(kv_cache_memory)} if kv_cache_memory is not None else {}),
        **extra,
    }
    config = AsyncEngineArgs(**args).create_engine_config(UsageContext.ENGINE_CONTEXT)
    if "max_num_batched_tokens" not in extra:
        config.scheduler_config.max_num_batched_tokens = max(
            max_step_tokens, config.model_config.max_model_len
        )
    if "structured_outputs_config" not in extra:
        # JSON without free whitespace between tokens, as puyu's guide compiles a schema (else a
        # small model fills max_tokens with blanks); vLLM's separators are "," and ":"
        config.structured_outputs_config.disable_any_whitespace = True
    cache = config.cache_config
    sized = cache.kv_cache_memory_bytes is not None or os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    if not sized and num_blocks is not None:
        cache.kv_cache_memory_bytes = kv_cache_bytes(config, num_blocks * block_size)
    elif not sized and config.device_config.device_type == "cpu":
        longest = min(config.model_config.max_model_len, 2048)  # as puyu's engine sizes its cache
        tokens = max_batch_size * (longest + block_size)
        cache.kv_cache_memory_bytes = kv_cache_bytes(config, tokens)
    elif not sized and "gpu_memory_utilization" not in extra:
        cache.gpu_memory_utilization = 0.45
    return config


def kv_cache_bytes(config: Any, tokens: int) -> int:
    """Bytes of a KV cache holding ``tokens`` tokens of this model (keys and values, every layer)."""
    model = config.model_config
    itemsize = 1 if str(config.cache_config.cache_dtype).startswith("fp8") else model.dtype.itemsize
    per_token = (
        2
        * model.get_num_layers(config.parallel_config)
        * model.get_num_kv_heads(config.parallel_config)
        * model.get_head_size()
        * itemsize
    )
    return tokens * per_token
