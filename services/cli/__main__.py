"""The `puyu` command: run the stack, drive the demo, and call each service's core standalone."""

from __future__ import annotations

import asyncio
import importlib
import sys
import time

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
    asyncio.run(module.create_service().run())


@main.command()
def up() -> None:
    """Run every service locally (starts nats-server when none answers at PUYU_NATS_URL)."""
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

    sys.exit(run_demo(CommonSettings(), keep=keep, timeout=timeout))


@main.command()
def status() -> None:
    """Show the services, the jobs and the champion."""
    from services.cli.status import status as show

    sys.exit(show(CommonSettings()))


if __name__ == "__main__":
    main()
