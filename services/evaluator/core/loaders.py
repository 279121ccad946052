"""Loaders: turn a task's LoaderConfig into sample dicts (the fields its templates use).

Every sample has an ``id``; generation samples a ``target``; multiple-choice samples a ``gold``
index. Few-shot examples come from a separate pool (train / dev split), never from the scored set.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.evaluator.core.errors import EvaluatorRefusal
from services.evaluator.core.tasks import LoaderConfig

Sample = dict[str, Any]


class DataUnavailable(EvaluatorRefusal):
    """The task's data is not on this machine: a whole run skips the task with this reason; a shard
    of it cannot be scored here."""


@dataclass
class Dataset:
    samples: list[Sample]
    fewshot_pool: list[Sample] = field(default_factory=list)

    def fewshot_for(self, sample: Sample, k: int) -> list[Sample]:
        """The first k pool examples of the sample's subject (or of the whole pool): deterministic."""
        if k == 0:
            return []
        subject = sample.get("subject")
        pool = [s for s in self.fewshot_pool if subject is None or s.get("subject") == subject]
        return pool[:k]


def load(config: LoaderConfig, data_root: Path | None) -> Dataset:
    loader = _LOADERS[config.kind]
    return loader(config, data_root)


# ------------------------------------------------------------------------------- built-in samples


def _load_heldout(config: LoaderConfig, data_root: Path | None) -> Dataset:
    from shared import samples

    texts = samples.heldout_texts(config.num_samples or 64)
    return Dataset([{"id": f"heldout-{i}", "text": t} for i, t in enumerate(texts)])


def _load_facts(config: LoaderConfig, data_root: Path | None) -> Dataset:
    from shared import samples

    facts = samples.fact_prompts()
    if config.num_samples:
        facts = facts[: config.num_samples]
    return Dataset([{"id": f"fact-{i}", "prompt": p, "target": t} for i, (p, t) in enumerate(facts)])


# ------------------------------------------------------------------------------- files


def _load_text_file(config: LoaderConfig, data_root: Path | None) -> Dataset:
    if not config.path:
        raise DataUnavailable("text_file loader needs a path")
    path = Path(config.path)
    if not path.is_absolute() and data_root is not None:
        path = data_root / path
    if not path.exists():
        raise DataUnavailable(f"perplexity data not found: {path}")
    return Dataset([{"id": f"{path.name}-{i}", "text": t} for i, t in enumerate(read_texts(path))])


def read_texts(path: Path) -> Iterator[str]:
    """Documents of a jsonl file (its ``text`` field) or a plain text file (blank-line separated)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if file.suffix == ".jsonl":
            with open(file, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        text = json.loads(line).get("text", "")
                        if text.strip():
                            yield text
        elif file.suffix in (".txt", ".md"):
            for block in file.read_text(encoding="utf-8").split("\n\n"):
                if block.strip():
                    yield block.strip()


def _data_dir(config: LoaderConfig, data_root: Path | None, name: str) -> Path:
    if data_root is None:
        raise DataUnavailable(f"{name}: no data root configured (PUYU_EVALUATOR_DATA_DIR)")
    path = data_root / (config.path or name)
    if not path.exists():
        raise DataUnavailable(f"{name}: data not found at {path}")
    return path


def gsm8k_answer(answer: str) -> str:
    """The official answer of a GSM8K solution: after the last '####', commas dropped."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def _read_gsm8k(path: Path) -> list[Sample]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                row = json.loads(line)
                out.append(
                    {
                        "id": f"{path.stem}-{i}",
                        "question": row["question"],
                        "answer": row["answer"],
                        "target": gsm8k_answer(row["answer"]),
                    }
                )
    return out


def _load_gsm8k(config: LoaderConfig, data_root: Path | None) -> Dataset:
    root = _data_dir(config, data_root, "gsm8k")
    split = root / f"{config.split}.jsonl"
    if not split.exists():
        raise DataUnavailable(f"gsm8k: split file not found: {split}")
    train = root / "train.jsonl"
    pool = _read_gsm8k(train) if train.exists() and config.split != "train" else []
    return Dataset(_read_gsm8k(split), pool)


_LETTERS = ("A", "B", "C", "D")


def _read_cmmlu(folder: Path, subjects: list[str] | None) -> list[Sample]:
    out: list[Sample] = []
    for file in sorted(folder.glob("*.csv")):
        if subjects is not None and file.stem not in subjects:
            continue
        with open(file, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                answer = row["Answer"].strip()
                if answer not in _LETTERS:
                    continue  # malformed row: never scoreable
                out.append(
                    {
                        "id": f"{file.stem}-{row.get('') or len(out)}",
                        "subject": file.stem,
                        "question": row["Question"],
                        **{k: row[k] for k in _LETTERS},
                        "target": answer,
                        "gold": _LETTERS.index(answer),
                    }
                )
    return out


def _load_cmmlu(config: LoaderConfig, data_root: Path | None) -> Dataset:
    root = _data_dir(config, data_root, "cmmlu")
    split = root / config.split
    if not split.is_dir():
        raise DataUnavailable(f"cmmlu: split folder not found: {split}")
    samples = _read_cmmlu(split, config.subjects)
    if not samples:
        raise DataUnavailable(f"cmmlu: no questions in {split} for subjects {config.subjects}")
    dev = root / "dev"
    pool = _read_cmmlu(dev, config.subjects) if dev.is_dir() and config.split != "dev" else []
    return Dataset(samples, pool)


def _load_humaneval(config: LoaderConfig, data_root: Path | None) -> Dataset:
    path = _data_dir(config, data_root, "humaneval")
    if path.is_dir():
        path = path / "HumanEval.jsonl.gz"
    opener = gzip.open if path.suffix == ".gz" else open
    samples = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                samples.append({**row, "id": row["task_id"], "target": row["canonical_solution"]})
    return Dataset(samples)


# ------------------------------------------------------------------------------- generic files


def read_table(path: Path, kind: str) -> list[Sample]:
    """Rows of a jsonl / csv / parquet file as dicts (``kind`` names the format)."""
    if not path.exists():
        raise DataUnavailable(f"{kind} data not found: {path}")
    try:
        if kind == "jsonl":
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if kind == "csv":
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        import pyarrow.parquet as pq  # optional: only parquet tasks need it

        return list(pq.read_table(path).to_pylist())
    except (ValueError, KeyError, OSError) as exc:  # JSONDecodeError, csv.Error, ArrowInvalid
        raise DataUnavailable(f"cannot read {kind} file {path}: {type(exc).__name__}: {exc}") from exc


def _resolve(path: str, data_root: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or data_root is None else data_root / p


def _load_table(config: LoaderConfig, data_root: Path | None) -> Dataset:
    if not config.path:
        raise DataUnavailable(f"{config.kind} loader needs a path")
    rows = read_table(_resolve(config.path, data_root), config.kind)
    pool = read_table(_resolve(config.fewshot_path, data_root), config.kind) if config.fewshot_path else []
    if config.num_samples:
        rows = rows[: config.num_samples]

    def with_id(row: Sample, n: int, prefix: str) -> Sample:
        key = row.get(config.id_field) if config.id_field else None
        return {**row, "id": str(key) if key is not None else f"{prefix}-{n}"}

    return Dataset(
        [with_id(r, n, Path(config.path).stem) for n, r in enumerate(rows)],
        [with_id(r, n, "fewshot") for n, r in enumerate(pool)],
    )


_LOADERS = {
    "sample_heldout": _load_heldout,
    "sample_facts": _load_facts,
    "text_file": _load_text_file,
    "gsm8k": _load_gsm8k,
    "cmmlu": _load_cmmlu,
    "humaneval": _load_humaneval,
    "jsonl": _load_table,
    "csv": _load_table,
    "parquet": _load_table,
}
