"""The trained BPE keeps a number's tokens the same wherever it stands, and decodes back exactly."""

from __future__ import annotations

from services.trainer.core.tokenizer import train_bpe

TEXTS = [
    f'Question: What is {a} plus {b}?\nAction Input: {{"expression": "{a} + {b}"}}\nObservation: {a + b}'
    for a in range(2, 60, 3)
    for b in range(5, 90, 7)
] + ["The capital of Keliheim is Ulaburg. About 28 million people live in Keliheim."] * 20


def test_a_number_has_the_same_tokens_after_a_space_a_quote_or_a_label() -> None:
    tok = train_bpe(TEXTS, 400)
    text = 'Question: What is 12 plus 30?\nAction Input: {"expression": "12 + 30"}\nObservation: 42'
    pieces = tok.convert_ids_to_tokens(tok(text).input_ids)
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert all(p.isdigit() for p in digit_pieces)  # never "Ġ12" or '"12' beside "12"
    runs: list[list[str]] = []  # each number's tokens, in order
    prev = ""
    for piece in pieces:
        if piece.isdigit():
            if prev.isdigit():
                runs[-1].append(piece)
            else:
                runs.append([piece])
        prev = piece
    assert ["".join(r) for r in runs] == ["12", "30", "12", "30", "42"]
    assert runs[0] == runs[2] and runs[1] == runs[3]
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    assert tok.decode(tok(TEXTS[-1]).input_ids, skip_special_tokens=True) == TEXTS[-1]
