"""Tasks as YAML over local jsonl / csv / parquet data, and the per-sample result cache."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.evaluator.core.backends import Loglikelihood, Progress, RollingLoglikelihood
from services.evaluator.core.cache import ResultCache
from services.evaluator.core.loaders import DataUnavailable, load
from services.evaluator.core.runner import build_prompt, evaluate, run_task
from services.evaluator.core.tasks import (
    GenerationConfig,
    UnknownTask,
    get_task,
    load_task_file,
    resolve_tasks,
)

ROWS = [
    {"qid": "q1", "q": "2+2", "a": "4", "label": "B"},
    {"qid": "q2", "q": "3+3", "a": "6", "label": "A"},
    {"qid": "q3", "q": "1+1", "a": "2", "label": "D"},
]

MC_YAML = """
description: arithmetic as multiple choice
loader: {kind: jsonl, path: arith.jsonl, id_field: qid, fewshot_path: shots.jsonl}
output_type: multiple_choice
prompt_template: "Q: {q}\\nA:"
choices: [" A", " B", " C", " D"]
target_field: label_choice
num_fewshot: 1
fewshot_target_template: " {a}"
metrics: [accuracy]
primary_metric: accuracy
"""


class CountingOracle:
    """Knows every answer; counts the requests it served (to prove the cache spares them)."""

    def __init__(self, gold: dict[str, str] | None = None, answers: dict[str, str] | None = None) -> None:
        self.gold, self.answers, self.calls = gold or {}, answers or {}, 0

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[Loglikelihood]:
        self.calls += len(requests)
        return [Loglikelihood(0.0 if self.gold[c] == x else -3.0, True) for c, x in requests]

    def loglikelihood_rolling(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> list[RollingLoglikelihood]:
        self.calls += len(texts)
        return [RollingLoglikelihood(-1.0 * len(t), len(t)) for t in texts]

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, progress: Progress | None = None
    ) -> list[str]:
        self.calls += len(prompts)
        return [self.answers[p] for p in prompts]


def _write_data(root: Path) -> None:
    with open(root / "arith.jsonl", "w") as f:
        for r in ROWS:
            f.write(json.dumps({**r, "label_choice": " " + r["label"]}) + "\n")
    (root / "shots.jsonl").write_text(json.dumps({"q": "5+5", "a": "10"}) + "\n")


def test_yaml_multiple_choice_task_over_jsonl(tmp_path: Path) -> None:
    _write_data(tmp_path)
    (tmp_path / "arith_mc.yaml").write_text(MC_YAML)
    task = get_task("arith_mc", tasks_dir=tmp_path)
    assert task.name == "arith_mc" and task.loader.kind == "jsonl"
    ds = load(task.loader, tmp_path)
    assert [s["id"] for s in ds.samples] == ["q1", "q2", "q3"]
    prompt = build_prompt(task, ds, ds.samples[0])
    assert prompt == "Q: 5+5\nA: 10\n\nQ: 2+2\nA:"
    gold = {build_prompt(task, ds, s): s["label_choice"] for s in ds.samples}
    assert run_task(task, CountingOracle(gold=gold), ds).metrics == {"accuracy": 1.0}
    wrong = {p: " C" for p in gold}  # C is never right here
    assert run_task(task, CountingOracle(gold=wrong), ds).metrics == {"accuracy": 0.0}
    # by path, too; and the version hash does not depend on where the file is
    assert load_task_file(tmp_path / "arith_mc.yaml").version_hash == task.version_hash


def test_csv_and_parquet_generation_tasks(tmp_path: Path) -> None:
    with open(tmp_path / "arith.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "arith.parquet")
    for kind in ("csv", "parquet"):
        task = load_task_file(_gen_yaml(tmp_path, kind))
        ds = load(task.loader, tmp_path)
        answers = {build_prompt(task, ds, s): f" {s['a']}\n" for s in ds.samples}
        assert run_task(task, CountingOracle(answers=answers), ds).metrics == {"accuracy": 1.0}, kind


def _gen_yaml(root: Path, kind: str) -> Path:
    path = root / f"gen_{kind}.yaml"
    path.write_text(
        f"loader: {{kind: {kind}, path: arith.{kind}, id_field: qid}}\n"
        "output_type: generation\nprompt_template: '{q}='\ntarget_field: a\nextractor: first_word\n"
        "metrics: [accuracy]\nprimary_metric: accuracy\n"
    )
    return path


def test_bad_task_files_and_data_are_named(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("loader: {kind: jsonl}\noutput_type: nonsense\n")
    with pytest.raises(UnknownTask, match=r"broken\.yaml"):
        get_task("broken", tasks_dir=tmp_path)
    with pytest.raises(UnknownTask, match="'nope'"):
        resolve_tasks(["nope"], tasks_dir=tmp_path)
    task = load_task_file(_gen_yaml(tmp_path, "jsonl")).model_copy()
    with pytest.raises(DataUnavailable, match=r"arith\.jsonl"):
        load(task.loader, tmp_path)  # the file is absent
    (tmp_path / "arith.jsonl").write_text("{not json\n")
    with pytest.raises(DataUnavailable, match="JSONDecodeError"):
        load(task.loader, tmp_path)
    _write_data(tmp_path)
    (tmp_path / "bad_label.yaml").write_text(MC_YAML.replace("label_choice", "q"))
    bad = get_task("bad_label", tasks_dir=tmp_path)
    with pytest.raises(ValueError, match="not one of"):
        run_task(bad, CountingOracle(), load(bad.loader, tmp_path))


def test_cache_resumes_and_repeats_cost_nothing(tmp_path: Path) -> None:
    task = get_task("demo_facts")
    ds = load(task.loader, None)
    answers = {build_prompt(task, ds, s): " " + s["target"] for s in ds.samples}
    cache = ResultCache(tmp_path / "cache.sqlite")
    first = CountingOracle(answers=answers)
    half = len(ds.samples) // 2
    # an interrupted run: only the first half got scored
    run_task(task, first, ds, shard=(0, half), cache=cache, model_key="m1")
    assert first.calls == half
    resumed = CountingOracle(answers=answers)
    full = run_task(task, resumed, ds, cache=cache, model_key="m1")
    assert resumed.calls == len(ds.samples) - half and full.cached == half
    assert full.metrics == {"accuracy": 1.0}
    again = CountingOracle(answers=answers)
    report = evaluate([task, get_task("perplexity")], again, cache=cache, model_key="m1", limit=10)
    report2 = evaluate([task, get_task("perplexity")], again, cache=cache, model_key="m1", limit=10)
    assert again.calls == 10  # perplexity once; demo_facts never
    assert report.summary() == report2.summary()
    # another model or another task version is not served from the cache
    other = CountingOracle(answers=answers)
    run_task(task, other, ds, cache=cache, model_key="m2", limit=3)
    assert other.calls == 3
    cache.close()
    reopened = ResultCache(tmp_path / "cache.sqlite")
    assert len(reopened.get_many("m1", task.version_hash, [str(s["id"]) for s in ds.samples])) == len(
        ds.samples
    )
