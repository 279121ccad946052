"""Main-text extraction from HTML: trafilatura tuned for precision, then a boilerplate-line pass.

On extraction-dev (40 real news/blog pages) stock ``trafilatura.extract`` scores F1 0.954;
``favor_precision`` with tables kept reaches 0.964, and dropping call-to-action / syndication
lines that trafilatura leaves at the edges of the article (share, subscribe, "Also on ...")
raises precision further without costing recall (see benchmarks/bench_corpus_extraction.py).
"""

from __future__ import annotations

import re

# Lines that are navigation or calls to action, never article text. Anchored on both sides
# or at the start so a sentence that merely contains "subscribe" survives.
_BOILERPLATE_LINE = re.compile(
    r"^(?:also on \S+|read more\b|related:|advertisement$|share this\b|like this story\b|sign up\b"
    r"|subscribe\b|click here\b|follow us\b|copyright\b|©|all rights reserved\b)"
    r"|(?:share it with a friend|sign up for our newsletter|all rights reserved)[.!]?$",
    re.IGNORECASE,
)


def drop_boilerplate_lines(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not _BOILERPLATE_LINE.search(line.strip()))


def extract_html(data: bytes | str) -> str | None:
    """The page's main text, or None when trafilatura finds none."""
    import trafilatura  # heavy import: only when HTML is read

    # Precision first: boilerplate in a pretraining corpus costs more than a lost paragraph.
    text = trafilatura.extract(
        data,
        favor_precision=True,
        include_comments=False,
        include_tables=True,
        include_images=False,
        include_links=False,
        deduplicate=False,
    )
    if not text:
        return None
    return drop_boilerplate_lines(text).strip() or None


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_LINK = re.compile(rb"<link\b[^>]*>", re.IGNORECASE)
_REL_CANONICAL = re.compile(rb"""\brel\s*=\s*["']?canonical\b""", re.IGNORECASE)
_HREF = re.compile(rb"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)
_HEAD_BYTES = 256 << 10  # canonical link and title live in the head


def html_metadata(data: bytes) -> tuple[str | None, str | None]:
    """(canonical url, title) from the page head; None for what is absent.

    A regex over the head rather than a second full parse: trafilatura already parses the page
    once, and a full lxml parse for two head tags doubled the cost of reading HTML.
    """
    import html

    head = data[:_HEAD_BYTES]
    url = None
    for link in _LINK.findall(head):
        if _REL_CANONICAL.search(link) and (m := _HREF.search(link)):
            url = next(g for g in m.groups() if g is not None).decode("utf-8", "replace").strip()
            break
    t = _TITLE.search(head)
    title = html.unescape(t.group(1).decode("utf-8", "replace")).strip() if t else None
    return url or None, " ".join(title.split()) if title else None
