"""The partial report of a failed run: the tables of whatever finished, each failed fold named.

Snakemake does not run the report rules that need a fold that failed, yet the finished folds are
worth reading. The Snakefile's ``onerror`` calls :func:`write_partial_report`, which writes every
cohort product (and the paper table) from the fold files that exist, with an "Incomplete" banner
and each missing fold's reason from its training log, into ``results/<cohort>/report_partial``:
not into report/, whose files, present and newer than the fold outputs, would tell the next run
that nothing is left to do. The next complete C-index report removes it (``--replaces``).

Light on purpose (imported while Snakemake parses the workflow): the report runs in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path


def partial_report_commands(
    results: str,
    out_dir: Path,
    *,
    models: Sequence[str],
    folds: Sequence[int],
    cohort: str,
    encoder: str,
    target_mpp: float,
    failure_logs: str,
    other_cohorts: Sequence[str],
    options: str,
) -> list[list[str]]:
    """The two ``ghanet-wf report`` argument lists: every cohort product, then the paper table."""
    cohort_products = [
        *("--results-dir", results, "--models", *models, "--folds", *map(str, folds)),
        *("--cohort", cohort, "--encoder", encoder, "--target-mpp", str(target_mpp)),
        *("--failure-logs", failure_logs, "--out-dir", str(out_dir)),
    ]
    paper = ["paper", "--cindex", str(out_dir / "cindex.csv"), *other_cohorts]
    paper += ["--comparison", str(out_dir / "comparison.csv"), "--out-dir", str(out_dir)]
    return [[*arguments, "--options", options] for arguments in (cohort_products, paper)]


def write_partial_report(out_dir: str | Path, log_file: str | Path, src_dir: str | Path, **settings) -> str:
    """Run the partial report into ``out_dir`` (output in ``log_file``); returns what to tell the user.

    ``settings`` are :func:`partial_report_commands`' keywords. Never raises for a failed report
    command: the run has already failed, and the message says where the report's log is.
    """
    out_dir, log_file = Path(out_dir), Path(log_file)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src_dir), os.environ.get("PYTHONPATH", "")]))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log_stream:
        for arguments in partial_report_commands(settings.pop("results"), out_dir, **settings):
            command = ["python", "-m", "ghanet_workflow.cli", "report", *arguments]
            done = subprocess.run(command, stdout=log_stream, stderr=subprocess.STDOUT, env=env)
            if done.returncode != 0:
                return f"No partial report: the report command failed; see {log_file}"
    return (
        f"Partial report of the finished folds written to {out_dir}/: cindex.md names each failed "
        "fold and its reason. Fix the cause and rerun the same command: only what failed reruns, "
        "and the complete report replaces this one."
    )
