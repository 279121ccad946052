"""Main-text extraction F1 on ../shared/data/extraction-dev (40 real pages): puyu's extractor against
stock ``trafilatura.extract``, scored as the article-extraction benchmark scores (word 4-gram
shingles, per-page normalised, precision and recall averaged over pages). One JSON line last."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import trafilatura

from services.corpus_ingest.core.extract import extract_html
from services.corpus_ingest.core.extraction_score import evaluate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "extraction-dev"


def main() -> None:
    if not (DATA / "ground-truth.json").is_file():
        print(f"skip: {DATA} not found", file=sys.stderr)
        sys.exit(0)
    t = time.perf_counter()
    stock = evaluate(DATA, lambda html: trafilatura.extract(html))
    t_stock = time.perf_counter() - t
    t = time.perf_counter()
    ours = evaluate(DATA, extract_html)
    t_ours = time.perf_counter() - t
    print(json.dumps({"benchmark": "corpus_extraction", "pages": 40, "puyu": ours, "trafilatura": stock,
                      "f1_gain": round(ours["f1"] - stock["f1"], 4),
                      "puyu_s": round(t_ours, 2), "trafilatura_s": round(t_stock, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
