"""Output processing: from sampled tokens to the ``Delta``s a caller receives.

Detokenizes incrementally (only a short window of tokens per step, as vLLM does), collects logprobs
(of sampled tokens and, when asked, of the prompt), ends a sequence on an end-of-sequence token, a
stop string, a complete guided JSON or its token limit, and never streams text that could still turn
out to be part of a stop string. As in vLLM, ``ignore_eos`` runs past end-of-sequence tokens,
``min_tokens`` holds off EOS (masked when sampling) and stop strings until that many tokens, and
``max_tokens`` 0 ends a sequence once its prompt is computed (scoring only: prompt logprobs, no token).
A token of ``stop_token_ids`` ends it as vLLM does: counted among the generated tokens, left out of the
text, even with ``ignore_eos``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from services.inference_gateway.core.engine.sequence import Sequence
from services.inference_gateway.core.model_runner import Chunk


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """A piece of a request's output: new text; the last one has ``finish_reason`` set."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None  # stop | length | cancelled | error
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens generated since the previous delta
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # once, on the first delta
    cached_tokens: int = 0
    prompt_first_token: str | None = None  # with prompt logprobs: the first prompt token (it has none)
    worker: str = ""  # the instance that generated it (set by the router)
    prompt_text: str | None = None  # with echo: the prompt decoded from its tokens, on the first delta


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


class Finish(NamedTuple):
    """A sequence is done: why, and its final text (None: detokenize what it generated)."""

    reason: str
    text: str | None = None


def completion_of(deltas: list[Delta]) -> Completion:
    """The whole output of a request from all its deltas; RuntimeError when it failed."""
    last = deltas[-1]
    assert last.finish_reason is not None
    if last.finish_reason == "error":
        raise RuntimeError(last.error or "generation failed")
    prompt_logprobs = next((d.prompt_logprobs for d in deltas if d.prompt_logprobs is not None), None)
    return Completion(
        "".join(d.text for d in deltas),
        last.finish_reason,
        last.prompt_tokens,
        last.completion_tokens,
        [lp for d in deltas for lp in d.logprobs],
        prompt_logprobs,
    )


class OutputProcessor:
    def __init__(self, tokenizer: Any, eos_ids: set[int], max_positions: int) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_positions = max_positions

    def record_prompt_logprobs(self, seq: Sequence, chunk: Chunk, logits: torch.Tensor) -> None:
        """Logprobs of the prompt tokens that follow each token of ``chunk`` (``logits``: one row per token)."""
        assert seq.prompt_logprobs is not None
        logprobs = torch.log_softmax(logits, dim=-1)
        top = seq.request.params.logprobs or 0
        for i in range(len(chunk.tokens)):
            following = chunk.start + i + 1
            if following < seq.num_prompt_tokens:
                seq.prompt_logprobs.append(self.token_logprob(logprobs[i], seq.token_ids[following], top))

    def token_logprob(self, logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
        alternatives: tuple[tuple[str, float], ...] = ()
        if top:
            values, ids = torch.topk(logprobs, min(top, logprobs.numel()))
            alternatives = tuple(
                (self.tokenizer.decode([int(t)]), float(v))
                for v, t in zip(values.tolist(), ids.tolist(), strict=True)
            )
        return TokenLogprob(token, self.tokenizer.decode([token]), float(logprobs[token]), alternatives)

    def detokenize(self, seq: Sequence, flush: bool = False) -> str:
        """The output text, decoding only the tokens since the last complete character (as vLLM does).

        Without ``flush`` a window that ends in an incomplete character waits for the next token.
        """
        generated_from = seq.num_prompt_tokens
        window_start = generated_from + seq.prefix_offset
        skip = seq.request.params.skip_special_tokens
        prefix = self.tokenizer.decode(
            seq.token_ids[window_start : generated_from + seq.read_offset], skip_special_tokens=skip
        )
        full = self.tokenizer.decode(seq.token_ids[window_start:], skip_special_tokens=skip)
        if len(full) > len(prefix) and (flush or not full.endswith("\ufffd")):
            seq.output_text += full[len(prefix) :]
            seq.prefix_offset, seq.read_offset = seq.read_offset, len(seq.token_ids) - generated_from
        return seq.output_text

    def process_token(self, seq: Sequence, logits: torch.Tensor, token: int) -> Finish | None:
        """Take the token sampled for ``seq`` from ``logits``: emit the text safe to emit, or say it is done."""
        params = seq.request.params
        if params.max_tokens == 0:  # scoring only: the prompt is computed, nothing is generated
            return Finish("length", "")
        if params.logprobs is not None:
            seq.pending_logprobs.append(
                self.token_logprob(torch.log_softmax(logits, dim=-1), token, params.logprobs)
            )
        # before min_tokens EOS is masked when sampling (engine loop); this check is what ends the rest
        if token in self.eos_ids and not params.ignore_eos and seq.num_generated >= params.min_tokens:
            return Finish("stop")
        if token in params.stop_token_ids and seq.num_generated >= params.min_tokens:
            text = self.detokenize(seq, flush=True) if seq.num_generated else ""
            seq.token_ids.append(token)
            return Finish("stop", text)
        seq.token_ids.append(token)
        text = self.detokenize(seq)
        if seq.guide is not None and seq.guide.done:  # the JSON is complete
            return Finish("stop", self.detokenize(seq, flush=True))
        stops_apply = params.stop and seq.num_generated > params.min_tokens
        stop_at = seq.stop_checker.find_stop(text) if stops_apply else None
        if stop_at is not None:
            return Finish("stop", text[:stop_at])
        if seq.num_generated >= params.max_tokens or len(seq.token_ids) >= self.max_positions:
            return Finish("length", self.detokenize(seq, flush=True))
        piece = seq.stop_checker.delta(text, seq.stop_checker.safe_end(text))
        if piece or not seq.sent_first_delta:
            self.emit(seq, piece)
        return None

    def final_text(self, seq: Sequence, reason: str, text: str | None) -> str:
        """The last piece of text of a finished sequence (``text``: its whole output, when already known)."""
        if text is None:
            text = self.detokenize(seq, flush=True) if seq.num_generated else ""
        return seq.stop_checker.delta(text, len(text)) if reason in ("stop", "length") else ""

    def emit(
        self, seq: Sequence, text: str, finish_reason: str | None = None, error: str | None = None
    ) -> None:
        """Send ``seq``'s caller a delta: the text, the logprobs since the last one, the prompt's on the first."""
        prompt_logprobs, prompt_first_token, prompt_text = None, None, None
        if not seq.sent_first_delta and seq.prompt_logprobs is not None:
            prompt_logprobs = tuple(seq.prompt_logprobs)
            prompt_first_token = self.tokenizer.decode(seq.request.prompt_ids[:1])
        if not seq.sent_first_delta and seq.request.params.echo:
            prompt_text = self.tokenizer.decode(seq.request.prompt_ids)
        logprobs, seq.pending_logprobs = tuple(seq.pending_logprobs), []
        seq.sent_first_delta = True
        seq.request.sink(
            Delta(
                text,
                seq.num_prompt_tokens,
                seq.num_generated,
                finish_reason,
                error,
                logprobs,
                prompt_logprobs,
                seq.num_cached,
                prompt_first_token,
                prompt_text=prompt_text,
            )
        )
