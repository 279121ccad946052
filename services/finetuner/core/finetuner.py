"""The finetuner as the service runs it, a controller: inputs fetched from the artifact store, the
run submitted to a launcher (``shared.launch``: in this process by default, torchrun, Slurm,
Kubernetes) in a folder named after the job, watched, and its outputs stored back as artifacts.

The run folder and the artifact keys derive from the job id, so a redelivered request re-attaches
to (or resumes) the same run and overwrites the same artifacts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from contracts.events import ArtifactRef, FinetuneSpec, ModelRef
from services.finetuner.core.controller import RunController
from services.finetuner.core.quantizer import Quantizer
from services.finetuner.core.refusals import InvalidInput
from services.finetuner.core.runs import RunInputs
from services.finetuner.core.training import Progress
from services.finetuner.core.validation import validate
from shared.artifacts import ArtifactStore
from shared.launch import Launcher
from shared.launch.local import LocalLauncher
from shared.launch.stops import RunStops
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


class Finetuner(RunStops):
    def __init__(
        self,
        store: ArtifactStore,
        device: str = "auto",
        num_threads: int | None = None,
        read_roots: ReadRoots | None = None,
        launcher: Launcher | None = None,
        *,
        nprocs_per_node: int = 1,
        nnodes: int = 1,
        gpus_per_node: int = 0,
        runs_dir: Path | None = None,
        poll_seconds: float = 0.5,
    ) -> None:
        self.store, self.device, self.num_threads = store, device, num_threads
        self.read_roots = read_roots or ReadRoots([store.root_uri])  # where its inputs may come from
        self.launcher = launcher or LocalLauncher()
        self.controller = RunController(
            self.launcher,
            nprocs_per_node=nprocs_per_node,
            nnodes=nnodes,
            gpus_per_node=gpus_per_node,
            poll_seconds=poll_seconds,
        )
        self.runs_dir = runs_dir
        RunStops.__init__(self)
        self.quantizer = Quantizer(store, num_threads, self.read_roots)  # quantize.requested jobs

    # ------------------------------------------------------------------------------- finetuning
    def run_dir(self, run_id: str) -> Path:
        """The run folder: under PUYU_LAUNCH_RUNS_DIR, else the artifact store's runs/ (as before)."""
        if self.runs_dir is not None:
            path = self.runs_dir / run_id
            path.mkdir(parents=True, exist_ok=True)
            return path
        return self.store.local_staging(f"runs/{run_id}")

    def finetune(
        self,
        job_id: str,
        spec: FinetuneSpec,
        *,
        base: ModelRef,
        base_artifact: ArtifactRef,
        dataset_uri: str,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> FinetuneResult:
        """Finetune the base model on the dataset through the launcher; refusals (``FinetuneRefusal``,
        ``LauncherUnavailable``) name the problem; ``FinetuneCancelled`` once ``cancel`` stopped it."""
        self.read_roots.require(base_artifact.uri, "base model")
        self.read_roots.require(dataset_uri, "dataset")
        if not self.launcher.outlives_controller:  # the run uses this node: refuse here what it would
            validate(spec, device=self.device)
        self.launcher.check()
        run_id = run_id_for(job_id)
        inputs = RunInputs(
            job_id=job_id,
            spec=spec,
            base_dir=self._fetch(base_artifact.uri),
            dataset=self._fetch(dataset_uri),
            base_ref={"model_name": base.model_name, "version": base.version, **base_artifact.model_dump()},
            dataset_uri=dataset_uri,
            device=self.device,
            num_threads=self.num_threads,
        )
        result = self.controller.run(
            run_id,
            self.run_dir(run_id),
            inputs,
            progress=progress,
            cancel=cancel,
            stopping=lambda: self.stopping,
        )
        adapter_dir = result.extra.get("adapter")
        adapter = (
            self.store.put_dir(Path(adapter_dir), f"runs/{run_id}/adapter")
            if adapter_dir is not None
            else None
        )
        model = self.store.put_dir(Path(result.checkpoint), f"runs/{run_id}/model")
        return FinetuneResult(run_id, result.step, model, adapter, result.metrics)

    def _fetch(self, uri: str) -> Path:
        try:
            return self.store.fetch(uri)
        except FileNotFoundError as exc:
            raise InvalidInput(str(exc)) from exc
