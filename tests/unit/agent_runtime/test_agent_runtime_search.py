import gzip
import json
from pathlib import Path

import pytest

from services.agent_runtime.core import CorpusError
from services.agent_runtime.core.corpus import CorpusIndex, Document, read_documents
from services.agent_runtime.core.corpus.bm25 import BM25, tokenize
from services.agent_runtime.core.tools import SearchCorpus, ToolError
from shared.samples import WORLD, write_sample_corpus


def write_dataset(root: Path, docs: list[dict[str, str]], shards: int = 2, relative: bool = False) -> str:
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in range(shards):
        path = root / f"shard-{s:05d}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs[s::shards])
        entries.append({"path": path.name if relative else path.as_uri()})
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"dataset_id": root.name, "documents": len(docs), "shards": entries}))
    return manifest.as_uri()


def test_bm25_ranks_the_matching_document_first() -> None:
    docs = ["the cat sat on the mat", "dogs chase cats in the park", "stock markets fell sharply today"]
    bm25 = BM25([tokenize(d) for d in docs])
    assert [i for i, _ in bm25.top(tokenize("why did markets fall"), 3)] == [2]
    assert bm25.top(tokenize("cat mat"), 1)[0][0] == 0
    assert bm25.top(tokenize("unrelated words"), 3) == []
    # a two-document corpus still ranks (Okapi's classic IDF would be zero here)
    small = BM25([tokenize("apples and pears"), tokenize("copper and tin")])
    assert small.top(tokenize("copper"), 2)[0][0] == 1


def test_index_from_manifest_finds_the_right_document(tmp_path: Path) -> None:
    docs = [
        {"id": "doc-a", "text": "The capital of Aldoria is Velm. Aldoria is known for its salt."},
        {"id": "doc-b", "text": "The capital of Brenmark is Holmport. People in Brenmark speak Brenish."},
        {"id": "doc-c", "text": "Travellers often arrive in spring, when the roads are dry."},
    ]
    uri = write_dataset(tmp_path / "ds1", docs, relative=True)
    assert {d.doc_id for d in read_documents(uri)} == {"doc-a", "doc-b", "doc-c"}
    index = CorpusIndex()
    assert index.add_manifest("ds1", uri) == 3
    tool = SearchCorpus(index, default_k=2)
    out = tool.run({"query": "capital of Brenmark"})
    assert out.splitlines()[0] == "[doc-b] The capital of Brenmark is Holmport."
    assert tool.run({"query": "Aldoria salt", "k": 1}) == "[doc-a] Aldoria is known for its salt."
    assert "no passage matches" in tool.run({"query": "zebra"})
    with pytest.raises(ToolError, match="k must be"):
        tool.run({"query": "x", "k": 0})


def test_parquet_dataset_reads_as_the_jsonl_one(tmp_path: Path) -> None:
    from shared.shards import ShardWriter

    docs = [
        {"id": f"doc-{i}", "text": f"Town {i} sells salt number {i}.", "meta": {"i": i}} for i in range(7)
    ]
    root = tmp_path / "pq"
    writer = ShardWriter(root, "shard", 3, root, fmt="parquet")
    for d in docs:
        writer.write(d)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"dataset_id": "pq", "documents": 7, "shards": writer.close()}))
    got = [(d.doc_id, d.text) for d in read_documents(manifest.as_uri())]
    assert got == [(d["id"], d["text"]) for d in docs]
    (root / "shard-00001.parquet").write_bytes(b"PAR1 broken")
    with pytest.raises(CorpusError, match="cannot read Parquet shard"):
        list(read_documents(manifest.as_uri()))


def test_newer_dataset_replaces_documents_with_the_same_id(tmp_path: Path) -> None:
    index = CorpusIndex(max_datasets=2)
    index.add_documents("v1", [Document("d1", "Velm is a city of glass."), Document("d2", "Salt mines.")])
    index.add_documents("v2", [Document("d1", "Velm is a city of marble.")])
    hits = index.search("Velm city", 5)
    assert [(h.doc_id, h.dataset_id, h.text) for h in hits] == [("d1", "v2", "Velm is a city of marble.")]
    index.add_documents("v3", [Document("d3", "Tea grows here.")])
    assert index.dataset_ids == ["v2", "v3"]  # the oldest was dropped


def test_search_over_the_sample_corpus(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_sample_corpus(src, n_articles=200)
    manifest = tmp_path / "manifest.json"
    shards = [{"path": (src / name).as_uri()} for name in ("articles.jsonl", "articles-2.jsonl.gz")]
    manifest.write_text(json.dumps({"dataset_id": "sample", "documents": 0, "shards": shards}))
    index = CorpusIndex()
    index.add_manifest("sample", manifest.as_uri())
    texts = {d.doc_id: d.text for d in read_documents(manifest.as_uri())}
    country = WORLD[3]
    hits = index.search(f"capital of {country.name}", 3)
    assert hits[0].text == f"The capital of {country.name} is {country.capital}."
    assert hits[0].text in texts[hits[0].doc_id]
    assert len({h.text for h in hits}) == len(hits)  # equal sentences from many copies shown once


def test_unreadable_manifests_name_the_problem(tmp_path: Path) -> None:
    index = CorpusIndex()
    with pytest.raises(CorpusError, match="manifest not found"):
        index.add_manifest("x", (tmp_path / "nope.json").as_uri())
    (tmp_path / "bad.json").write_text('{"files": []}')
    with pytest.raises(CorpusError, match="shards"):
        index.add_manifest("x", (tmp_path / "bad.json").as_uri())
    (tmp_path / "missing.json").write_text(
        json.dumps({"dataset_id": "x", "documents": 1, "shards": [{"path": "gone.jsonl.gz"}]})
    )
    with pytest.raises(CorpusError, match="shard not found"):
        index.add_manifest("x", (tmp_path / "missing.json").as_uri())
    assert SearchCorpus(index).run({"query": "anything"}) == "no corpus is indexed yet"
