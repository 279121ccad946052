"""Sampling parameters, next-token selection and incremental stop-sequence detection (no torch state)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from shared.errors import Refusal


class InvalidRequest(Refusal, ValueError):
    """A generation request that can never be served as asked (bad parameter, prompt too long).

    Still a ``ValueError`` for callers that catch it as one.
    """


# Below this a positive temperature samples as greedy: logits divided by it would overflow float32
# (5e-324 is 0 in float32, and x / 0 makes the probabilities NaN); at 1e-2 a logit gap of 0.5
# already weighs e^50, so the choice is the argmax in all but exact ties.
MIN_TEMPERATURE = 1e-2
# Above this the distribution is uniform for any real logits; far below float32's range, where the
# division would turn masked (-inf) logits into NaN.
MAX_TEMPERATURE = 100.0
# Seen logits are divided or multiplied by the penalty: within these bounds float32 logits stay finite.
MIN_REPETITION_PENALTY = 1e-2
MAX_REPETITION_PENALTY = 100.0
MAX_PENALTY = 2.0  # presence / frequency, as OpenAI
MAX_LOGIT_BIAS = 100.0  # OpenAI's bound: -100 bans a token, 100 all but forces it


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16  # 0: score the prompt only (its logprobs), generate nothing
    temperature: float = 1.0  # 0 (or below MIN_TEMPERATURE): greedy
    top_p: float = 1.0  # 1 (or 0): off
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # drop tokens below min_p x the most likely one's probability (as vLLM); 0: off
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # these tokens end the output, counted but not in its text (as vLLM)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), OpenAI's logit_bias
    seed: int | None = None
    repetition_penalty: float = 1.0  # HF style: divides positive logits of seen tokens (1: off)
    presence_penalty: float = 0.0  # OpenAI style, over generated tokens
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # return the chosen token's logprob and this many alternatives
    prompt_logprobs: bool = False  # logprobs of the prompt tokens too (echo); bypasses the prefix cache
    json_schema: str | None = None  # constrain the output to JSON matching this schema (response_format)
    ignore_eos: bool = False  # go on past end-of-sequence tokens until max_tokens (as vLLM)
    min_tokens: int = 0  # neither EOS nor a stop string ends the output before this many tokens (as vLLM)
    # False keeps special tokens in the output text (tool-call markers that are special tokens, as
    # InternLM2's <|action_start|>)
    skip_special_tokens: bool = True
    echo: bool = False  # send the prompt's text, decoded from its tokens, on the first delta
    # max_tokens is the server's default, not the client's: cut to what the context leaves (as vLLM
    # fills the context when max_tokens is not given) instead of refused
    max_tokens_is_default: bool = False

    def validate(self) -> SamplingParams:
        """This, or InvalidRequest naming the first parameter out of bounds (NaN and infinities too)."""
        if self.max_tokens < 0 or (self.max_tokens == 0 and not self.prompt_logprobs and not self.echo):
            raise InvalidRequest(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidRequest(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        _check_range("temperature", self.temperature, 0, MAX_TEMPERATURE)
        _check_range("top_p", self.top_p, 0, 1)
        if self.top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0, got {self.top_k}")
        _check_range("min_p", self.min_p, 0, 1)
        if any(not s for s in self.stop):
            raise InvalidRequest("stop sequences must be non-empty strings")
        _check_range(
            "repetition_penalty", self.repetition_penalty, MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY
        )
        _check_range("presence_penalty", self.presence_penalty, -MAX_PENALTY, MAX_PENALTY)
        _check_range("frequency_penalty", self.frequency_penalty, -MAX_PENALTY, MAX_PENALTY)
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidRequest(f"logprobs must be in [0, 20], got {self.logprobs}")
        for token, bias in self.logit_bias:
            _check_range(f"logit_bias[{token}]", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
        self.check_token_ids(None)
        return self

    def check_token_ids(self, vocab_size: int | None) -> None:
        """InvalidRequest naming the field when ``stop_token_ids`` or ``logit_bias`` holds a negative id or
        (given ``vocab_size``) one the model has no logit for: as vLLM, since it would index past the
        logits of every request batched in the same step."""
        for name, ids in (
            ("stop_token_ids", self.stop_token_ids),
            ("logit_bias", [t for t, _ in self.logit_bias]),
        ):
            bad = sorted({t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)})
            if bad and vocab_size is None:
                raise InvalidRequest(f"{name} must hold token ids (>= 0), got {bad}")
            if bad:
                raise InvalidRequest(
                    f"{name} holds token id(s) {bad} out of vocabulary (the model has {vocab_size} token ids)"
                )

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1 or bool(self.presence_penalty) or bool(self.frequency_penalty)

    @property
    def adjusts_logits(self) -> bool:
        """The logits are changed before any choice (bias, penalties): a greedy pick is not the plain argmax."""
        return self.penalised or bool(self.logit_bias)

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not math.isfinite(value):  # NaN passes every "not below / not above" test: refuse it first
        raise InvalidRequest(f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}")
    if value < low:
        raise InvalidRequest(f"{name} must be >= {low:g}, got {value!r}")
    if value > high:
        raise InvalidRequest(f"{name} must be <= {high:g}, got {value!r}")


def check_context(prompt_tokens: int, params: SamplingParams, max_positions: int) -> None:
    """InvalidRequest, worded as vLLM words it, when the prompt and the tokens asked for exceed the context.

    A default ``max_tokens`` (not the client's) is only cut short by the context, never refused.
    """
    asked = 1 if params.max_tokens_is_default else params.max_tokens
    if asked > max_positions:
        raise InvalidRequest(
            f"max_tokens={asked} cannot be greater than the model's context length of {max_positions} "
            "tokens. Please request fewer output tokens."
        )
    if prompt_tokens + asked > max_positions:
        raise InvalidRequest(
            f"You passed {prompt_tokens} input tokens and requested {asked} output tokens. However, the "
            f"model's context length is only {max_positions} tokens, resulting in a maximum input length "
            f"of {max_positions - asked} tokens. Please reduce the length of the input prompt."
        )


def make_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def adjust_logits(
    logits: torch.Tensor, params: SamplingParams, prompt: list[int], generated: list[int]
) -> torch.Tensor:
    """``logit_bias`` added, then the penalties (vLLM's order), before temperature and any choice."""
    if params.logit_bias:
        logits = logits.clone()
        ids = torch.tensor([t for t, _ in params.logit_bias], dtype=torch.long, device=logits.device)
        bias = torch.tensor([b for _, b in params.logit_bias], dtype=logits.dtype, device=logits.device)
        logits.index_add_(0, ids, bias)
    return apply_penalties(logits, params, prompt, generated)


def apply_penalties(
    logits: torch.Tensor, params: SamplingParams, prompt: list[int], generated: list[int]
) -> torch.Tensor:
    """Repetition penalty over prompt + output (as transformers), presence/frequency over the output (as OpenAI)."""
    if not params.penalised:
        return logits
    logits = logits.clone()
    if params.repetition_penalty != 1 and (prompt or generated):
        seen = torch.tensor(sorted(set(prompt) | set(generated)), dtype=torch.long)
        vals = logits[seen]
        rp = params.repetition_penalty
        logits[seen] = torch.where(vals > 0, vals / rp, vals * rp)
    if generated and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=logits.numel())
        counts = counts[: logits.numel()].to(logits.device, logits.dtype)
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def suppress(logits: torch.Tensor, token_ids: set[int]) -> torch.Tensor:
    """``logits`` with ``token_ids`` made impossible (EOS before ``min_tokens``, as vLLM masks it)."""
    logits = logits.clone()
    logits[sorted(token_ids)] = float("-inf")
    return logits


def sample_next(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """One token id from a row of logits ``[vocab]`` following ``params``."""
    if params.greedy:
        return int(torch.argmax(logits).item())
    # drawn where the request's generator lives (the CPU): a seed gives the same draw on any device
    probs = token_probs(logits, params).to(gen.device)
    return int(torch.multinomial(probs, 1, generator=gen).item())


def token_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a non-greedy ``sample_next`` draws from: temperature, min-p, top-k, then top-p
    (vLLM's order; min-p and top-k keep the most likely token, so they commute)."""
    scores = logits.float() / params.temperature
    if params.min_p > 0:
        probs = torch.softmax(scores, dim=-1)
        scores = scores.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    if params.top_k and params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if 0 < params.top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=True)
        cum = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p; the first token always stays
        # (a top_p that is 0 in float32, such as 5e-324, would otherwise drop every token)
        drop = (cum - torch.softmax(sorted_scores, dim=-1)) >= params.top_p
        drop[0] = False
        scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, float("-inf")))
    return torch.softmax(scores, dim=-1)


@dataclass
class StopChecker:
    """Finds stop strings in the decoded text and says how much text is safe to stream.

    Text that might be the start of a stop string (or an incomplete UTF-8 character) is held back
    until the next tokens decide it, so a stop string is never streamed, even when it spans tokens.
    """

    stops: tuple[str, ...]
    emitted: int = 0
    _max_stop: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._max_stop = max((len(s) for s in self.stops), default=0)

    def find_stop(self, text: str) -> int | None:
        """Index where the earliest stop string starts in ``text``, or None."""
        # Only the tail can hold a new match: everything before was checked on earlier steps.
        start = max(0, self.emitted - self._max_stop)
        hits = [i for s in self.stops if (i := text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def safe_end(self, text: str) -> int:
        end = len(text)
        if text.endswith("\ufffd"):  # byte-level BPE: a multi-byte character is not complete yet
            end -= 1
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[end - k : end] == s[:k]:
                    hold = max(hold, k)
                    break
        return end - hold

    def delta(self, text: str, end: int) -> str:
        if end <= self.emitted:
            return ""
        out = text[self.emitted : end]
        self.emitted = end
        return out
