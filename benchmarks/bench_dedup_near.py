"""Near-duplicate dedup: puyu's dedup core against datasketch MinHashLSH with the same parameters.

The labelled set is built from real text in ``../shared/data`` (gsm8k problems and CMMLU questions
joined into documents of a few hundred words), then near duplicates are made with known edits:
word insertions, deletions, sentence reorderings and added boilerplate lines. Ground truth: every
edited copy is a duplicate to remove; every original is kept (originals sort first by id, so
both methods keep them). Both sides use 5-gram word shingles (CJK characters as words),
14 bands × 8 rows, and verify LSH candidates by estimated Jaccard ≥ 0.8.

puyu is timed end to end through ``run_dedup`` (reading and writing gzip shards included), in one
process and with 2 worker processes; datasketch is timed in memory only (its MinHash +
MinHashLSH query/insert, on the same tokens). The runs alternate, ``BENCH_REPEAT`` times (3), and
each side's best wall time counts: on a shared machine the other users' load comes and goes, and
the best of interleaved runs is the figure least touched by it. CPU seconds (one process each,
so the ratio of the two is independent of waiting for a core) are reported beside, with the
load average. Prints one JSON line last.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from contracts.events import DedupOptions
from services.dedup.core import run_dedup
from services.dedup.core.minhash import tokens

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BANDS, ROWS, K, THRESHOLD = 14, 8, 5, 0.8
N_EN, N_ZH, DUP_FRACTION = 4000, 1000, 0.4
BOILERPLATE = [
    "Share this article with your friends on social media.",
    "Subscribe to our newsletter for more worked examples every week.",
    "Copyright 2026 Example Learning Ltd. All rights reserved.",
    "本文版权归原作者所有，转载请注明出处。",
]


def _originals(rng: random.Random) -> list[str]:
    probs = [json.loads(line) for line in (DATA / "gsm8k" / "train.jsonl").open()]
    rng.shuffle(probs)
    en = [" ".join(f"{p['question']} {p['answer']}" for p in probs[i * 3 : i * 3 + 3]) for i in range(N_EN)]
    en = [t.replace("\n", " ") for t in en]
    qs: list[str] = []
    for f in sorted((DATA / "cmmlu" / "test").glob("*.csv")):
        with f.open(encoding="utf-8") as fh:
            qs += [f"{r['Question']} {r['A']} {r['B']} {r['C']} {r['D']}" for r in csv.DictReader(fh)]
    rng.shuffle(qs)
    zh = ["".join(qs[i * 6 : i * 6 + 6]) for i in range(N_ZH)]
    return [t for t in en + zh if len(t) >= 200]


def _edit(text: str, rng: random.Random) -> str:
    """One or two light edits: what a re-post, a template or a scraper leaves behind."""
    cjk = not any(c == " " for c in text[:200])
    sep = "" if cjk else " "
    units = list(text) if cjk else text.split()
    for kind in rng.sample(["insert", "delete", "reorder", "boilerplate"], k=rng.randint(1, 2)):
        if kind == "insert":
            for _ in range(rng.randint(1, 3)):
                units.insert(rng.randrange(len(units)), rng.choice(units))
        elif kind == "delete":
            for _ in range(rng.randint(1, 3)):
                del units[rng.randrange(len(units))]
        elif kind == "reorder":
            cut = sorted(rng.sample(range(1, len(units)), 2))
            units = units[: cut[0]] + units[cut[1] :] + units[cut[0] : cut[1]]
        else:
            line = rng.choice(BOILERPLATE)
            units = [*units, *(list(line) if cjk else line.split())]
    return sep.join(units)


def build_set(seed: int = 0) -> tuple[list[tuple[str, str]], set[str]]:
    rng = random.Random(seed)
    originals = _originals(rng)
    docs = [(f"a{i:06d}", t) for i, t in enumerate(originals)]
    dups: set[str] = set()
    for j in range(int(len(originals) * DUP_FRACTION)):
        src = rng.randrange(len(originals))
        did = f"b{j:06d}"
        docs.append((did, _edit(originals[src], rng)))
        dups.add(did)
    return docs, dups


def f1(removed: set[str], dups: set[str]) -> dict[str, float]:
    tp = len(removed & dups)
    p = tp / len(removed) if removed else 0.0
    r = tp / len(dups) if dups else 0.0
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4),
    }


def write_input(docs: list[tuple[str, str]], src: Path, shards: int = 4) -> None:
    src.mkdir()
    per = -(-len(docs) // shards)
    for s in range(shards):
        with gzip.open(src / f"docs-{s}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as f:
            for did, text in docs[s * per : (s + 1) * per]:
                f.write(json.dumps({"id": did, "text": text}, ensure_ascii=False) + "\n")


def run_puyu(src: Path, out: Path, workers: int) -> tuple[float, float, set[str]]:
    opts = DedupOptions(shingle_size=K, bands=BANDS, rows=ROWS, jaccard_threshold=THRESHOLD)
    start, cpu = time.perf_counter(), time.process_time()
    m = run_dedup([src], out, "bench", opts, workers=workers)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    removed = {json.loads(line)["id"] for s in m["removed_shards"] for line in gzip.open(out / s["path"])}
    return elapsed, cpu, removed


def run_datasketch(docs: list[tuple[str, str]]) -> tuple[float, float, set[str]]:
    from datasketch import MinHash, MinHashLSH

    start, cpu = time.perf_counter(), time.process_time()
    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    sigs: dict[str, MinHash] = {}
    removed: set[str] = set()
    for did, text in docs:
        toks = tokens(text)  # the same tokens as puyu's (CJK characters as words)
        shingles = {" ".join(toks[i : i + K]) for i in range(max(1, len(toks) - K + 1))}
        m = MinHash(num_perm=BANDS * ROWS, seed=1)
        m.update_batch([s.encode() for s in shingles])
        if any(m.jaccard(sigs[c]) >= THRESHOLD for c in lsh.query(m)):
            removed.add(did)
            continue
        lsh.insert(did, m)
        sigs[did] = m
    return time.perf_counter() - start, time.process_time() - cpu, removed


def main() -> None:
    if not (DATA / "gsm8k" / "train.jsonl").is_file():
        print(f"skip: {DATA} not found (needs ../shared/data with gsm8k and cmmlu)", file=sys.stderr)
        sys.exit(0)
    docs, dups = build_set()
    workers = min(2, os.cpu_count() or 1)
    repeat = max(1, int(os.environ.get("BENCH_REPEAT", "3")))
    load_before = os.getloadavg()
    wall: dict[str, list[float]] = {"one": [], "par": [], "ds": []}
    cpu: dict[str, list[float]] = {"one": [], "ds": []}
    with tempfile.TemporaryDirectory() as tmp:
        write_input(docs, Path(tmp) / "in")
        for r in range(repeat):  # interleaved: load that comes and goes hits every side alike
            t, c, rm_one = run_puyu(Path(tmp) / "in", Path(tmp) / f"out1-{r}", 1)
            wall["one"].append(t)
            cpu["one"].append(c)
            t, _, rm_par = run_puyu(Path(tmp) / "in", Path(tmp) / f"out2-{r}", workers)
            wall["par"].append(t)
            t, c, rm_ds = run_datasketch(docs)
            wall["ds"].append(t)
            cpu["ds"].append(c)
    load_after = os.getloadavg()
    t_one, t_par, t_ds = min(wall["one"]), min(wall["par"]), min(wall["ds"])
    c_one, c_ds = min(cpu["one"]), min(cpu["ds"])
    q_one, q_par, q_ds = f1(rm_one, dups), f1(rm_par, dups), f1(rm_ds, dups)
    n = len(docs)
    print(f"documents {n}, duplicates {len(dups)}, best of {repeat} interleaved runs", file=sys.stderr)
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}", file=sys.stderr)
    print(f"puyu 1 process   {n / t_one:9.1f} docs/s  {n / c_one:9.1f} per CPU s  {q_one}", file=sys.stderr)
    print(f"puyu {workers} processes {n / t_par:9.1f} docs/s  {q_par}", file=sys.stderr)
    print(f"datasketch       {n / t_ds:9.1f} docs/s  {n / c_ds:9.1f} per CPU s  {q_ds}", file=sys.stderr)
    print(
        f"first (cold) runs: puyu {n / wall['one'][0]:.1f}, datasketch {n / wall['ds'][0]:.1f} docs/s",
        file=sys.stderr,
    )
    result = {
        "benchmark": "dedup_near",
        "documents": n,
        "repeat": repeat,
        "puyu_docs_per_s": round(n / t_one, 1),
        f"puyu_{workers}proc_docs_per_s": round(n / t_par, 1),
        "datasketch_docs_per_s": round(n / t_ds, 1),
        "speedup": round(t_ds / t_one, 2),
        f"speedup_{workers}proc": round(t_ds / t_par, 2),
        "speedup_cpu": round(c_ds / c_one, 2),
        "puyu_f1": q_one["f1"],
        "datasketch_f1": q_ds["f1"],
        "puyu": q_one,
        "datasketch": q_ds,
        "loadavg": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
