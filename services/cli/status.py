"""`puyu status`: the services, the jobs and the champion."""

from __future__ import annotations

import asyncio
import time

import httpx
import nats
from rich.console import Console
from rich.table import Table

from contracts.events.subjects import JOBS_BUCKET
from services.cli.demo import demo_home
from services.cli.stack import operator_identity, recorded_nats_url
from shared.auth import ClientAuth
from shared.auth.local import cli_token
from shared.bus.identity import NatsIdentity
from shared.bus.jobs import JobBoard, JobStatus
from shared.ports import SERVICES, http_base_url, http_port
from shared.settings import CommonSettings


def _health(settings: CommonSettings, name: str) -> str:
    try:
        verify = ClientAuth.from_settings(settings).verify
        resp = httpx.get(f"{http_base_url(name, settings)}/health", timeout=2, verify=verify)
        return "up" if resp.status_code == 200 else f"degraded ({resp.status_code})"
    except httpx.HTTPError:
        return "down"


def jobs_nats_url(settings: CommonSettings) -> str:
    """The NATS of a running ``puyu demo`` (its own server, on a free port) when there is one, else the
    configured one: the services answering on the ports are the demo's while it runs."""
    return recorded_nats_url(demo_home(settings.home)) or settings.nats_url


async def _jobs(nats_url: str, identity: NatsIdentity) -> list[JobStatus]:
    async def quiet(exc: Exception) -> None:  # a NATS that is down is reported once, in the output
        return None

    # two quick attempts: with max_reconnect_attempts=0 nats-py retries the first connect forever
    nc = await nats.connect(
        nats_url,
        connect_timeout=2,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.2,
        error_cb=quiet,
        **identity.connect_options(),
    )
    try:
        kv = await nc.jetstream().key_value(JOBS_BUCKET)
        return list(await JobBoard(kv).all())
    finally:
        await nc.close()


def status(settings: CommonSettings) -> int:
    console = Console()
    services = Table(title="services")
    services.add_column("service")
    services.add_column("http")
    services.add_column("state")
    for name in SERVICES:
        services.add_row(name, str(http_port(name, settings)), _health(settings, name))
    console.print(services)

    nats_url = jobs_nats_url(settings)
    demo = demo_home(settings.home)
    demo_running = nats_url == recorded_nats_url(demo)
    identity = operator_identity(settings, demo if demo_running else None)
    auth = ClientAuth.from_settings(settings, token=cli_token(settings, demo if demo_running else None))
    try:
        jobs = asyncio.run(_jobs(nats_url, identity))
    except Exception as exc:
        console.print(f"[yellow]jobs: NATS at {nats_url} unavailable ({type(exc).__name__})")
        jobs = []
    if jobs:
        table = Table(title="jobs")
        for col in ("job", "kind", "state", "stage", "progress", "updated", "message"):
            table.add_column(col)
        for job in jobs[-20:]:
            table.add_row(
                job.job_id,
                job.kind,
                job.state,
                job.stage,
                f"{job.fraction:.0%}",
                time.strftime("%H:%M:%S", time.localtime(job.updated_at)),
                job.message[:60],
            )
        console.print(table)

    try:
        resp = httpx.get(
            f"{http_base_url('model_registry', settings)}/v1/models", timeout=3, **auth.httpx_options()
        )
        resp.raise_for_status()
        models = resp.json()
        table = Table(title="models")
        table.add_column("model")
        table.add_column("latest")
        table.add_column("champion")
        for m in models.get("models", models) if isinstance(models, dict) else models:
            table.add_row(
                str(m.get("name") or m.get("model_name")),
                str(m.get("latest_version", "")),
                str(m.get("champion_version") or "-"),
            )
        console.print(table)
    except httpx.HTTPError:
        console.print("[yellow]registry unavailable")
    return 0
