"""The in-process transformers backend: batched loglikelihood with context grouping, logits only
where they are scored, and shared-prefix (few-shot) KV-cache reuse.

Why hand-written: lm-evaluation-harness' HF model is the reference, but it recomputes every
few-shot prefix and materialises full-sequence logits; the batching below is what makes the
evaluator at least twice as fast on the same model (benchmarks/bench_eval_cmmlu.py).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from services.evaluator.config import ModelDType
from services.evaluator.core.backends import (
    Loglikelihood,
    Message,
    ModelLoadError,
    Progress,
    RollingLoglikelihood,
)
from services.evaluator.core.chat import template_id
from services.evaluator.core.tasks import GenerationConfig
from shared.hf_models import load_causal_lm, load_tokenizer

if TYPE_CHECKING:
    from transformers import GenerationMixin

log = logging.getLogger(__name__)

# Prefix reuse pays when adjacent (sorted) rows share at least this fraction of their tokens.
_PREFIX_SHARE_MIN = 0.5
_PREFIX_TOKENS_MIN = 16
# A batch (longest first) closes before a row shorter than this share of its longest one: bounds the
# padding a batch computes (a third of CMMLU's tokens were padding with fixed-size batches).
_PAD_BOUND = 0.8


@dataclass
class _Row:
    """One forward row: ``tokens``; ``scores``: (request index, continuation tokens) read off its end.

    A row either holds a context alone (every continuation a single token: all are read from the last
    logit vector, so one forward pass serves every choice) or a context + one continuation."""

    tokens: list[int]
    scores: list[tuple[int, list[int]]]
    context_only: bool

    @property
    def keep(self) -> int:
        """How many trailing positions' logits the row needs."""
        return 1 if self.context_only else len(self.scores[0][1]) + 1


class HFBackend:
    """A Hugging Face causal LM in this process: eval mode, inference_mode, sorted static batches.

    The folder is opened by ``shared.hf_models`` (every supported family, InternLM's without running
    its code); ``dtype`` as there: ``auto`` is the checkpoint's dtype on CUDA and, on the CPU, bf16
    where the processor multiplies it natively, else fp32.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        batch_size: int = 8,
        num_threads: int | None = None,
        device: str = "cpu",
        dtype: ModelDType = "auto",
        max_length: int | None = None,
        prefix_reuse: bool = True,
    ) -> None:
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        self.torch = torch
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.prefix_tokens_reused = 0  # tokens not recomputed thanks to the shared-prefix cache
        try:
            self.device = torch.device(device)
            if self.device.type == "cuda" and not torch.cuda.is_available():
                raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
            self.tokenizer = load_tokenizer(model_path)
            self.model, _ = load_causal_lm(model_path, dtype=dtype, device=self.device)
        except ModelLoadError:
            raise
        except Exception as exc:  # UnsupportedModel; OSError/ValueError/KeyError/RuntimeError
            raise ModelLoadError(f"cannot load model from {model_path}: {type(exc).__name__}: {exc}") from exc
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.max_length = max_length or int(getattr(self.model.config, "max_position_embeddings", 2048))
        bos = self.tokenizer.bos_token_id
        self.prefix: list[int] = [bos] if bos is not None else []
        template = getattr(self.tokenizer, "chat_template", None)
        self.chat_format: str | None = (
            template_id(template) if isinstance(template, str) and template else None
        )

    # ------------------------------------------------------------------------------ encoding
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_all(self, texts: Sequence[str]) -> dict[str, list[int]]:
        """Each distinct text tokenized once, in one batched call (the tokenizer's Rust batch path)."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return {}
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer itself: the wrapper's per-text conversion costs more
            ids = [e.ids for e in backend.encode_batch(unique, add_special_tokens=False)]
        else:
            ids = self.tokenizer(unique, add_special_tokens=False)["input_ids"]
        return {t: list(i) for t, i in zip(unique, ids, strict=True)}

    @staticmethod
    def _split(context: str, continuation: str) -> tuple[str, str]:
        """lm-evaluation-harness' split: trailing context whitespace moves to the continuation."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces and context.strip():
            return context[:-n_spaces], context[-n_spaces:] + continuation
        return context, continuation

    def encode_pair(
        self, context: str, continuation: str, cache: dict[str, list[int]] | None = None
    ) -> tuple[list[int], list[int]]:
        """The pair is tokenized jointly (merges across the boundary); the context's tokens are its
        prefix. ``cache`` holds texts tokenized in advance (see ``_encode_all``)."""
        context, continuation = self._split(context, continuation)
        cache = cache or {}

        def enc(text: str) -> list[int]:
            return cache[text] if text in cache else self._encode(text)

        ctx = self.prefix + enc(context)
        whole = self.prefix + enc(context + continuation)
        cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else enc(continuation)
        if not cont:
            raise ValueError(f"empty continuation for context ending {context[-40:]!r}")
        if not ctx:
            raise ValueError("empty context and no BOS token to condition on")
        return ctx, cont

    # ------------------------------------------------------------------------------ forward
    def _forward(self, rows: list[_Row]) -> list[Any]:
        """Logits (float32, on the CPU) of each row's last ``keep`` positions: one batched pass,
        left-padded so those positions are the final columns, with the shared prefix of the batch
        computed once (KV cache expanded to the batch) when it is long enough to pay."""
        torch = self.torch
        keep = max(r.keep for r in rows)
        shared = _common_prefix([r.tokens for r in rows]) if self.prefix_reuse and len(rows) > 1 else 0
        # every row needs at least `keep` own tokens after the shared part
        shared = max(0, min(shared, min(len(r.tokens) for r in rows) - keep))
        if shared < _PREFIX_TOKENS_MIN:
            shared = 0
        past = None
        if shared:
            prefix_ids = torch.tensor([rows[0].tokens[:shared]], device=self.device)
            out = self.model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1)
            past = out.cache
            past.batch_repeat_interleave(len(rows))
        suffixes = [r.tokens[shared:] for r in rows]
        width = max(len(s) for s in suffixes)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, s in enumerate(suffixes):
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, shared + width - len(s) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "logits_to_keep": keep,
        }
        if past is not None:
            kwargs.update(cache=past, use_cache=True)
            self.prefix_tokens_reused += shared * (len(rows) - 1)
        else:
            kwargs["use_cache"] = False
        logits = self.model(**kwargs).logits
        return list(torch.log_softmax(logits.float(), dim=-1).cpu().unbind(0))

    def _batches(self, rows: list[_Row]) -> list[list[int]]:
        """Batches of at most ``batch_size`` row indices: lexicographic order when rows share long
        prefixes (few-shot prompts), else longest first with the padding of a batch bounded."""
        order = sorted(range(len(rows)), key=lambda i: rows[i].tokens)
        pairs = list(itertools.pairwise(order))
        share = sum(_common_prefix([rows[a].tokens, rows[b].tokens]) for a, b in pairs)
        total = sum(len(rows[a].tokens) for a, _ in pairs)
        if self.prefix_reuse and pairs and share >= _PREFIX_SHARE_MIN * total:
            return [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
        batches: list[list[int]] = []
        for i in order:
            last = batches[-1] if batches else None
            if (
                last is None
                or len(last) == self.batch_size
                or len(rows[i].tokens) < _PAD_BOUND * len(rows[last[0]].tokens)
            ):
                batches.append([i])
            else:
                last.append(i)
        return batches

    def _run_rows(self, rows: list[_Row], n_out: int, progress: Progress | None) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = [(0.0, True)] * n_out
        done = 0
        with self.torch.inference_mode():
            for batch in self._batches(rows):
                logprobs = self._forward([rows[i] for i in batch])
                for i, lp in zip(batch, logprobs, strict=True):
                    row = rows[i]
                    for req, cont in row.scores:
                        # row logits end at the row's last token; the continuation's predictors are
                        # the len(cont) positions before its end (context_only: just the last one)
                        span = lp[-1:] if row.context_only else lp[-len(cont) - 1 : -1]
                        targets = self.torch.tensor(cont)
                        picked = span.gather(-1, targets.unsqueeze(-1))
                        out[req] = (float(picked.sum()), bool((span.argmax(-1) == targets).all()))
                        done += 1
                if progress:
                    progress(done, n_out)
        return out

    # ------------------------------------------------------------------------------ API
    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[Loglikelihood]:
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        split = [self._split(c, x) for c, x in requests]
        cache = self._encode_all([c for c, _ in split] + [c + x for c, x in split])
        for n, (context, continuation) in enumerate(requests):
            ctx, cont = self.encode_pair(context, continuation, cache)
            groups.setdefault(tuple(ctx), []).append((n, cont))
        rows: list[_Row] = []
        for ctx_key, members in groups.items():
            ctx = list(ctx_key)
            if all(len(c) == 1 for _, c in members):
                rows.append(_Row(ctx[-self.max_length :], members, context_only=True))
                continue
            for n, cont in members:
                toks = (ctx + cont)[-self.max_length :]  # keep the end: the continuation is scored
                cont = cont[-(len(toks) - 1) :]
                rows.append(_Row(toks, [(n, cont)], context_only=False))
        return [Loglikelihood(lp, g) for lp, g in self._run_rows(rows, len(requests), progress)]

    def loglikelihood_rolling(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> list[RollingLoglikelihood]:
        """Every token of each text scored once, in disjoint windows of at most max_length tokens
        (each window conditioned on the one token before it, as lm-evaluation-harness does)."""
        rows: list[_Row] = []
        owner: list[int] = []
        for t, text in enumerate(texts):
            seq = self.prefix + self._encode(text)
            step = self.max_length - 1
            # position 0 (BOS, or the first token without one) has no context to be scored on
            for s in range(1, len(seq), step):
                e = min(s + step, len(seq))
                rows.append(_Row(seq[s - 1 : e], [(len(owner), seq[s:e])], context_only=False))
                owner.append(t)
        scores = self._run_rows(rows, len(rows), progress)
        totals = [[0.0, 0] for _ in texts]
        for (lp, _), row, t in zip(scores, rows, owner, strict=True):
            totals[t][0] += lp
            totals[t][1] += len(row.scores[0][1])
        return [RollingLoglikelihood(float(lp), int(n)) for lp, n in totals]

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, progress: Progress | None = None
    ) -> list[str]:
        """Greedy decoding (or seeded sampling) in left-padded batches, cut at the stop strings."""
        return self._generate_texts(list(prompts), config, progress)

    def generate_chat(
        self,
        conversations: Sequence[list[Message]],
        config: GenerationConfig,
        progress: Progress | None = None,
    ) -> list[str]:
        """The conversations rendered by the tokenizer's chat template (assistant turn opened)."""
        if self.chat_format is None:
            raise ModelLoadError("this model has no chat template: its prompts go as plain text")
        bos = self.tokenizer.bos_token
        rendered = []
        for messages in conversations:
            text = str(
                self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
            # the backend puts the BOS token first itself; a template that writes it would double it
            rendered.append(text[len(bos) :] if bos and self.prefix and text.startswith(bos) else text)
        return self._generate_texts(rendered, config, progress)

    def _generate_texts(
        self, prompts: list[str], config: GenerationConfig, progress: Progress | None
    ) -> list[str]:
        from services.evaluator.core.metrics import truncate_at_stop

        torch = self.torch
        tok = self.tokenizer
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        room = max(self.max_length - config.max_new_tokens, 1)
        if config.sampling:
            torch.manual_seed(config.seed)
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
                "do_sample": config.sampling,
                "pad_token_id": tok.pad_token_id,
            }
            if config.sampling:
                kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=0)
            if config.stop:
                kwargs.update(stop_strings=config.stop, tokenizer=tok)
            with torch.inference_mode():
                # every causal LM generates; PreTrainedModel's annotations do not say so
                generated = cast("GenerationMixin", self.model).generate(**kwargs)
            for row, i in enumerate(idx):
                text = str(tok.decode(generated[row, width:], skip_special_tokens=True))
                out[i] = truncate_at_stop(text, config.stop)
            if progress:
                progress(min(start + self.batch_size, len(order)), len(order))
        return out


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n
