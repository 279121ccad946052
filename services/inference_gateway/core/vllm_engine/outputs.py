"""vLLM's ``RequestOutput`` (``RequestOutputKind.DELTA``: what is new since the last one) as puyu's
``Delta``s, so a caller cannot tell which engine answered.

Counted as puyu's engine counts: ``completion_tokens`` leaves out the end-of-sequence token that ended
a sequence (vLLM keeps it among the output's tokens). Logprobs: vLLM gives, per position, the chosen
token and the ``logprobs`` best (with their ranks); puyu's ``TokenLogprob.top`` is the best ones in rank
order. Finish reasons: vLLM's ``abort`` is puyu's ``cancelled``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.inference_gateway.core.engine.output import Delta, TokenLogprob
from services.inference_gateway.core.sampling import SamplingParams

_FINISH = {"abort": "cancelled"}


def token_logprob(token_id: int, entries: Mapping[int, Any], top: int) -> TokenLogprob:
    """``entries``: vLLM's ``{token id: Logprob(logprob, rank, decoded_token)}`` at one position."""
    chosen = entries[token_id]
    best = sorted((lp for lp in entries.values() if lp.rank is not None and lp.rank <= top), key=_rank)
    return TokenLogprob(
        token_id,
        chosen.decoded_token or "",
        float(chosen.logprob),
        tuple((lp.decoded_token or "", float(lp.logprob)) for lp in best),
    )


def _rank(lp: Any) -> int:
    return int(lp.rank)


class DeltaMaker:
    """The deltas of one request, from its outputs in order."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], tokenizer: Any) -> None:
        self.params, self.prompt_ids, self.tokenizer = params, prompt_ids, tokenizer
        self.completion_tokens = 0
        self.sent_first = False

    def delta(self, out: Any) -> Delta | None:
        """The delta of one ``RequestOutput``; None when it carries nothing to send."""
        completion = out.outputs[0]
        params = self.params
        scoring = params.max_tokens == 0  # the one token vLLM had to generate is not the caller's
        ids = [] if scoring else list(completion.token_ids)
        text = "" if scoring else completion.text
        reason = completion.finish_reason
        if reason is not None:
            reason = "length" if scoring else _FINISH.get(reason, reason)
        logprobs: tuple[TokenLogprob, ...] = ()
        if params.logprobs is not None and completion.logprobs and not scoring:
            logprobs = tuple(
                token_logprob(t, entries, params.logprobs)
                for t, entries in zip(ids, completion.logprobs, strict=True)
            )
        counted = len(ids)
        if reason == "stop" and completion.stop_reason is None and ids and not params.ignore_eos:
            counted -= 1  # ended by the end-of-sequence token, which puyu does not count
        self.completion_tokens += counted
        first = not self.sent_first
        if not (first or text or logprobs or reason):
            return None
        self.sent_first = True
        prompt_logprobs, prompt_first_token, prompt_text = None, None, None
        if first and params.prompt_logprobs:
            prompt_logprobs = self._prompt_logprobs(out.prompt_logprobs or [])
            prompt_first_token = self.tokenizer.decode(self.prompt_ids[:1])
        if first and params.echo:
            prompt_text = self.tokenizer.decode(self.prompt_ids)
        return Delta(
            text,
            len(self.prompt_ids),
            self.completion_tokens,
            reason,
            "vLLM stopped the request with an error" if reason == "error" else None,
            logprobs,
            prompt_logprobs,
            int(out.num_cached_tokens or 0),
            prompt_first_token,
            prompt_text=prompt_text,
        )

    def _prompt_logprobs(self, rows: list[Any]) -> tuple[TokenLogprob | None, ...]:
        top = self.params.logprobs or 0
        out: list[TokenLogprob | None] = [None]  # the first prompt token follows nothing
        for token_id, entries in zip(self.prompt_ids[1:], rows[1:], strict=False):
            out.append(token_logprob(token_id, entries, top) if entries else None)
        return tuple(out)
