"""Okapi BM25 over an inverted index in numpy.

Written here rather than taken from rank-bm25: that package's Okapi variant gives terms found in more
than half of the documents a zero or negative IDF, which breaks small corpora, and it scans every
document for every query term. Lucene's IDF, log(1 + (N - df + 0.5) / (df + 0.5)), is always positive,
and the postings make a query cost proportional to the documents that contain its terms.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"[\u3400-\u9fff]|[^\W\u3400-\u9fff]+")  # CJK characters one by one, else words
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from has have how i in is it its of on or that the this to "
    "was what when where which who why will with".split()
)


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


class BM25:
    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.n_docs = len(documents)
        self.k1, self.b = k1, b
        lengths = np.array([len(d) for d in documents], dtype=np.float32)
        avg = float(lengths.mean()) if self.n_docs and lengths.mean() > 0 else 1.0
        # per-document length normalisation, computed once
        self._norm = k1 * (1.0 - b + b * lengths / avg)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, doc in enumerate(documents):
            for term, tf in Counter(doc).items():
                ids, tfs = postings.setdefault(term, ([], []))
                ids.append(i)
                tfs.append(tf)
        self._postings = {
            term: (np.array(ids, dtype=np.int64), np.array(tfs, dtype=np.float32))
            for term, (ids, tfs) in postings.items()
        }
        self._idf = {
            term: float(np.log(1.0 + (self.n_docs - len(ids) + 0.5) / (len(ids) + 0.5)))
            for term, (ids, _) in self._postings.items()
        }

    def scores(self, query: Sequence[str]) -> np.ndarray:
        out = np.zeros(self.n_docs, dtype=np.float32)
        for term in query:
            posting = self._postings.get(term)
            if posting is None:
                continue
            ids, tf = posting
            out[ids] += self._idf[term] * tf * (self.k1 + 1.0) / (tf + self._norm[ids])
        return out

    def top(self, query: Sequence[str], k: int) -> list[tuple[int, float]]:
        """The k best (document index, score) pairs with a positive score, best first."""
        scores = self.scores(query)
        candidates = np.flatnonzero(scores > 0)
        if candidates.size == 0:
            return []
        k = min(k, candidates.size)
        best = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        # ties broken by index so results are deterministic
        ordered = sorted(best.tolist(), key=lambda i: (-float(scores[i]), i))
        return [(i, float(scores[i])) for i in ordered]
