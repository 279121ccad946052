"""``puyu train CONFIG [--resume]``: the trainer core with no bus, a rich progress bar, local output.

CONFIG (YAML or JSON)::

    datasets: [path/to/manifest.json | folder | file.jsonl[.gz], ...]
    spec: {...TrainSpec fields...}  # init_from: path/to/checkpoint continues pretraining it
    out: runs/my-run              # the run folder; checkpoints land in out/checkpoints/step-<n>
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers.utils import logging as hf_logging

from contracts.events import TrainSpec
from services.trainer.core import DatasetError, TrainConfigError, TrainingCancelled, TrainJob, run_training
from shared.artifacts import ArtifactStore, sha256_file


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field(min_length=1)
    spec: TrainSpec = Field(default_factory=TrainSpec)
    out: Path
    device: str = "auto"


def load_config(path: Path) -> TrainConfig:
    text = path.read_text(encoding="utf-8")
    data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    config = TrainConfig.model_validate(data or {})
    base = path.parent  # relative paths are relative to the config file
    config.datasets = [
        d if "://" in d or Path(d).is_absolute() else str((base / d).resolve()) for d in config.datasets
    ]
    if not config.out.is_absolute():
        config.out = (base / config.out).resolve()
    init = config.spec.init_from
    if init is not None and "://" not in init and not Path(init).is_absolute():
        config.spec = config.spec.model_copy(update={"init_from": str((base / init).resolve())})
    return config


def _dataset_lineage(source: str) -> dict[str, Any]:
    path = Path(source)
    manifest = path / "manifest.json" if path.is_dir() else path
    digest = sha256_file(manifest) if manifest.is_file() else ""
    return {"dataset_id": path.name, "manifest_uri": source, "digest": digest}


def train_cmd(config_path: Path, resume: bool = True) -> int:
    """Train from a config file; prints where the final checkpoint is. Returns an exit code."""
    console = Console()
    hf_logging.disable_progress_bar()  # one progress bar: ours
    try:
        config = load_config(config_path)
    except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
        console.print(f"[red]invalid config {config_path}:[/red] {exc}")
        return 2
    job = TrainJob(
        run_id=config.out.name,
        spec=config.spec,
        sources=config.datasets,
        datasets=[_dataset_lineage(d) for d in config.datasets],
    )
    store = ArtifactStore(config.out.resolve().as_uri())
    columns = (
        TextColumn("[bold]{task.fields[stage]}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=1.0, stage="data")

        def progress(stage: str, fraction: float, message: str = "", **metrics: float) -> None:
            bar.update(task, completed=fraction, description=message, stage=stage)

        cancel = threading.Event()  # Ctrl-C / SIGTERM: stop at the next step, keep the state
        previous = {
            sig: signal.signal(sig, lambda *_: cancel.set()) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            result = run_training(
                job, config.out, store, progress=progress, device=config.device, resume=resume, cancel=cancel
            )
        except (DatasetError, TrainConfigError) as exc:
            console.print(f"[red]cannot train:[/red] {exc}")
            return 2
        except TrainingCancelled as exc:
            console.print(f"[yellow]{exc}[/yellow]: state saved in {config.out}; run again to resume")
            return 130
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if result.resumed_from is not None:
        console.print(f"resumed from step {result.resumed_from}")
    m = result.metrics
    console.print(
        f"final loss {m['loss']:.3f}, {m['tokens_per_s']:.0f} tokens/s, MFU {m['mfu']:.1%}, "
        f"{m['parameters'] / 1e6:.2f}M params"
    )
    console.print(f"checkpoint: [bold]{result.checkpoint}[/bold]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="puyu train", description="Pretrain a model from a config file.")
    parser.add_argument("config_pos", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help="YAML or JSON: datasets, spec, out")
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the run folder's last checkpoint (default); --no-resume starts over",
    )
    args = parser.parse_args(argv)
    config = args.config or args.config_pos
    if config is None:
        parser.error("--config FILE is required")
    return train_cmd(config, args.resume)


if __name__ == "__main__":
    raise SystemExit(main())
