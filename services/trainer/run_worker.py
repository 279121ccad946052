"""``python -m services.trainer.run_worker --run-dir D``: one rank of a training run.

What a launcher runs (``local`` calls ``main`` on a thread of the service; ``torchrun``, ``slurm``
and ``kubernetes`` run the module in each rank's process). The exit code tells the launcher how it
ended: 0 succeeded; 143 stopped on request (its state saved at a step boundary); 2 refused (the
reason in ``error.json``: retrying cannot help); 1 failed (the reason in ``error.json`` and the log).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from services.trainer.core import TrainingCancelled
from services.trainer.core.run_folder import run_from_folder
from shared.errors import Refusal
from shared.launch import write_error

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_CANCELLED = 0, 1, 2, 143
log = logging.getLogger("services.trainer.run_worker")


def main(argv: Sequence[str] | None = None, cancel: threading.Event | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trainer.run_worker")
    parser.add_argument("--run-dir", type=Path, required=True, help="the run folder (spec.json in it)")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        run_from_folder(args.run_dir, cancel)
        return EXIT_OK
    except TrainingCancelled as exc:
        log.info("run %s: %s", args.run_dir.name, exc)
        return EXIT_CANCELLED
    except Refusal as exc:
        write_error(args.run_dir, str(exc), refusal=True)
        return EXIT_REFUSED
    except Exception as exc:
        log.exception("run %s failed", args.run_dir.name)
        write_error(args.run_dir, f"{type(exc).__name__}: {exc}", refusal=False)
        return EXIT_FAILED
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    # SIGTERM (a cancel, a preemption, torchrun shutting down) stops the run at its next step with
    # its state saved; the controller resubmits or the cluster requeues it, and it resumes there.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sys.exit(main(cancel=stop))
