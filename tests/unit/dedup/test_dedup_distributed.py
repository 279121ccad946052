"""The distributed path's core: a job's items run in any order, by any worker, some twice or after
a worker died, give the single-process output."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from contracts.events import DedupOptions
from services.dedup.core import DedupInputError, run_dedup
from services.dedup.core.distributed import (
    Plan,
    compute_cluster,
    compute_pairs,
    compute_signatures,
    make_plan,
    result_name,
)
from services.dedup.core.pipeline import load_prior_index

WORDS = "river mountain harbour market library festival valley winter summer railway copper silk".split()


def dataset(root: Path, name: str, shards: int = 4, seed: int = 0) -> Path:
    rng = random.Random(seed)
    base = [" ".join(rng.choice(WORDS) for _ in range(80)) for _ in range(40)]
    folder = root / name
    (folder / "data").mkdir(parents=True)
    entries = []
    for s in range(shards):
        rows = []
        for i in range(15):
            text = base[(7 * s + i) % 40]
            if i % 4 == 1:  # a near copy with one word changed
                words = text.split()
                words[rng.randrange(80)] = "changed"
                text = " ".join(words)
            rows.append({"id": f"{name}-{s}-{i}", "text": text})
        with gzip.open(folder / "data" / f"p{s}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        entries.append({"path": f"data/p{s}.jsonl.gz"})
    (folder / "manifest.json").write_text(
        json.dumps({"dataset_id": name, "documents": 60, "shards": entries})
    )
    return folder


def run_items(plan: Plan, work: Path, out: Path, order_seed: int) -> dict:
    """Every item of every stage, each stage's items in a shuffled order; returns the manifest."""
    plan = Plan.from_json(plan.to_json())  # what a worker reads back from the work folder
    prior = load_prior_index(plan.options.against_indexes, plan.options)
    shards = [Path(u.removeprefix("file://")) for u in plan.shards]
    rng = random.Random(order_seed)
    for stage in ("signatures", "pairs"):
        items = list(range(plan.count(stage)))
        rng.shuffle(items)
        for i in items:
            out_path = work / result_name(stage, i)
            if stage == "signatures":
                compute_signatures(shards[i], plan.options, out_path)
            else:
                sigs = [work / result_name("signatures", j) for j in range(plan.count("signatures"))]
                compute_pairs(plan, i, sigs, prior, out_path)
    sigs = [work / result_name("signatures", j) for j in range(plan.count("signatures"))]
    pairs = [work / result_name("pairs", j) for j in range(plan.count("pairs"))]
    return compute_cluster(plan, sigs, pairs, prior, shards, out)


@pytest.mark.parametrize(
    "options",
    [DedupOptions(), DedupOptions(near=False), DedupOptions(exact=False, bands=10, rows=4)],
    ids=["default", "exact-only", "near-only"],
)
def test_items_in_any_order_give_the_single_process_output(tmp_path: Path, options: DedupOptions) -> None:
    folder = dataset(tmp_path, "src")
    expected = run_dedup([folder], tmp_path / "one", "src-dedup", options)
    plan = make_plan("j1", "src-dedup", [folder], options, lambda p: p.resolve().as_uri(), bands_per_item=3)
    assert plan.count("signatures") == 4 and plan.count("pairs") == (
        0 if not options.near else -(-options.bands // 3)
    )
    assert plan.next_stage("signatures") == ("pairs" if options.near else "cluster")
    got = run_items(plan, tmp_path / "work", tmp_path / "dist", order_seed=1)
    assert got == expected
    for key in ("shards", "removed_shards"):
        for s in got[key]:
            assert (tmp_path / "dist" / s["path"]).read_bytes() == (tmp_path / "one" / s["path"]).read_bytes()


def test_redone_and_partial_items_change_nothing(tmp_path: Path) -> None:
    folder = dataset(tmp_path, "src")
    old = dataset(tmp_path, "old", shards=1, seed=0)  # shares texts with src: prior duplicates
    run_dedup([old], tmp_path / "old-out", "old-dedup")
    options = DedupOptions(against_indexes=[str(tmp_path / "old-out")])
    expected = run_dedup([folder], tmp_path / "one", "src-dedup", options)
    assert expected["stats"]["prior_exact_duplicates"] + expected["stats"]["prior_near_duplicates"] > 0
    plan = make_plan("j1", "src-dedup", [folder], options, lambda p: p.resolve().as_uri())
    work = tmp_path / "work"
    # A worker killed while writing leaves a temporary file, never a result; a second worker
    # writes the same result again: both are harmless.
    (work / "signatures").mkdir(parents=True)
    (work / "signatures" / "00002.npz.tmp").write_bytes(b"half written")
    first = run_items(plan, work, tmp_path / "dist", order_seed=2)
    again = run_items(plan, work, tmp_path / "dist", order_seed=3)
    assert first == again == expected
    with (
        np.load(tmp_path / "dist" / "index" / "index.npz") as x,
        np.load(tmp_path / "one" / "index" / "index.npz") as y,
    ):
        assert all((x[k] == y[k]).all() for k in ("ids", "keys", "sigs"))


def test_plan_refuses_an_empty_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DedupInputError, match="no documents"):
        make_plan("j", "x", [tmp_path / "empty"], DedupOptions(), lambda p: p.as_uri())
