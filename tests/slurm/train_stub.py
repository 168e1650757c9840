"""Stand-in for a training job: one checkpoint per epoch, resumes from it when restarted.

The model state is a hash chain over the epochs, so a resume that skips or repeats an epoch
ends in a different final state than an uninterrupted run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from ghanet_workflow.atomic import write_json


def advance(state: str, epoch: int) -> str:
    """One 'epoch' of training: the next link of the hash chain."""
    return hashlib.sha256(f"{state}:{epoch}".encode()).hexdigest()


def load_checkpoint(path: Path, seed: int) -> tuple[int, str]:
    """Return (next epoch, state) from the checkpoint, or the start state when there is none."""
    if not path.exists():
        return 0, f"seed-{seed}"
    saved = json.loads(path.read_text())
    return saved["next_epoch"], saved["state"]


def train(checkpoint: Path, seed: int, epochs: int, epoch_seconds: float) -> dict:
    """Run the remaining epochs, saving a checkpoint after each; return the final metrics."""
    start, state = load_checkpoint(checkpoint, seed)
    for epoch in range(start, epochs):
        time.sleep(epoch_seconds)
        state = advance(state, epoch)
        write_json(
            checkpoint, {"next_epoch": epoch + 1, "state": state, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        )
    return {
        "state": state,
        "epochs": epochs,
        "resumed_from_epoch": start,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--epoch-seconds", type=float, default=0.0)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fail", action="store_true", help="fail after training (for keep-going tests)")
    parser.add_argument("--mem-mb", type=int, default=0, help="memory this attempt was given (resources.mem_mb)")
    parser.add_argument("--needs-mem-mb", type=int, default=0, help="fail first when given less (for retry tests)")
    args = parser.parse_args(argv)
    if args.mem_mb < args.needs_mem_mb:
        print(f"train_stub: fold {args.seed} needs {args.needs_mem_mb} MB, got {args.mem_mb}", file=sys.stderr)
        return 1
    args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    metrics = train(args.checkpoint, args.seed, args.epochs, args.epoch_seconds)
    if args.fail:
        print(f"train_stub: fold {args.seed} failed on purpose", file=sys.stderr)
        return 1
    write_json(args.out, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
