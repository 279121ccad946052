"""The engine thread: take new requests, then step (schedule, model forward, sample, output) until closed.

Finished or cancelled sequences free their blocks at once, so requests join and leave the batch
between any two steps.
"""

from __future__ import annotations

import logging
import threading

import torch

from services.inference_gateway.core.engine.bridge import RequestBridge
from services.inference_gateway.core.engine.output import OutputProcessor
from services.inference_gateway.core.engine.scheduler import Scheduler
from services.inference_gateway.core.engine.sequence import Sequence
from services.inference_gateway.core.model_runner import ModelRunner
from services.inference_gateway.core.sampling import adjust_logits, sample_next, suppress

log = logging.getLogger(__name__)


def sample_token(seq: Sequence, logits: torch.Tensor, eos_ids: set[int]) -> int:
    """One token for ``seq`` after its logit bias and penalties, ``min_tokens`` (no EOS nor stop token
    before) and its grammar."""
    params = seq.request.params
    scores = adjust_logits(logits, params, seq.request.prompt_ids, seq.generated_ids)
    if seq.num_generated < params.min_tokens and (ends := eos_ids | set(params.stop_token_ids)):
        scores = suppress(scores, ends)
    if seq.guide is not None:
        scores = seq.guide.mask(scores)
    token = sample_next(scores, params, seq.generator)
    if seq.guide is not None:
        seq.guide.accept(token)
    return token


class EngineLoop:
    def __init__(
        self,
        runner: ModelRunner,
        output: OutputProcessor,
        bridge: RequestBridge,
        *,
        max_batch_size: int,
        max_step_tokens: int,
        prefix_caching: bool,
    ) -> None:
        self.runner = runner
        self.output = output
        self.bridge = bridge
        self.scheduler = Scheduler(
            runner.cache.allocator,
            rows=runner.rows,
            max_batch_size=max_batch_size,
            max_step_tokens=max_step_tokens,
            prefix_caching=prefix_caching,
            on_finished=self._report,
        )
        self.steps = 0
        self._thread: threading.Thread | None = None

    def start(self, name: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name=name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Stop the thread; the requests it still holds end as cancelled."""
        if self._thread is not None:
            self.bridge.signal_stop()
            self._thread.join(timeout=timeout)
            self._thread = None

    def run(self) -> None:
        scheduler = self.scheduler
        with torch.inference_mode():
            while True:
                requests, closing = self.bridge.take(block=not scheduler.has_work)
                for request in requests:
                    scheduler.add(Sequence.of(request))
                if closing:
                    for seq in [*scheduler.running, *scheduler.waiting]:
                        self.finish(seq, "cancelled")
                    return
                try:
                    self.step()
                except Exception as exc:  # a broken step fails its requests, never the thread
                    log.exception("engine step failed")
                    for seq in [*scheduler.running]:
                        self.finish(seq, "error", f"{type(exc).__name__}: {exc}")
                scheduler.drop_finished()

    def step(self) -> None:
        plan = self.scheduler.schedule()
        if not plan:
            return
        outs = self.runner.forward([chunk for _, chunk in plan])
        self.steps += 1
        self.scheduler.commit(plan)
        ready: list[tuple[Sequence, torch.Tensor]] = []  # sequences whose next token is sampled now
        for (seq, chunk), logits in zip(plan, outs, strict=True):
            if logits is None:
                continue
            if chunk.logits == "all":
                self.output.record_prompt_logprobs(seq, chunk, logits)
                logits = logits[-1]
            if seq.num_computed == len(seq.token_ids):
                ready.append((seq, logits))
        # plain greedy rows take one argmax together; the rest sample one by one
        greedy = [
            i
            for i, (s, _) in enumerate(ready)
            if s.request.params.greedy
            and not s.request.params.adjusts_logits
            and s.guide is None
            and s.num_generated >= s.request.params.min_tokens
        ]
        chosen: dict[int, int] = {}
        if greedy:
            picks = torch.stack([ready[i][1] for i in greedy]).argmax(-1).tolist()
            chosen = dict(zip(greedy, picks, strict=True))
        for i, (seq, logits) in enumerate(ready):
            token = chosen.get(i)
            if token is None:
                token = sample_token(seq, logits, self.output.eos_ids)
            end = self.output.process_token(seq, logits, token)
            if end is not None:
                self.finish(seq, end.reason, text=end.text)

    def finish(self, seq: Sequence, reason: str, error: str | None = None, text: str | None = None) -> None:
        if self.scheduler.retire(seq):
            self._report(seq, reason, error, text)

    def _report(self, seq: Sequence, reason: str, error: str | None = None, text: str | None = None) -> None:
        """Send the last delta of a sequence the scheduler has retired."""
        piece = self.output.final_text(seq, reason, text)
        self.bridge.finished_one(
            reason
        )  # before the sink, so a caller that saw the last delta sees the count drop
        try:
            self.output.emit(seq, piece, reason, error)
        except Exception:  # a sink whose loop is gone must not take the engine down
            log.debug("sink failed", exc_info=True)
