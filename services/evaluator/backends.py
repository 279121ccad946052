"""Backends: what a task asks of a model. The in-process transformers backend implements it here;
later backends (the inference gateway over HTTP, vLLM) implement the same three calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.evaluator.tasks import GenerationConfig

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class Loglikelihood:
    logprob: float  # sum of log p(continuation tokens | context)
    is_greedy: bool  # every continuation token was the argmax


@dataclass(frozen=True)
class RollingLoglikelihood:
    logprob: float  # sum over every scored token of the text
    num_tokens: int


class Backend(Protocol):
    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[Loglikelihood]: ...

    def loglikelihood_rolling(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> list[RollingLoglikelihood]: ...

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, progress: Progress | None = None
    ) -> list[str]: ...


class ModelLoadError(RuntimeError):
    """The model folder cannot be loaded (missing, not a causal LM, broken files)."""


class HFBackend:
    """A Hugging Face causal LM in this process: eval mode, no_grad, sorted static batches."""

    def __init__(
        self,
        model_path: Path,
        *,
        batch_size: int = 8,
        num_threads: int | None = None,
        device: str = "cpu",
        max_length: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.torch = torch
        self.batch_size = batch_size
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
            self.model = AutoModelForCausalLM.from_pretrained(str(model_path))
            self.model.to(self.device)  # type: ignore[arg-type]
        except Exception as exc:  # transformers raises OSError/ValueError/KeyError for bad folders
            raise ModelLoadError(f"cannot load model from {model_path}: {type(exc).__name__}: {exc}") from exc
        self.model.eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.max_length = max_length or int(getattr(self.model.config, "max_position_embeddings", 2048))
        bos = self.tokenizer.bos_token_id
        self.prefix: list[int] = [bos] if bos is not None else []

    # ------------------------------------------------------------------------------ helpers
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _score(
        self,
        windows: list[tuple[list[int], int]],
        progress: Progress | None,
        done_offset: int = 0,
        total: int | None = None,
    ) -> list[tuple[float, bool]]:
        """Each window: (input ids, number of trailing tokens to score). Returns (logprob, all greedy)."""
        torch = self.torch
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
        out: list[tuple[float, bool]] = [(0.0, True)] * len(windows)
        total = total or len(windows)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(windows[i][0]) for i in idx)
            ids = torch.full((len(idx), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                toks = windows[i][0]
                ids[row, : len(toks)] = torch.tensor(toks)
                mask[row, : len(toks)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(idx):
                toks, n = windows[i]
                # logits at position t predict token t+1: score the last n tokens
                positions = torch.arange(len(toks) - n - 1, len(toks) - 1)
                targets = torch.tensor(toks[len(toks) - n :])
                lp = logprobs[row, positions].cpu()
                score = float(lp.gather(-1, targets.unsqueeze(-1)).sum())
                greedy = bool((lp.argmax(-1) == targets).all())
                out[i] = (score, greedy)
            if progress:
                progress(done_offset + min(start + self.batch_size, len(order)), total)
        return out

    # ------------------------------------------------------------------------------ API
    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[Loglikelihood]:
        windows = []
        for context, continuation in requests:
            ctx = self.prefix + self._encode(context)
            whole = self.prefix + self._encode(context + continuation)
            # Tokenize jointly (merges across the boundary) unless that changed the context tokens.
            cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else self._encode(continuation)
            if not cont:
                raise ValueError(f"empty continuation for context ending {context[-40:]!r}")
            toks = (ctx + cont)[-self.max_length :]  # keep the end: the continuation is what is scored
            windows.append((toks, min(len(cont), len(toks) - 1)))
        return [Loglikelihood(lp, g) for lp, g in self._score(windows, progress)]

    def loglikelihood_rolling(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> list[RollingLoglikelihood]:
        """Every token of each text scored once, in disjoint windows of at most max_length tokens
        (each window conditioned on the one token before it, as lm-evaluation-harness does)."""
        windows: list[tuple[list[int], int]] = []
        owner: list[int] = []
        for t, text in enumerate(texts):
            seq = self.prefix + self._encode(text)
            first = 1  # position 0 (BOS, or the first token without one) has no context to be scored on
            step = self.max_length - 1
            for s in range(first, len(seq), step):
                e = min(s + step, len(seq))
                windows.append((seq[s - 1 : e], e - s))
                owner.append(t)
        scores = self._score(windows, progress)
        totals = [[0.0, 0] for _ in texts]
        for (lp, _), (_, n), t in zip(scores, windows, owner, strict=True):
            totals[t][0] += lp
            totals[t][1] += n
        return [RollingLoglikelihood(float(lp), int(n)) for lp, n in totals]

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, progress: Progress | None = None
    ) -> list[str]:
        """Greedy decoding in left-padded batches (longest first), cut at the stop strings."""
        from services.evaluator.metrics import truncate_at_stop

        torch = self.torch
        tok = self.tokenizer
        tok.padding_side = "left"
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        room = max(self.max_length - config.max_new_tokens, 1)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            encoded = [(self.prefix + self._encode(prompts[i]))[-room:] for i in idx]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, e in enumerate(encoded):
                ids[row, width - len(e) :] = torch.tensor(e)
                mask[row, width - len(e) :] = 1
            kwargs: dict[str, Any] = {
                "input_ids": ids.to(self.device),
                "attention_mask": mask.to(self.device),
                "max_new_tokens": config.max_new_tokens,
                "do_sample": False,
                "pad_token_id": tok.pad_token_id,
            }
            if config.stop:
                kwargs.update(stop_strings=config.stop, tokenizer=tok)
            with torch.no_grad():
                generated = self.model.generate(**kwargs)
            for row, i in enumerate(idx):
                text = str(tok.decode(generated[row, width:], skip_special_tokens=True))
                out[i] = truncate_at_stop(text, config.stop)
            if progress:
                progress(min(start + self.batch_size, len(order)), len(order))
        return out
