"""The finetuner as the service runs it: inputs fetched from the artifact store, the run in a folder
named after the job, and the outputs stored back as artifacts.

The run folder and the artifact keys derive from the job id, so a redelivered request resumes the
same run and overwrites the same artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contracts.events import ArtifactRef, FinetuneSpec, ModelRef
from services.finetuner.core.finetune import run_finetune
from services.finetuner.core.refusals import InvalidInput
from services.finetuner.core.training import Progress
from shared.artifacts import ArtifactStore
from shared.read_roots import ReadRoots


def run_id_for(job_id: str) -> str:
    # The job board's key alphabet ([-_=.a-zA-Z0-9]): the run id reads the same there.
    return "ft-" + "".join(c if c.isalnum() or c in "-_=." else "_" for c in job_id)


@dataclass(frozen=True)
class FinetuneResult:
    run_id: str
    steps: int
    model: ArtifactRef  # the merged model
    adapter: ArtifactRef | None  # the PEFT adapter (every method but 'full')
    metrics: dict[str, float]


class Finetuner:
    def __init__(
        self,
        store: ArtifactStore,
        device: str = "auto",
        num_threads: int | None = None,
        read_roots: ReadRoots | None = None,
    ) -> None:
        self.store, self.device, self.num_threads = store, device, num_threads
        self.read_roots = read_roots or ReadRoots([store.root_uri])  # where its inputs may come from

    def finetune(
        self,
        job_id: str,
        spec: FinetuneSpec,
        *,
        base: ModelRef,
        base_artifact: ArtifactRef,
        dataset_uri: str,
        progress: Progress | None = None,
    ) -> FinetuneResult:
        """Finetune the base model on the dataset; refusals (``FinetuneRefusal``) name the problem."""
        self.read_roots.require(base_artifact.uri, "base model")
        self.read_roots.require(dataset_uri, "dataset")
        run_id = run_id_for(job_id)
        outcome = run_finetune(
            self._fetch(base_artifact.uri),
            self._fetch(dataset_uri),
            spec,
            self.store.local_staging(f"runs/{run_id}"),
            base_ref={"model_name": base.model_name, "version": base.version, **base_artifact.model_dump()},
            dataset_uri=dataset_uri,
            device=self.device,
            num_threads=self.num_threads,
            progress=progress,
        )
        adapter = (
            self.store.put_dir(outcome.adapter_dir, f"runs/{run_id}/adapter")
            if outcome.adapter_dir is not None
            else None
        )
        model = self.store.put_dir(outcome.model_dir, f"runs/{run_id}/model")
        return FinetuneResult(run_id, outcome.steps, model, adapter, outcome.metrics)

    def _fetch(self, uri: str) -> Path:
        try:
            return self.store.fetch(uri)
        except FileNotFoundError as exc:
            raise InvalidInput(str(exc)) from exc
