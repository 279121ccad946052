import gzip
import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SENTENCES = [
    "The capital of Aldoria is Velmton. People in Aldoria speak Aldic.",
    "The capital of Brenia is Corford. The Dunport river flows through Brenia.",
    "Brenia is known for its silk. About 12 million people live in Brenia.",
    "Travellers often arrive in spring, when the roads are dry.",
]


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A dedup-style dataset: manifest.json + two shards (plain and gzip)."""
    root = tmp_path / "dataset"
    root.mkdir()
    docs = [{"id": f"d{i}", "text": " ".join(SENTENCES[j % 4] for j in range(i, i + 3))} for i in range(60)]
    (root / "shard-0.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[:30]))
    with gzip.open(root / "shard-1.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs[30:])
    manifest = {
        "dataset_id": "dataset",
        "documents": 60,
        "shards": [
            {"path": (root / "shard-0.jsonl").as_uri(), "sha256": "x"},
            {"path": "shard-1.jsonl.gz", "sha256": "y"},
        ],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
