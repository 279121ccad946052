"""Constrained decoding for ``response_format`` (JSON object / JSON schema) and for calls that
``tool_choice`` forces (the schema ``core.tools.plan_tools`` writes) with xgrammar.

xgrammar (the grammar engine vLLM and SGLang use) compiles a JSON schema against the tokenizer's
vocabulary once; per step a matcher fills a bitmask of the tokens that keep the output a valid
prefix, and the masked logits are sampled. Optional: without the package such requests are refused.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import torch

from services.inference_gateway.core.sampling import InvalidRequest

xgr: Any
try:
    import xgrammar as xgr
except ImportError:  # pragma: no cover - depends on the install
    xgr = None


def available() -> bool:
    return xgr is not None


class Guide:
    """One matcher per sequence: masks logits, accepts sampled tokens, says when the JSON is complete."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher = matcher
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        scores = logits[None].clone()
        self.matcher.fill_next_token_bitmask(self.bitmask)
        xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), vocab_size=self.vocab_size)
        return scores[0]

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise RuntimeError(f"token {token} broke the grammar")

    @property
    def done(self) -> bool:
        return bool(self.matcher.is_terminated())


class GuideFactory:
    """Compiles (and caches) grammars for one tokenizer."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> None:
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, eos_ids
        self._lock = threading.Lock()

    @functools.cached_property
    def _compiler(self) -> Any:
        info = xgr.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=sorted(self.eos_ids) or None
        )
        return xgr.GrammarCompiler(info, max_threads=1)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one factory per engine, bounded cache
    def _compiled(self, schema: str) -> Any:
        try:
            return self._compiler.compile_json_schema(schema, any_whitespace=False)
        except Exception as exc:
            raise InvalidRequest(
                f"invalid JSON schema in response_format or in the parameters of a forced tool: {exc}"
            ) from None

    def guide(self, schema: str) -> Guide:
        if xgr is None:
            raise InvalidRequest(
                "response_format and forced tool calls need the xgrammar package (pip install xgrammar)"
            )
        with self._lock:  # compile once, from the engine thread or a request
            compiled = self._compiled(schema)
        return Guide(xgr.GrammarMatcher(compiled), self.vocab_size)
