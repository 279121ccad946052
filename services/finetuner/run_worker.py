"""What each rank of a launched finetune runs: ``python -m services.finetuner.run_worker --run-dir D``
(torchrun, srun, a Kubernetes indexed Job), or ``main(argv, cancel=event)`` in the service's own
process (the ``local`` launcher). The work is ``core.runs.execute``; this is its command line.

As a process it turns SIGTERM (a launcher's cancel, a preemption) into the cancel event, so the
run stops before its next step; a run of one process saves its state on the way out.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from services.finetuner.core.runs import execute


def main(argv: list[str], cancel: threading.Event | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.finetuner.run_worker")
    parser.add_argument("--run-dir", type=Path, required=True, help="the run folder holding spec.json")
    args = parser.parse_args(argv)
    return execute(args.run_dir, cancel)


def _cancel_on_sigterm() -> threading.Event:
    event = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    signal.signal(signal.SIGTERM, handler)
    return event


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:], _cancel_on_sigterm()))
