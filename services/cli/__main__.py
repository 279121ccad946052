"""The `puyu` command: run the stack, drive the demo, and call each service's core standalone."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Literal

import click

from shared.ports import SERVICES
from shared.settings import CommonSettings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """puyu: corpus → pretraining → finetuning → evaluation → serving → agents."""


@main.command("run")
@click.argument("service", type=click.Choice([*SERVICES, *(s.replace("_", "-") for s in SERVICES)]))
def run_service(service: str) -> None:
    """Run one service in this process (what each container runs)."""
    module = importlib.import_module(f"services.{service.replace('-', '_')}.app")

    async def _run() -> None:
        await module.create_service().run()

    asyncio.run(_run())


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the stack's finally-block stops the services it started."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@main.command()
def up() -> None:
    """Run every service locally (starts nats-server when none answers at PUYU_NATS_URL)."""
    _exit_on_sigterm()
    from rich.console import Console

    from services.cli.stack import Stack

    console = Console()
    settings = CommonSettings()
    stack = Stack(settings)
    stack.start()
    try:
        stack.wait_healthy()
        console.print(f"[green]all services up[/] (logs in {stack.log_dir}); Ctrl-C stops them")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


@main.command()
@click.option("--keep", is_flag=True, help="Keep the services running after the demo.")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds allowed for the chain.")
def demo(keep: bool, timeout: float) -> None:
    """Drive the whole chain on a generated sample corpus and show the lineage and the answers."""
    from services.cli.demo import demo as run_demo

    _exit_on_sigterm()
    sys.exit(run_demo(CommonSettings(), keep=keep, timeout=timeout))


@main.command()
def status() -> None:
    """Show the services, the jobs and the champion."""
    from services.cli.status import status as show

    sys.exit(show(CommonSettings()))


# ---------------------------------------------------------------------------------------------- corpus
@main.group()
def corpus() -> None:
    """Corpus tools: main-text extraction, ingest, dedup (the cores the services run)."""


@corpus.command("extract")
@click.argument("files", nargs=-1, required=True)
def corpus_extract(files: tuple[str, ...]) -> None:
    """Print one JSON line {"path", "text"} per HTML file."""
    from services.corpus_ingest.cli import extract_cmd

    sys.exit(extract_cmd(list(files)))


@corpus.command("ingest")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output dataset folder."
)
@click.option("--options", "options_json", default=None, help="IngestOptions as JSON.")
@click.option("--dataset-id", default=None)
@click.option("--workers", default=1, show_default=True, help="Processes for HTML extraction.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl.gz", "jsonl.zst", "parquet"]),
    default=None,
    help="Output shard format (default: the options' output_format, jsonl.gz).",
)
def corpus_ingest(
    sources: tuple[str, ...],
    out_dir: str,
    options_json: str | None,
    dataset_id: str | None,
    workers: int,
    fmt: str | None,
) -> None:
    """Extract, normalise, identify languages and filter SOURCES into standardised shards."""
    from contracts.events import IngestOptions
    from services.corpus_ingest.cli import ingest_cmd

    options = IngestOptions.model_validate_json(options_json) if options_json else None
    if fmt:
        options = (options or IngestOptions()).model_copy(update={"output_format": fmt})
    sys.exit(ingest_cmd(list(sources), out_dir, options, dataset_id, workers=workers))


@corpus.command("dedup")
@click.argument("dirs", nargs=-1, required=True)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output dataset folder."
)
@click.option("--options", "options_json", default=None, help="DedupOptions as JSON.")
@click.option("--dataset-id", default=None)
@click.option("--workers", default=1, show_default=True, help="Processes for the signature stage.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl.gz", "jsonl.zst", "parquet"]),
    default=None,
    help="Output shard format (default: that of the input: zstd or Parquet when all of it is, else gzip).",
)
def corpus_dedup(
    dirs: tuple[str, ...],
    out_dir: str,
    options_json: str | None,
    dataset_id: str | None,
    workers: int,
    fmt: str | None,
) -> None:
    """Remove exact and near duplicates from the datasets in DIRS."""
    from contracts.events import DedupOptions
    from services.dedup.cli import dedup_cmd

    options = DedupOptions.model_validate_json(options_json) if options_json else None
    if fmt:
        options = (options or DedupOptions()).model_copy(update={"output_format": fmt})
    sys.exit(dedup_cmd(list(dirs), out_dir, options, dataset_id, workers=workers))


# ---------------------------------------------------------------------------------------------- training
@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--resume/--no-resume", default=True, show_default=True, help="Resume from the last checkpoint."
)
def train(config_path: str, resume: bool) -> None:
    """Pretrain a model standalone (no bus) from a YAML/JSON job file."""
    from services.trainer.cli import train_cmd

    sys.exit(train_cmd(Path(config_path), resume=resume))


@main.group(invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def finetune(ctx: click.Context, config_path: str | None) -> None:
    """Finetune a model standalone (no bus) from a YAML/JSON job file."""
    if ctx.invoked_subcommand is not None:
        return
    if not config_path:
        raise click.UsageError("--config FILE is required (or use: puyu finetune check-data FILE)")
    from services.finetuner.cli import finetune_cmd

    sys.exit(finetune_cmd(config_path))


@finetune.command("check-data")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--format",
    "data_format",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "openai", "alpaca", "xtuner", "text", "preference"]),
)
@click.option(
    "--method",
    default=None,
    type=click.Choice(["lora", "qlora", "full", "dpo"]),
    help="Also check that the data fits this method.",
)
def finetune_check_data(file: str, data_format: str, method: str | None) -> None:
    """Validate a dataset; name every bad record by line number and reason, the first one first."""
    from services.finetuner.cli import check_data_cmd

    sys.exit(check_data_cmd(file, data_format, method))


@finetune.command("merge")
@click.option("--base", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def finetune_merge(base: str, adapter: str, out_dir: str) -> None:
    """Fold a PEFT adapter into its base model: a plain Hugging Face folder."""
    from services.finetuner.cli import merge_cmd

    sys.exit(merge_cmd(base, adapter, out_dir))


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--method", type=click.Choice(["awq", "gptq", "rtn"]), default="awq", show_default=True)
@click.option("--bits", type=click.Choice(["4", "8"]), default="4", show_default=True)
@click.option(
    "--group-size",
    type=int,
    default=128,
    show_default=True,
    help="Input channels sharing a scale and zero; -1: one group per output row.",
)
@click.option(
    "--calib",
    default=None,
    help="Calibration text (awq, gptq): a dataset (manifest.json or its folder, from `puyu corpus "
    "ingest/dedup`), a .txt file (a passage per line) or a .jsonl/.parquet file of text records.",
)
@click.option("--samples", type=int, default=128, show_default=True, help="Calibration windows.")
@click.option("--seq-len", type=int, default=512, show_default=True, help="Tokens per calibration window.")
@click.option("--sym", is_flag=True, help="gptq: symmetric grid (fixed zero point).")
@click.option("--desc-act", is_flag=True, help="gptq: act-order.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
def quantize(
    model_path: str,
    method: str,
    bits: str,
    group_size: int,
    calib: str | None,
    samples: int,
    seq_len: int,
    sym: bool,
    desc_act: bool,
    out_dir: str,
    overwrite: bool,
    threads: int | None,
) -> None:
    """Quantise a model folder's weights (AWQ, GPTQ or round-to-nearest; 4 or 8 bits) into OUT, a
    Hugging Face folder with quantization_config that puyu serves and transformers' backends read."""
    from pydantic import ValidationError

    from contracts.events import QuantizeSpec
    from services.finetuner.cli import quantize_cmd

    try:
        spec = QuantizeSpec.model_validate(
            {
                "method": method,
                "bits": int(bits),
                "group_size": group_size,
                "sym": sym,
                "desc_act": desc_act,
                "calibration_samples": samples,
                "calibration_seq_len": seq_len,
            }
        )
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(quantize_cmd(model_path, out_dir, spec, calib, overwrite=overwrite, num_threads=threads))


@main.group("eval", invoke_without_command=True)
@click.option("--tasks", default=None, help="Comma-separated task names or YAML task files.")
@click.option(
    "--model",
    "model_path",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="A Hugging Face model folder (in-process backend).",
)
@click.option(
    "--endpoint", default=None, help="Base URL of an OpenAI-compatible server (puyu, vLLM, LMDeploy)."
)
@click.option("--model-name", default=None, help="The model name the endpoint serves.")
@click.option("--api-key", default=None, envvar="PUYU_API_KEY")
@click.option(
    "--generation-api", type=click.Choice(["chat", "completions"]), default="chat", show_default=True
)
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False))
@click.option("--limit", type=int, default=None, help="At most N samples per task.")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
    default=None,
    help="Precision of the --model folder: auto = the checkpoint's on CUDA; on the CPU bf16 where the "
    "processor multiplies it natively, else fp32 (default: PUYU_EVALUATOR_DTYPE, else auto).",
)
@click.pass_context
def evaluate(
    ctx: click.Context,
    tasks: str | None,
    model_path: str | None,
    endpoint: str | None,
    model_name: str | None,
    api_key: str | None,
    generation_api: str,
    out_dir: str | None,
    limit: int | None,
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None,
) -> None:
    """Evaluate a model folder or an endpoint; writes OUT/summary.json and per-sample details.
    `puyu eval compare RUN_OR_VERSION...` puts runs side by side."""
    from services.evaluator.cli import eval_cmd

    if ctx.invoked_subcommand is not None:
        return
    if not tasks or not out_dir:
        raise click.UsageError("puyu eval needs --tasks and --out (or a subcommand: compare)")
    if bool(model_path) == bool(endpoint):
        raise click.UsageError("give exactly one of --model PATH or --endpoint URL (with --model-name)")
    if endpoint and not model_name:
        raise click.UsageError("--endpoint needs --model-name")
    eval_cmd(
        [t.strip() for t in tasks.split(",") if t.strip()],
        Path(model_path) if model_path else None,
        Path(out_dir),
        limit,
        endpoint=endpoint,
        model_name=model_name,
        api_key=api_key,
        generation_api="completions" if generation_api == "completions" else "chat",
        dtype=dtype,
    )


@evaluate.command("compare")
@click.argument("runs", nargs=-1, required=True)
def eval_compare(runs: tuple[str, ...]) -> None:
    """Runs side by side per task and metric: results folders (puyu eval --out) or registered
    versions (NAME:VERSION, their stored evaluation); differences beyond the standard error marked."""
    from services.evaluator.cli import compare_cmd

    compare_cmd(list(runs))


# ---------------------------------------------------------------------------------------------- serving
@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--api-key", default=None, envvar="PUYU_API_KEY")
@click.option("--served-name", default=None, help="Name clients use (default: the folder name).")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
    default=None,
    help="Precision of the weights and KV cache. auto: the checkpoint's on CUDA; on the CPU bfloat16 "
    "where the processor multiplies it natively, else float32 (default: PUYU_GATEWAY_DTYPE, else auto).",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Sequences decoded together (default: PUYU_GATEWAY_MAX_BATCH_SIZE, else 32). The engine's "
    "other settings come from PUYU_GATEWAY_* as for the gateway.",
)
@click.option(
    "--kv-cache-dtype",
    type=click.Choice(["auto", "int8", "fp8"]),
    default=None,
    help="KV cache storage: auto (the model's dtype), int8 or fp8 (e4m3), 8 bits with a scale per token "
    "and KV head (default: PUYU_GATEWAY_KV_CACHE_DTYPE, else auto).",
)
@click.option(
    "--kv-cache-memory",
    default=None,
    help="Memory the KV cache may take, e.g. 2GiB: as many blocks as fit at the KV dtype's size "
    "(default: PUYU_GATEWAY_KV_CACHE_MEMORY, else room for a full batch at 2048 tokens).",
)
def serve(
    model_path: str,
    host: str,
    port: int,
    api_key: str | None,
    served_name: str | None,
    dtype: str | None,
    max_batch_size: int | None,
    kv_cache_dtype: str | None,
    kv_cache_memory: str | None,
) -> None:
    """Serve one Hugging Face model folder with an OpenAI-compatible API (no bus)."""
    from services.inference_gateway.cli import serve_cmd

    serve_cmd(
        Path(model_path),
        host,
        port,
        api_key,
        served_name,
        dtype=dtype,
        max_batch_size=max_batch_size,
        kv_cache_dtype=kv_cache_dtype,
        kv_cache_memory=kv_cache_memory,
    )


# ---------------------------------------------------------------------------------------------- registry
@main.group()
def models() -> None:
    """The model registry: versions, champion, promotion, rollback."""


def _print_json(obj: object) -> None:
    from rich.console import Console

    Console().print_json(json.dumps(obj, default=str))


@models.command("list")
@click.option("--registry-url", default=None)
def models_list(registry_url: str | None) -> None:
    from services.model_registry.cli import models_list as list_models

    _print_json(list_models(url=registry_url))


@models.command("show")
@click.argument("ref")
@click.option("--registry-url", default=None)
def models_show(ref: str, registry_url: str | None) -> None:
    """REF is NAME, NAME:VERSION or NAME@ALIAS."""
    from services.model_registry.cli import models_show as show

    _print_json(show(ref, url=registry_url))


@models.command("promote")
@click.argument("ref")
@click.option("--reason", default="manual promotion")
@click.option("--registry-url", default=None)
def models_promote(ref: str, reason: str, registry_url: str | None) -> None:
    """Make NAME:VERSION (or NAME@ALIAS, e.g. NAME@candidate) the champion; the gateway follows."""
    from services.model_registry.cli import RegistryError, models_promote_ref

    try:
        _print_json(models_promote_ref(ref, reason, url=registry_url))
    except (RegistryError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@models.command("tag")
@click.argument("ref")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--delete", multiple=True, help="A tag to remove (repeatable).")
@click.option("--reason", default="")
@click.option("--registry-url", default=None)
def models_tag(
    ref: str, pairs: tuple[str, ...], delete: tuple[str, ...], reason: str, registry_url: str | None
) -> None:
    """Set or delete tags of a model (NAME) or a version (NAME:VERSION, NAME@ALIAS)."""
    from services.model_registry.cli import RegistryError, parse_tags
    from services.model_registry.cli import models_tag as tag

    try:
        _print_json(tag(ref, parse_tags(list(pairs)), list(delete), reason, url=registry_url))
    except (RegistryError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@models.command("rollback")
@click.argument("name")
@click.option("--reason", default="manual rollback")
@click.option("--registry-url", default=None)
def models_rollback(name: str, reason: str, registry_url: str | None) -> None:
    """Move the champion back to the previous champion (the gateway follows)."""
    from services.model_registry.cli import models_rollback as rollback

    _print_json(rollback(name, reason, url=registry_url))


# ---------------------------------------------------------------------------------------------- agents
@main.group()
def agent() -> None:
    """Agents on the served models."""


@agent.command("run")
@click.argument("agent_name", metavar="AGENT")
@click.argument("question")
@click.option("--gateway-url", default=None)
@click.option("--model", default=None, help="Served model name (default: the configured champion).")
@click.option("--manifest", default=None, help="Dataset manifest to search (default: none).")
@click.option("--max-steps", type=int, default=None)
@click.option("--session", default=None, help="Session id: continue and record a conversation.")
def agent_run(
    agent_name: str,
    question: str,
    gateway_url: str | None,
    model: str | None,
    manifest: str | None,
    max_steps: int | None,
    session: str | None,
) -> None:
    """Run AGENT on QUESTION, streaming each step."""
    from services.agent_runtime.cli import agent_run_cmd

    sys.exit(agent_run_cmd(agent_name, question, gateway_url, model, manifest, max_steps, session=session))


if __name__ == "__main__":
    main()
