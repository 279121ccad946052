"""Main-text extraction quality on the real extraction-dev pages, scored as the benchmark scores it."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.corpus_ingest.core.extract import drop_boilerplate_lines, extract_html, html_metadata
from services.corpus_ingest.core.extraction_score import evaluate, page_counts, score

DATA = Path(__file__).resolve().parents[4] / "shared" / "data" / "extraction-dev"


def test_scorer_counts_clipped_shingles() -> None:
    true = "one two three four five six"
    assert page_counts(true, true) == (1.0, 0.0, 0.0)
    tp, fp, fn = page_counts(true, "one two three four five six seven eight")
    assert (round(tp, 4), round(fp, 4), fn) == (0.6, 0.4, 0.0)
    assert score([(true, "")])["f1"] == 0.0


def test_boilerplate_lines_and_head_metadata() -> None:
    text = "Real sentence about the river.\nLike this story? Share it with a friend!\nSubscribe to our newsletter"
    assert drop_boilerplate_lines(text) == "Real sentence about the river."
    assert drop_boilerplate_lines("Readers who subscribe get more.") == "Readers who subscribe get more."
    head = (
        b"<html><head><TITLE> A &amp; B </TITLE><link href='https://x.org/p' rel=\"canonical\"></head></html>"
    )
    assert html_metadata(head) == ("https://x.org/p", "A & B")


@pytest.mark.skipif(not (DATA / "ground-truth.json").is_file(), reason=f"{DATA} absent (../shared/data)")
def test_extraction_f1_beats_stock_trafilatura() -> None:
    import trafilatura

    ours = evaluate(DATA, extract_html)
    stock = evaluate(DATA, lambda html: trafilatura.extract(html))
    assert ours["f1"] >= 0.96, ours
    assert ours["f1"] > stock["f1"] and ours["precision"] > stock["precision"], (ours, stock)
