"""A training run launched on a real single-node Slurm (tests/support/slurm.py), killed mid-run by
Slurm (``scontrol requeue``: what preemption does) after its first checkpoint, runs again under the
same job, resumes from its saved state and ends in exactly one registered version: the trainer service
(PUYU_LAUNCHER=slurm) and the model registry run for real on a real nats-server, as the chain does.
A second run is cancelled over the bus and the cancel reaches the Slurm job."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import psutil
import pytest

from contracts.events import (
    CheckpointReady,
    DatasetRef,
    JobFailed,
    ModelArchitecture,
    ModelRegistered,
    TrainRequested,
    TrainSpec,
)
from contracts.events.training import TrainCancelRequested
from services.model_registry.app import create_service as create_registry
from services.model_registry.config import RegistrySettings
from services.trainer.app import create_service as create_trainer
from services.trainer.config import TrainerSettings
from shared.bus import Bus, HandlerContext
from shared.launch import RunState, load_handle
from shared.launch.slurm import SlurmLauncher, SlurmSettings
from shared.natsserver import NatsServer, free_port
from shared.ports import SERVICES
from tests.support.slurm import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = TrainSpec(
    architecture=ModelArchitecture(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        vocab_size=300,
    ),
    seq_len=64,
    micro_batch_size=8,
    max_steps=600,  # long enough that the requeue lands mid-run, even on a fast machine
    checkpoint_interval=20,
    eval_interval=1000,
    warmup_steps=5,
    learning_rate=1e-2,
    num_threads=1,
    torch_compile="off",
)


def write_dataset(root: Path) -> DatasetRef:
    root.mkdir(parents=True)
    docs = [
        f"The capital of Country{i % 7} is City{i % 7}. It is known for its salt {i}." for i in range(200)
    ]
    (root / "shard-0.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    manifest = {
        "dataset_id": "ds",
        "documents": len(docs),
        "shards": [{"path": "shard-0.jsonl", "sha256": "0"}],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return DatasetRef(dataset_id=root.name, manifest_uri=(root / "manifest.json").as_uri(), digest="d")


async def test_slurm_run_requeued_mid_run_resumes_and_registers_one_version(
    slurm_cluster: SlurmCluster,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUYU_SLURM_CONF", str(slurm_cluster.conf))  # the slurm launcher's own setting
    monkeypatch.setenv("PUYU_AUTH_TOKEN", "the-services-token")  # must not reach the job
    home = tmp_path / "home"
    with NatsServer(tmp_path / "nats") as nats:
        trainer = create_trainer(
            TrainerSettings(
                nats_url=nats.url,
                home=home,
                log_json=False,
                launcher="slurm",
                launch_poll_seconds=0.3,
                grpc_port_base=free_port() - 1 - SERVICES.index("trainer"),
                http_port_base=free_port() - 1 - SERVICES.index("trainer"),
            )
        )
        registry = create_registry(
            RegistrySettings(
                nats_url=nats.url,
                home=home,  # the same artifact store as the trainer's
                log_json=False,
                registry_grpc_port=free_port(),
                registry_http_port=free_port(),
                registry_outbox_interval=0.2,
            )
        )
        tasks = [asyncio.create_task(trainer.run())]
        while not trainer.runtime.bus.started:  # noqa: ASYNC110 - one after the other: streams
            await asyncio.sleep(0.05)
        tasks.append(asyncio.create_task(registry.run()))
        while not registry.runtime.bus.started:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        observer = Bus(nats.url, "test-observer")
        checkpoints: asyncio.Queue[CheckpointReady] = asyncio.Queue()
        registered: asyncio.Queue[ModelRegistered] = asyncio.Queue()
        failed: asyncio.Queue[JobFailed] = asyncio.Queue()

        @observer.handle(CheckpointReady)
        async def on_ckpt(ctx: HandlerContext[CheckpointReady]) -> None:
            await checkpoints.put(ctx.payload)

        @observer.handle(ModelRegistered)
        async def on_registered(ctx: HandlerContext[ModelRegistered]) -> None:
            await registered.put(ctx.payload)

        @observer.handle(JobFailed)
        async def on_failed(ctx: HandlerContext[JobFailed]) -> None:
            await failed.put(ctx.payload)

        await observer.start()
        launcher = SlurmLauncher(SlurmSettings(conf=slurm_cluster.conf))
        try:
            dataset = write_dataset(home / "data" / "ds-1")
            await observer.publish(TrainRequested(job_id="slurm-1", datasets=[dataset], spec=SPEC))
            first = await asyncio.wait_for(checkpoints.get(), 240)
            assert not first.final and first.job_id == "slurm-1"
            run_dir = _run_dir(home, first.run_id)
            saved = load_handle(run_dir)
            assert saved is not None and saved[0] == "slurm"
            handle, job = saved[1], json.loads(saved[1])["job_id"]

            # Slurm kills the run and queues it again, as a preemption does.
            slurm_cluster.client("scontrol", "requeue", job)

            final = await _final(checkpoints, failed, 300)
            assert final.job_id == "slurm-1" and final.step == SPEC.max_steps
            status = launcher.status(handle)
            assert status.state is RunState.SUCCEEDED and status.restarts == 1, status
            log = (run_dir / "logs" / f"slurm-{job}.out").read_text()
            assert "attempt 0" in log and "attempt 1" in log
            resumed = re.search(r"resuming from step (\d+)", log.split("attempt 1", 1)[1])
            assert resumed is not None, "the second attempt started over"
            assert first.step <= int(resumed.group(1)) < SPEC.max_steps

            version = await asyncio.wait_for(registered.get(), 60)
            assert version.model.version == 1
            await asyncio.sleep(2)  # time for a duplicate to show up, were there one
            assert registered.empty()
            versions = registry.core.list_versions(version.model.model_name)
            assert [v.version for v in versions] == [1], versions

            # A cancel over the bus reaches the Slurm job and every rank of it.
            await observer.publish(
                TrainRequested(
                    job_id="slurm-2",
                    datasets=[dataset],
                    spec=SPEC.model_copy(update={"max_steps": 100_000, "checkpoint_interval": 50}),
                )
            )
            second = await asyncio.wait_for(checkpoints.get(), 240)
            assert second.job_id == "slurm-2"
            run_dir2 = _run_dir(home, second.run_id)
            saved2 = load_handle(run_dir2)
            assert saved2 is not None
            ranks = _ranks(run_dir2)
            assert ranks, "no rank of the run is running"
            # The ranks run with the service's environment, less its credentials.
            environ = ranks[0].environ()
            assert environ["PUYU_HOME"] == os.environ["PUYU_HOME"] and "PUYU_AUTH_TOKEN" not in environ
            await observer.publish(TrainCancelRequested(job_id="slurm-2", reason="no longer needed"))
            deadline = asyncio.get_running_loop().time() + 90
            while launcher.status(saved2[1]).state is not RunState.CANCELLED:
                assert asyncio.get_running_loop().time() < deadline, launcher.status(saved2[1])
                await asyncio.sleep(0.5)
            await asyncio.sleep(1)
            assert not [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            while (board := await observer.jobs.get("slurm-2")) is None or board.state != "cancelled":
                assert asyncio.get_running_loop().time() < deadline, board
                await asyncio.sleep(0.5)
        finally:
            await observer.stop()
            trainer.stop()
            registry.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)


def _run_dir(home: Path, run_id: str) -> Path:
    found = [p for p in home.rglob(run_id) if (p / "spec.json").exists()]
    assert len(found) == 1, found
    return found[0]


def _ranks(run_dir: Path) -> list[psutil.Process]:
    """The processes of this run (each names its run folder on its command line)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if str(run_dir) in (p.info["cmdline"] or []):
            out.append(p)
    return out


async def _final(
    checkpoints: asyncio.Queue[CheckpointReady], failed: asyncio.Queue[JobFailed], timeout: float
) -> CheckpointReady:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, "no final checkpoint"
        if not failed.empty():
            raise AssertionError(f"the job failed: {failed.get_nowait()}")
        try:
            event = await asyncio.wait_for(checkpoints.get(), min(left, 1.0))
        except TimeoutError:
            continue
        if event.final:
            return event
