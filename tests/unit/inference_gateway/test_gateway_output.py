"""Output processing alone, with a byte-level toy tokenizer: stop strings, held-back text, limits, deltas."""

from __future__ import annotations

import torch

from services.inference_gateway.core.engine.output import Delta, Finish, OutputProcessor
from services.inference_gateway.core.engine.sequence import Request, Sequence
from services.inference_gateway.core.sampling import SamplingParams

# token id -> bytes; "é" is split over two tokens, as byte-level BPE does with rare characters
PIECES = [b"<eos>", b"hel", b"lo", b" E", b"N", b"D", b"x", b"caf", b"\xc3", b"\xa9", b"!", b"P"]
EOS = 0
HEL, LO, SP_E, N, D, X, CAF, E_ACUTE_1, E_ACUTE_2, BANG, PROMPT = range(1, 12)
VOCAB = len(PIECES)


class ByteTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        kept = [i for i in ids if not (skip_special_tokens and i == EOS)]
        return b"".join(PIECES[i] for i in kept).decode("utf-8", errors="replace")


def start(**params: object) -> tuple[OutputProcessor, Sequence, list[Delta]]:
    deltas: list[Delta] = []
    request = Request([PROMPT, PROMPT], SamplingParams(**params), deltas.append)  # type: ignore[arg-type]
    return OutputProcessor(ByteTokenizer(), {EOS}, max_positions=64), Sequence.of(request), deltas


def feed(out: OutputProcessor, seq: Sequence, tokens: list[int]) -> Finish | None:
    logits = torch.zeros(VOCAB)
    for token in tokens:
        end = out.process_token(seq, logits, token)
        if end is not None:
            return end
    return None


def test_a_stop_string_spanning_tokens_is_never_streamed() -> None:
    out, seq, deltas = start(max_tokens=20, stop=("END",))
    assert feed(out, seq, [HEL, LO, SP_E]) is None
    # the "E" could start "END": held back until the next tokens decide
    assert "".join(d.text for d in deltas) == "hello "
    end = feed(out, seq, [N, D, X])
    assert end == Finish("stop", "hello ")
    assert "".join(d.text for d in deltas) + out.final_text(seq, end.reason, end.text) == "hello "


def test_held_back_text_is_released_when_it_is_not_a_stop_string() -> None:
    out, seq, deltas = start(max_tokens=20, stop=("END",))
    assert feed(out, seq, [HEL, LO, SP_E, X]) is None
    assert "".join(d.text for d in deltas) == "hello Ex"


def test_an_incomplete_character_waits_for_its_last_byte() -> None:
    out, seq, deltas = start(max_tokens=20)
    feed(out, seq, [CAF, E_ACUTE_1])
    assert "".join(d.text for d in deltas) == "caf"
    feed(out, seq, [E_ACUTE_2, BANG])
    assert [d.text for d in deltas if d.text] == ["caf", "é", "!"]


def test_max_tokens_ends_with_length_and_counts_every_token() -> None:
    out, seq, deltas = start(max_tokens=3)
    end = feed(out, seq, [HEL, LO, X, X])
    assert end == Finish("length", "hellox")
    assert seq.num_generated == 3
    out.emit(seq, out.final_text(seq, end.reason, end.text), end.reason)
    assert "".join(d.text for d in deltas) == "hellox"
    assert (deltas[-1].finish_reason, deltas[-1].completion_tokens, deltas[-1].prompt_tokens) == (
        "length",
        3,
        2,
    )


def test_eos_ends_with_stop_and_is_neither_text_nor_counted() -> None:
    out, seq, deltas = start(max_tokens=10)
    end = feed(out, seq, [HEL, EOS])
    assert end == Finish("stop")
    assert out.final_text(seq, end.reason, end.text) == ""
    assert seq.num_generated == 1 and "".join(d.text for d in deltas) == "hel"


def test_logprobs_ride_on_the_next_delta_and_prompt_logprobs_on_the_first_only() -> None:
    out, seq, deltas = start(max_tokens=10, logprobs=1, prompt_logprobs=True)
    assert seq.prompt_logprobs == [None]
    logits = torch.zeros(VOCAB)
    logits[LO] = 5.0
    out.process_token(seq, logits, HEL)
    out.process_token(seq, logits, LO)
    assert [len(d.logprobs) for d in deltas] == [1, 1]
    first, second = deltas
    assert first.logprobs[0].token == "hel" and first.logprobs[0].top[0][0] == "lo"
    expected = float(torch.log_softmax(logits, -1)[LO])
    assert abs(second.logprobs[0].logprob - expected) < 1e-6
    assert first.prompt_logprobs == (None,) and first.prompt_first_token == "P"
    assert second.prompt_logprobs is None and second.prompt_first_token is None
