"""The inference engine: continuous batching over a paged KV cache, one model per ``Engine``."""

from services.inference_gateway.core.engine.bridge import EngineClosed
from services.inference_gateway.core.engine.engine import Engine
from services.inference_gateway.core.engine.output import Completion, Delta, TokenLogprob
from services.inference_gateway.core.engine.sequence import Request

__all__ = ["Completion", "Delta", "Engine", "EngineClosed", "Request", "TokenLogprob"]
