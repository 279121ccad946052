"""The core's sharded runs without a bus: a plan stored under the job's name, shards scored and
stored once, the assembled report equal to a whole run's; refusals for shards that cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contracts.events import ArtifactRef, ModelRef
from services.evaluator.config import EvaluatorSettings
from services.evaluator.core import Evaluator, ShardRefused, ShardWork, evaluate_model
from shared import samples
from shared.artifacts import ArtifactStore
from tests.support.tiny_model import build_tiny_model

torch.set_num_threads(1)
TASKS = ["perplexity", "demo_facts"]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Evaluator, ModelRef, ArtifactRef]:
    store = ArtifactStore((tmp_path / "artifacts").as_uri())
    staging = store.local_staging("models/m/v1")
    build_tiny_model(staging, samples.heldout_texts(60), vocab_size=300)
    artifact = store.put_dir(staging, "models/m/v1")
    settings = EvaluatorSettings(
        home=tmp_path / "home",
        artifact_root=store.root_uri,
        evaluator_limit=5,
        evaluator_batch_size=4,
        evaluator_num_threads=1,
        evaluator_data_dir=tmp_path / "nodata",
        evaluator_shard_size=2,
        evaluator_no_cache=True,
        evaluator_dtype="float32",  # shards and the whole run batch differently: compared in fp32
    )
    return Evaluator(settings, store), ModelRef(model_name="m", version=1), artifact


def test_shards_assemble_to_the_whole_run(setup: tuple[Evaluator, ModelRef, ArtifactRef]) -> None:
    core, model, artifact = setup
    plan = core.plan("job-1", model, artifact, TASKS, {"note": "kept"})
    again = core.read_plan(model, "job-1")  # what another replica reads
    assert again.to_json() == plan.to_json() and again.extra == {"note": "kept"}
    items = core.work_items(again)
    assert [(w.task, w.start, w.stop) for w in items] == [
        (t, s, min(s + 2, 5)) for t in TASKS for s in (0, 2, 4)
    ]
    for n, work in enumerate(items):
        assert core.stored_count(again) == n and not core.is_stored(work)
        core.run_shard(model, artifact, work)
        assert core.is_stored(work)
    stored = core.finish(again)
    whole = evaluate_model(
        core.store.fetch(artifact.uri),
        TASKS,
        limit=5,
        batch_size=4,
        dtype="float32",
        data_root=core.settings.evaluator_data_dir,
    )
    for outcome in stored.report.outcomes:
        assert outcome.num_samples == 5
        for metric, value in whole.summary()[outcome.task.name].items():
            assert outcome.metrics[metric] == pytest.approx(value, rel=1e-4), (outcome.task.name, metric)
    assert stored.details_uri == core.store.uri("evals/m/v1")
    assert core.store.read_json(f"{stored.details_uri}/summary.json") == stored.report.summary()
    # a second job over the same version finds every shard stored
    assert core.stored_count(core.plan("job-2", model, artifact, TASKS)) == len(items)


def test_shards_that_cannot_run_are_refused(setup: tuple[Evaluator, ModelRef, ArtifactRef]) -> None:
    core, model, artifact = setup
    with pytest.raises(ShardRefused, match="empty shard"):
        ShardWork("demo_facts", "x", 2, 2, None, "file:///nowhere")
    with pytest.raises(ShardRefused, match="no shard plan"):
        core.read_plan(model, "never-planned")
    work = core.work_items(core.plan("job-1", model, artifact, ["demo_facts"]))[0]
    other = ShardWork(work.task, "0" * 64, work.start, work.stop, work.limit, work.result_uri)
    with pytest.raises(ShardRefused, match="definition differs"):
        core.run_shard(model, artifact, other)
    assert not core.is_stored(other)
