"""A run program for the launcher tests: what a training run does, without the training.

Each rank records its pid (so a test can check every process is gone after a cancel), then, by
``--mode`` (or spec.json's ``mode``): succeed (rank 0 reports progress and writes result.json), fail (the last rank fails with
an error.json), refuse (a refusal), hang (until cancelled), or hang-ignoring-sigterm (only SIGKILL
ends it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from shared.launch import LaunchSpecError, append_progress, read_spec, write_error, write_result


def main(argv: list[str] | None = None, cancel: threading.Event | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--mode", default=None)  # else spec.json's "mode" (a controller's run), else succeed
    args = parser.parse_args(argv)
    if args.mode is None:
        try:
            args.mode = read_spec(args.run_dir).get("mode", "succeed")
        except LaunchSpecError:
            args.mode = "succeed"
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    pids = args.run_dir / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / str(rank)).write_text(str(os.getpid()))
    cancel = cancel or threading.Event()
    if args.mode == "succeed":
        if rank == 0:
            append_progress(args.run_dir, {"stage": "train", "fraction": 0.5, "world": world})
            write_result(args.run_dir, "file:///ckpt", 7, {"loss": 1.5}, world=world)
        return 0
    if args.mode == "fail":
        if rank == world - 1:
            write_error(args.run_dir, f"rank {rank} broke", refusal=False)
            return 1
        time.sleep(30)  # the launcher's group ends the healthy ranks
        return 0
    if args.mode == "refuse":
        write_error(args.run_dir, "the spec asks for the impossible", refusal=True)
        return 2
    # hang / hang-ignoring-sigterm
    while not cancel.is_set():
        time.sleep(0.05)
    if args.mode == "hang-ignoring-sigterm":
        while True:
            time.sleep(1)
    return 143


if __name__ == "__main__":
    stop = threading.Event()
    if "hang-ignoring-sigterm" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sys.exit(main(cancel=stop))
