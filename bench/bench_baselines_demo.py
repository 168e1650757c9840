"""G-HANet against its baselines on the demo cohort: same folds, same harness, same metrics.

SIMULATION: the demo slides are synthetic (real tissue crops with a planted survival signal) and
the cohort has 40 patients, so these numbers show that the harness runs every model on the same
folds; they are not evidence about G-HANet, ABMIL, SNN or ABMIL+SNN on real TCGA-BLCA.

Every model goes through ghanet_workflow.fold.run_fold on every fold (tests/demo_features.run_folds:
folds side by side, one torch thread each) (fold-wise genomic
preprocessing, training, test prediction, metrics), and the test C-index is summarised per model
as mean ± SD over the folds.

    python bench/bench_baselines_demo.py                        # builds the demo features (~2 min)
    python bench/bench_baselines_demo.py --results results/demo_blca   # a finished workflow run
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from demo_features import build_demo_features, run_folds  # noqa: E402  (shared with the slow tests)

MODELS = ["ghanet", "abmil", "snn", "abmil_snn"]
WSI_AT_INFERENCE = {"ghanet": "yes", "abmil": "yes", "snn": "no (genes only)", "abmil_snn": "no (WSI + genes)"}


def cohort_and_folds(args: argparse.Namespace) -> tuple[Path, list[Path]]:
    """The built cohort folder and fold files: a finished workflow run's, or a fresh demo build."""
    if args.results:
        results = Path(args.results)
        return results / "cohort", sorted((results / "splits").glob("fold_*.csv"))
    run = build_demo_features(args.work / "demo")
    return run.cohort_dir, run.fold_csvs


def run_models(cohort_dir: Path, fold_csvs: list[Path], args: argparse.Namespace) -> pd.DataFrame:
    """One row per (model, fold): test C-index and the model's wall time over all folds."""
    options = {
        "training": {"epochs": args.epochs, "device": args.device, "seed": args.seed},
        "evaluation": {"bootstrap": 100},
    }
    rows = []
    for model in args.models:
        started = time.perf_counter()
        jobs = [(cohort_dir, f, model, args.work / "models" / model / f.stem, options) for f in fold_csvs]
        metrics = run_folds(jobs, workers=args.workers)
        seconds = time.perf_counter() - started
        rows += [{"model": model, "fold": m["fold"], "cindex": m["cindex"], "seconds": seconds} for m in metrics]
        print(f"{model}: C-index per fold {[round(m['cindex'], 3) for m in metrics]} ({seconds:.0f} s)", flush=True)
    return pd.DataFrame(rows)


def summary(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SD of the test C-index over the folds, per model."""
    grouped = per_fold.groupby("model", sort=False)
    return pd.DataFrame(
        {
            "model": list(grouped.groups),
            "WSI only at inference": [WSI_AT_INFERENCE[m] for m in grouped.groups],
            "C-index mean ± SD": [f"{g['cindex'].mean():.3f} ± {g['cindex'].std(ddof=1):.3f}" for _, g in grouped],
            "folds": [len(g) for _, g in grouped],
            "seconds (all folds)": [round(g["seconds"].iloc[0], 1) for _, g in grouped],
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", help="results/<cohort> of a finished run (cohort/ and splits/); run from the repo root"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/ghanet_bench_baselines"), help="scratch folder")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="folds trained side by side (one torch thread each)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cohort_dir, fold_csvs = cohort_and_folds(args)
    per_fold = run_models(cohort_dir, fold_csvs, args)
    print("\nSIMULATION: synthetic demo slides with a planted signal, 40 patients; not a result on TCGA-BLCA.")
    print(
        f"Test C-index over {len(fold_csvs)} patient-level folds, {args.epochs} epochs, same folds for every model:\n"
    )
    print(tabulate(summary(per_fold), headers="keys", tablefmt="github", showindex=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
