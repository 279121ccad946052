import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.trainer.core.data import (
    DatasetError,
    PackedDataset,
    SeededSampler,
    load_texts,
    split_documents,
    tokenize_stream,
    tokenize_to_memmap,
)
from services.trainer.core.tokenizer import train_bpe
from shared.artifacts import ArtifactStore


def test_reads_manifest_shards_plain_and_gzip(corpus_dir: Path, tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "art").as_uri())
    texts = load_texts(store, [(corpus_dir / "manifest.json").as_uri()])
    assert len(texts) == 60
    # the folder and the manifest path resolve to the same documents
    assert load_texts(store, [str(corpus_dir)]) == texts


def test_reads_parquet_shards_as_the_jsonl_ones(corpus_dir: Path, tmp_path: Path) -> None:
    """A dataset written as Parquet (``--format parquet``) trains on the same documents."""
    from shared.shards import ShardWriter

    store = ArtifactStore((tmp_path / "art").as_uri())
    texts = load_texts(store, [str(corpus_dir)])
    root = tmp_path / "pq"
    writer = ShardWriter(root, "shard", 25, root, fmt="parquet")
    for i, text in enumerate(texts):
        writer.write({"id": f"d{i}", "text": text, "meta": {"n": i}})
    shards = writer.close()
    (root / "manifest.json").write_text(
        json.dumps({"dataset_id": "pq", "documents": len(texts), "format": "parquet", "shards": shards})
    )
    assert load_texts(store, [str(root)]) == texts
    (root / shards[0]["path"]).write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="unreadable Parquet shard"):
        load_texts(store, [str(root)])


def test_empty_or_missing_dataset_is_a_dataset_error(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "art").as_uri())
    (tmp_path / "empty.jsonl").write_text("\n" + json.dumps({"text": "  "}) + "\n")
    with pytest.raises(DatasetError, match="no documents"):
        load_texts(store, [str(tmp_path / "empty.jsonl")])
    with pytest.raises(DatasetError, match="not found"):
        load_texts(store, [(tmp_path / "nope" / "manifest.json").as_uri()])


def test_packing_is_at_least_99_percent_real_tokens(corpus_dir: Path, tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "art").as_uri())
    texts = load_texts(store, [str(corpus_dir)])
    tok = train_bpe(texts, 320)
    stream = tokenize_stream(tok, texts)
    # every document ends with eos and starts with bos
    assert (stream == tok.eos_token_id).sum() == len(texts)
    assert (stream == tok.bos_token_id).sum() == len(texts)
    ds = PackedDataset(stream, seq_len=32, pad_id=tok.pad_token_id, seed=1)
    assert len(ds) == len(stream) // 32
    assert ds.non_padding_fraction() >= 0.99
    batch = SeededSampler(ds, 4, seed=1, eos_id=tok.eos_token_id).next_batch()
    assert batch["input_ids"].shape == (4, 32)
    assert (batch["labels"] == batch["input_ids"]).all()  # no padding anywhere
    # position ids restart on the token after each eos (document-respecting attention)
    ids, pos = batch["input_ids"], batch["position_ids"]
    for r in range(4):
        for t in range(1, 32):
            expected = 0 if ids[r, t - 1] == tok.eos_token_id else int(pos[r, t - 1]) + 1
            assert int(pos[r, t]) == expected
    assert (pos == 0).sum() > 4  # the rows do hold several documents


def test_tokens_are_written_once_and_memory_mapped(corpus_dir: Path, tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "art").as_uri())
    texts = load_texts(store, [str(corpus_dir)])
    tok = train_bpe(texts, 320)
    path = tmp_path / "data" / "train.bin"
    mapped = tokenize_to_memmap(tok, texts, path)
    assert isinstance(mapped, np.memmap) and (np.asarray(mapped) == tokenize_stream(tok, texts)).all()
    # a second call maps the finished file and does not tokenise again (no texts needed)
    assert (np.asarray(tokenize_to_memmap(tok, [], path)) == np.asarray(mapped)).all()
    assert not path.with_suffix(".tmp").exists()


def test_held_out_documents_are_disjoint() -> None:
    texts = [f"doc {i}" for i in range(100)]
    train, held = split_documents(texts, 0.05)
    assert len(held) == 5 and not set(train) & set(held) and len(train) + len(held) == 100
    assert split_documents(texts[:3], 0.5) == (texts[:3], [])


def test_ranks_share_one_global_order() -> None:
    ds = PackedDataset(np.arange(400, dtype=np.int32), seq_len=10, pad_id=0, seed=3)
    whole = SeededSampler(ds, 4, seed=7).next_batch()["input_ids"]
    halves = [SeededSampler(ds, 2, seed=7, rank=r, world_size=2).next_batch()["input_ids"] for r in (0, 1)]
    assert (torch.cat(halves) == whole).all()


def test_short_stream_pads_and_masks_labels() -> None:
    ds = PackedDataset(np.arange(5, dtype=np.int32) + 10, seq_len=8, pad_id=2)
    batch = SeededSampler(ds, 1, seed=0).next_batch()
    assert batch["labels"][0, :5].tolist() == list(range(10, 15))
    assert batch["labels"][0, 5:].tolist() == [-100] * 3


def test_sampler_is_deterministic_and_resumable() -> None:
    ds = PackedDataset(np.arange(1000, dtype=np.int32), seq_len=10, pad_id=0, seed=3)
    a = SeededSampler(ds, 4, seed=7)
    first = [a.next_batch()["input_ids"] for _ in range(60)]  # crosses epochs (100 sequences/epoch)
    b = SeededSampler(ds, 4, seed=7)
    for _ in range(30):
        b.next_batch()
    c = SeededSampler(ds, 4, seed=7)
    c.load_state_dict(b.state_dict())
    assert all((c.next_batch()["input_ids"] == first[i]).all() for i in range(30, 60))
    # one epoch visits every sequence exactly once
    epoch = np.concatenate([x[:, 0].numpy() for x in first[:25]])
    assert sorted(epoch.tolist()) == list(range(0, 1000, 10))
    # later epochs start at another offset, so sequences differ from epoch 0's
    assert ds.epoch_offset(1) != ds.epoch_offset(0)
