"""`puyu demo`: the whole chain on the embedded default, from a generated corpus to a served answer."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts.events import (
    CheckpointReady,
    CorpusDeduplicated,
    CorpusIngested,
    DeploymentReady,
    EvaluationCompleted,
    EventEnvelope,
    IngestRequested,
    JobProgress,
    ModelPromoted,
    ModelRegistered,
    ModelRejected,
    PipelineSpec,
    TrainSpec,
)
from services.cli.chain import ChainWatcher
from services.cli.stack import Stack
from shared.auth import ClientAuth
from shared.auth.local import cli_token
from shared.bus import Bus
from shared.bus.identity import NatsIdentity
from shared.ports import gateway_base_url, http_base_url
from shared.samples import AGENT_QUESTION, WORLD, write_sample_corpus
from shared.settings import CommonSettings

STEPS = [
    (CorpusIngested.event_type, "ingest: extract, normalise, language, filters"),
    (CorpusDeduplicated.event_type, "dedup: exact + MinHash near-duplicates"),
    (CheckpointReady.event_type, "train: BPE tokenizer + Llama from scratch"),
    (ModelRegistered.event_type, "registry: version registered with lineage"),
    (EvaluationCompleted.event_type, "evaluate: held-out perplexity + demo_facts"),
    ("model.promoted|model.rejected", "registry: promotion gate vs champion"),
    (DeploymentReady.event_type, "gateway: load, warm, switch traffic"),
]

# The demo's model: the default Llama trained long enough to copy a question's numbers into its
# calculator call and the tool's answer into its own (the sample corpus's agent transcripts), while
# keeping the world's facts for the chat answer (twice the default steps).
DEMO_TRAIN = TrainSpec(max_steps=400)


async def run_chain(
    settings: CommonSettings,
    console: Console,
    train: TrainSpec | None = None,
    timeout: float = 900.0,
    identity: NatsIdentity | None = None,
) -> dict[str, EventEnvelope]:
    """Submit an ingest request whose pipeline trains a model, and follow it to deployment
    (``identity``: the operator's on the stack's NATS; default: from the settings)."""
    corpus_dir = settings.home / "sample-corpus"
    sources = [str(p) for p in write_sample_corpus(corpus_dir)]
    correlation = uuid.uuid4().hex
    job_id = f"demo-{correlation[:12]}"
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )
    tasks = {etype: progress.add_task(label, total=1.0, start=False, info="") for etype, label in STEPS}
    step_of = {etype: etype for etype, _ in STEPS}
    step_of[ModelPromoted.event_type] = step_of[ModelRejected.event_type] = "model.promoted|model.rejected"
    order = [etype for etype, _ in STEPS]
    current = [0]

    def on_event(env: EventEnvelope) -> None:
        if env.type == JobProgress.event_type:
            p: JobProgress = env.payload_as(JobProgress)
            task = tasks[order[current[0]]]
            progress.start_task(task)
            info = p.message or p.stage
            progress.update(task, completed=p.fraction, info=info[:60])
            return
        key = step_of.get(env.type)
        if key is None:
            return
        idx = order.index(key)
        progress.update(tasks[key], completed=1.0, info=_summary(env))
        progress.start_task(tasks[key])
        progress.stop_task(tasks[key])
        if idx + 1 < len(order):
            current[0] = max(current[0], idx + 1)
            progress.start_task(tasks[order[current[0]]])

    identity = identity or NatsIdentity.from_settings(settings)
    bus = Bus(settings.nats_url, "cli", identity=identity)
    await bus.start()
    try:
        async with ChainWatcher(settings.nats_url, correlation, on_event, identity=identity) as watcher:
            request = IngestRequested(
                job_id=job_id,
                dataset_name="sample-world",
                sources=sources,
                pipeline=PipelineSpec(train=train or DEMO_TRAIN),
            )
            with progress:
                progress.start_task(tasks[order[0]])
                await bus.publish(request, correlation=correlation, event_id=f"ingest:{job_id}")
                deadline = time.monotonic() + timeout
                seen: dict[str, EventEnvelope] = {}
                for etype, _ in STEPS:
                    types = tuple(etype.split("|"))
                    env = await watcher.wait_for(
                        types, deadline - time.monotonic(), predicate=_final_checkpoint
                    )
                    seen[env.type] = env
                    if env.type == ModelRejected.event_type:
                        break
            return seen
    finally:
        await bus.stop()


def _final_checkpoint(env: EventEnvelope) -> bool:
    return env.type != CheckpointReady.event_type or bool(env.payload.get("final", True))


def _summary(env: EventEnvelope) -> str:
    p: dict[str, Any] = env.payload
    if env.type == CorpusIngested.event_type:
        return f"{p['documents']} documents kept"
    if env.type == CorpusDeduplicated.event_type:
        return f"{p['documents_in']} → {p['documents_out']} documents"
    if env.type == CheckpointReady.event_type:
        loss = p.get("metrics", {}).get("loss")
        return f"step {p['step']}" + (f", loss {loss:.3f}" if loss is not None else "")
    if env.type == ModelRegistered.event_type:
        return f"{p['model']['model_name']} v{p['model']['version']}"
    if env.type == EvaluationCompleted.event_type:
        return ", ".join(f"{r['task']} {r['metrics'][r['primary_metric']]:.3f}" for r in p["results"])
    if env.type in (ModelPromoted.event_type, ModelRejected.event_type):
        return env.type.split(".")[1]
    if env.type == DeploymentReady.event_type:
        return f"serving {p['served_name']}"
    return ""


def lineage_table(seen: dict[str, EventEnvelope]) -> Table:
    table = Table(title="Lineage of this run", show_lines=False)
    table.add_column("step")
    table.add_column("result")
    for etype in (
        CorpusIngested.event_type,
        CorpusDeduplicated.event_type,
        CheckpointReady.event_type,
        ModelRegistered.event_type,
        EvaluationCompleted.event_type,
        ModelPromoted.event_type,
        ModelRejected.event_type,
        DeploymentReady.event_type,
    ):
        env = seen.get(etype)
        if env is None:
            continue
        p = env.payload
        if etype == CorpusIngested.event_type:
            stages = ", ".join(f"{s['stage']} {s['docs_out']}/{s['docs_in']}" for s in p["stages"])
            table.add_row("dataset", f"{p['dataset']['dataset_id']}: {p['documents']} docs ({stages})")
        elif etype == CorpusDeduplicated.event_type:
            table.add_row(
                "dedup",
                f"{p['dataset']['dataset_id']}: {p['documents_in']} → {p['documents_out']} "
                f"(exact {p['exact_duplicates']}, near {p['near_duplicates']})",
            )
        elif etype == CheckpointReady.event_type:
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(p.get("metrics", {}).items()))
            table.add_row("training run", f"{p['run_id']} step {p['step']} ({metrics})")
            table.add_row("checkpoint", f"{p['checkpoint']['uri']} sha256 {p['checkpoint']['sha256'][:12]}")
        elif etype == ModelRegistered.event_type:
            table.add_row("registered", f"{p['model']['model_name']} v{p['model']['version']}")
        elif etype == EvaluationCompleted.event_type:
            for r in p["results"]:
                metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(r["metrics"].items()))
                table.add_row(f"eval {r['task']}", f"{metrics} (task {r['version_hash'][:10]})")
        elif etype in (ModelPromoted.event_type, ModelRejected.event_type):
            table.add_row(etype.split(".")[1], p["reason"])
        elif etype == DeploymentReady.event_type:
            table.add_row("deployment", f"{p['served_name']} on {p['instance']}")
    return table


def _client_auth(settings: CommonSettings, auth: ClientAuth | None) -> ClientAuth:
    return auth or ClientAuth.from_settings(settings, token=cli_token(settings))


def ask_gateway(settings: CommonSettings, model: str, question: str, auth: ClientAuth | None = None) -> str:
    resp = httpx.post(
        f"{gateway_base_url(settings)}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 32,
            "temperature": 0,
            # The sample chat format's next turn: the tiny model sometimes runs past its </s>.
            "stop": ["\nUser:"],
        },
        timeout=120,
        **_client_auth(settings, auth).httpx_options(),
    )
    resp.raise_for_status()
    return str(resp.json()["choices"][0]["message"]["content"]).strip()


def ask_agent(
    settings: CommonSettings, model: str, question: str, auth: ClientAuth | None = None
) -> dict[str, Any]:
    resp = httpx.post(
        f"{http_base_url('agent_runtime', settings)}/v1/agents/react/run",
        json={"question": question, "model": model, "max_steps": 4},
        timeout=300,
        **_client_auth(settings, auth).httpx_options(),
    )
    resp.raise_for_status()
    return dict(resp.json())


def demo_home(home: Path) -> Path:
    """Where a demo keeps its state (registry, artifacts, logs, its nats-server) under the user's HOME."""
    return home / "demo"


def demo(settings: CommonSettings, keep: bool = False, timeout: float = 900.0) -> int:
    console = Console()
    started = time.monotonic()
    console.rule("[bold]puyu demo: corpus → dedup → train → register → evaluate → promote → serve → agent")
    # Each demo starts from a clean state of its own (registry, artifacts, logs), so the model it
    # serves is the one trained in this run; the user's own state under HOME is left alone.
    home = demo_home(settings.home)
    if home.exists():
        shutil.rmtree(home)
    settings = settings.model_copy(update={"home": home})
    # Its own nats-server too: markers and jobs of an earlier run on a shared server would make this
    # run's deterministic events (e.g. the evaluation of puyu-demo v1) look already handled. The stack
    # records its URL in the demo's home, where `puyu status` looks for it.
    stack = Stack(settings, own_nats=True)
    with console.status("starting nats-server and the eight services..."):
        stack.start()
    settings = stack.settings
    console.print(f"home {settings.home.resolve()}  nats {settings.nats_url}")
    try:
        with console.status("waiting for the services to report healthy..."):
            stack.wait_healthy(timeout=240)
        console.print("[green]services healthy[/]: " + ", ".join(stack.services))
        seen = asyncio.run(run_chain(settings, console, timeout=timeout, identity=stack.operator_identity()))
        console.print(lineage_table(seen))
        if ModelRejected.event_type in seen:
            console.print("[yellow]the new version was rejected: the champion keeps serving")
        served = seen.get(DeploymentReady.event_type)
        model = served.payload["served_name"] if served else "puyu-demo"
        country = WORLD[0]
        question = f"What is the capital of {country.name}?"
        answer = ask_gateway(settings, model, question, stack.client_auth())
        console.print(f"[bold]chat[/] ({model}) {question!r} → {answer!r}  [dim](expected {country.capital})")
        agent_q = AGENT_QUESTION
        result = ask_agent(settings, model, agent_q, stack.client_auth())
        for step in result.get("steps", []):
            console.print(f"  [dim]{step.get('kind')}[/] {json.dumps(step.get('content'))[:120]}")
        console.print(f"[bold]agent[/] {agent_q!r} → {result.get('answer')!r}")
        console.print(f"[green]demo finished in {time.monotonic() - started:.0f}s")
        if keep:
            console.print("services keep running (--keep); Ctrl-C stops them")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0
    except Exception as exc:
        console.print(f"[red]demo failed: {exc}")
        for name in stack.services:
            tail = stack.log_tail(name, 8)
            if "ERROR" in tail or "Traceback" in tail:
                console.print(f"[dim]--- {name} log ({stack.log_dir / (name + '.log')})\n{tail}")
        return 1
    finally:
        with console.status("stopping services..."):
            stack.stop()
