"""A finetune as a launched run: what the controller writes into the run folder (``spec.json``) and
what each rank does with it (``execute``), through ``shared.launch``'s folder helpers.

The folder is the only channel between controller and run: ``spec.json`` in; ``progress.jsonl``
(rank 0), ``state/`` (resumable), ``adapter/`` and ``model/`` (rank 0), then ``result.json``, or
``error.json`` naming why it failed (``refusal``: the request can never succeed, so no retry).
The run never touches the bus or the artifact store: the controller stores the outputs and
announces them once the launcher says the run succeeded.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.events import FinetuneSpec
from services.finetuner.core.finetune import run_finetune
from services.finetuner.core.training import FinetuneCancelled
from shared.distributed import world
from shared.errors import Refusal
from shared.launch import append_progress, read_spec, write_error, write_result

log = logging.getLogger(__name__)
RUN_MODULE = "services.finetuner.run_worker"  # what each rank runs: python -m RUN_MODULE --run-dir D
EXIT_CANCELLED, EXIT_REFUSED = 3, 2


@dataclass(frozen=True)
class RunInputs:
    """Everything a rank needs, as local paths the controller resolved (read roots checked)."""

    job_id: str
    spec: FinetuneSpec
    base_dir: Path
    dataset: Path
    base_ref: dict[str, Any]
    dataset_uri: str
    device: str = "auto"
    num_threads: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "spec": self.spec.model_dump(mode="json"),
            "base_dir": str(self.base_dir),
            "dataset": str(self.dataset),
            "base_ref": self.base_ref,
            "dataset_uri": self.dataset_uri,
            "device": self.device,
            "num_threads": self.num_threads,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunInputs:
        return cls(
            job_id=str(data["job_id"]),
            spec=FinetuneSpec.model_validate(data["spec"]),
            base_dir=Path(data["base_dir"]),
            dataset=Path(data["dataset"]),
            base_ref=dict(data["base_ref"]),
            dataset_uri=str(data["dataset_uri"]),
            device=str(data.get("device", "auto")),
            num_threads=data.get("num_threads"),
        )


def execute(run_dir: Path, cancel: threading.Event | None = None) -> int:
    """One rank's run: 0 on success (rank 0 wrote ``result.json``), ``EXIT_REFUSED`` when the request
    can never succeed, ``EXIT_CANCELLED`` when ``cancel`` stopped it; any other failure is written to
    ``error.json`` and raised (its traceback is the run's log)."""
    me = world()
    try:
        inputs = RunInputs.from_json(read_spec(run_dir))

        def progress(stage: str, fraction: float, message: str = "", **metrics: float) -> None:
            append_progress(run_dir, {"stage": stage, "fraction": fraction, "message": message, **metrics})

        outcome = run_finetune(
            inputs.base_dir,
            inputs.dataset,
            inputs.spec,
            run_dir,
            base_ref=inputs.base_ref,
            dataset_uri=inputs.dataset_uri,
            device=inputs.device,
            num_threads=inputs.num_threads,
            progress=progress if me.main else None,  # run_finetune gives the other ranks a silent one
            cancel=cancel,
        )
    except FinetuneCancelled as exc:
        log.info("finetune run in %s: %s", run_dir, exc)
        return EXIT_CANCELLED
    except Refusal as exc:
        write_error(run_dir, str(exc), refusal=True)
        log.error("finetune run in %s refused: %s", run_dir, exc)
        return EXIT_REFUSED
    except BaseException as exc:
        write_error(run_dir, f"rank {me.rank}: {type(exc).__name__}: {exc}", refusal=False)
        raise
    if me.main:
        write_result(
            run_dir,
            str(outcome.model_dir),
            outcome.steps,
            outcome.metrics,
            adapter=str(outcome.adapter_dir) if outcome.adapter_dir is not None else None,
            world_size=me.size,
        )
    return 0
