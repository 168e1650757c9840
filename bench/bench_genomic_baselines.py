"""Genomics-only baselines (Cox elastic net, SNN) on the real TCGA-BLCA and TCGA-UCEC tables (published 5-fold splits).

Both run the workflow's leak-free machinery: ``splits.make_splits`` (published files, their
``val`` = our test fold, an inner validation part carved from each training fold),
``preprocess.fit_fold_preprocessing`` on training patients only (bins, Welch-selected genes,
scaler) and ``metrics.evaluate_predictions`` on the held-out fold; the test fold is never used
for a choice.

- Cox elastic net: the workflow's ``coxnet`` model (``ghanet_workflow.coxnet.fit_fold``, sksurv):
  preprocessing fit on the whole training fold (train + inner val); the penalty is chosen on the
  inner validation part (Harrell's C), then the model is refit on the whole training fold.
- SNN (``ghanet_workflow.model.SNN``, the MCAT lineage's genomics-only baseline) exactly as the
  workflow's per-fold runner does it (``fold.run_fold``): preprocessing fit on the train split,
  cases built by ``fold.build_cases`` (the selected, scaled genes of every group concatenated; no
  slide features, ``Case.features = None``), ``train.train`` with the training defaults (Adam 2e-4,
  weight decay 1e-5, 20 epochs, grad_accum 32, class-balanced sampling), the inner validation
  split only logged, the final-epoch model reported.

Usage: ``python bench/bench_genomic_baselines.py [--cohorts blca ucec] [--models cox snn]
[--bootstrap 200] [--epochs 20]``. Prints one table per run with per-fold, mean ± sample std
(ddof=1) and pooled out-of-fold C-indices of each model and cohort.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
import torch
from tabulate import tabulate

from ghanet_workflow import cohort, coxnet, fold, metrics, preprocess, splits, train

REPO = Path(__file__).resolve().parents[1]
TCGA = REPO / "data" / "tcga"
MODEL_LABELS = {"cox": f"Cox elastic net (coxnet, l1_ratio {coxnet.L1_RATIO})", "snn": "SNN (workflow training defaults)"}


def load_cohort(name: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(patients, genomics, groups) of one real MCAT table, one row per patient."""
    table = cohort.read_clinical_table(TCGA / f"tcga_{name}_all_clean.csv.zip")
    groups = cohort.gene_groups(list(table.columns), cohort.read_signatures(TCGA / "signatures.csv"))
    first = table.drop_duplicates("case_id").set_index("case_id")
    columns = list(dict.fromkeys(column for members in groups.values() for column in members))
    return first[["survival_months", "censorship"]], first[columns].astype(float), groups


def fold_ids(fold_frame: pd.DataFrame) -> dict[str, list[str]]:
    """Split name (train, val, test) -> case ids of one fold frame of ``splits.make_splits``."""
    return {name: fold_frame.loc[fold_frame["split"] == name, "case_id"].tolist() for name in splits.SPLIT_NAMES}


# ----------------------------------------------------------------------------- Cox elastic net


def run_cox_fold(patients: pd.DataFrame, genomics: pd.DataFrame, groups: dict, fold_frame: pd.DataFrame,
                 bootstrap: int) -> tuple[dict, pd.DataFrame]:
    """Fit (``coxnet.fit_fold``) and evaluate one fold: (metrics, test predictions)."""
    ids = fold_ids(fold_frame)
    fit = coxnet.fit_fold(patients, genomics, groups, ids)
    train_pred = coxnet.predictions(fit, patients, genomics, ids["train"] + ids["val"])
    test_pred = coxnet.predictions(fit, patients, genomics, ids["test"])
    result = metrics.evaluate_predictions(train=train_pred, test=test_pred, bin_edges=fit.preprocessing.bin_edges,
                                          options={"bootstrap": bootstrap})
    result.update(n_genes=len(fit.columns), n_nonzero=fit.n_nonzero, alpha=fit.alpha)
    return result, test_pred.assign(split="test")


# ----------------------------------------------------------------------------- SNN


def fit_snn(patients: pd.DataFrame, genomics: pd.DataFrame, groups: dict, ids: Mapping[str, list[str]],
            training: Mapping) -> tuple[preprocess.FoldPreprocessing, dict[str, dict], train.TrainResult]:
    """Preprocessing on the train split, cases of every split, and the SNN trained as ``fold.run_fold`` does.

    Returns (preprocessing, split -> {case_id: Case}, training result). The SNN reads no slide
    features (``SNN.uses_slides`` is False): every case has ``features=None``.
    """
    prep = preprocess.fit_fold_preprocessing(patients.loc[ids["train"]], genomics.loc[ids["train"]], groups)
    data = cohort.BuiltCohort(patients=patients, genomics=genomics, groups=groups, slides=pd.DataFrame())
    cases = {split: fold.build_cases(data, prep, ids[split], None) for split in splits.SPLIT_NAMES}
    config = train.model_config(training, 0, fold.group_size_list(prep), prep.n_bins)
    with tempfile.TemporaryDirectory(prefix="snn_bench_") as out_dir:  # checkpoint + log, not kept
        result = train.train("snn", config, cases["train"], cases["val"], out_dir, training)
    return prep, cases, result


def run_snn_fold(patients: pd.DataFrame, genomics: pd.DataFrame, groups: dict, fold_frame: pd.DataFrame,
                 bootstrap: int, training: Mapping) -> tuple[dict, pd.DataFrame]:
    """Train the SNN on one fold and evaluate its final epoch on the test fold: (metrics, test predictions).

    The metrics' reference (censoring distribution, risk cut-off) is the training fold's own
    predictions (train + inner val), as in ``fold.run_fold``.
    """
    ids = fold_ids(fold_frame)
    prep, cases, result = fit_snn(patients, genomics, groups, ids, training)
    predictions = pd.concat([fold.prediction_frame(result.model, cases[split], split, 0)
                             for split in splits.SPLIT_NAMES], ignore_index=True)
    is_test = predictions["split"] == "test"
    outcome_ = metrics.evaluate_predictions(train=predictions[~is_test], test=predictions[is_test],
                                            bin_edges=prep.bin_edges, options={"bootstrap": bootstrap})
    outcome_.update(n_genes=int(sum(fold.group_size_list(prep))), n_nonzero=None,
                    final_val_cindex=float(result.log["val_cindex"].iloc[-1]))
    return outcome_, predictions[is_test]


# ----------------------------------------------------------------------------- cohorts and table


def fold_runners(bootstrap: int, training: Mapping) -> dict[str, Callable]:
    """Model name -> function(patients, genomics, groups, fold frame) -> (metrics, test predictions)."""
    return {
        "cox": lambda p, g, groups, f: run_cox_fold(p, g, groups, f, bootstrap),
        "snn": lambda p, g, groups, f: run_snn_fold(p, g, groups, f, bootstrap, training),
    }


def run_cohort(name: str, runner: Callable) -> tuple[list[dict], pd.DataFrame]:
    """All five published folds of one cohort: per-fold metrics and the pooled test predictions."""
    patients, genomics, groups = load_cohort(name)
    folds = splits.make_splits(patients, k=5, published_dir=TCGA / "splits" / f"tcga_{name}")
    results = [runner(patients, genomics, groups, fold_frame) for fold_frame in folds]
    return [metrics_ for metrics_, _ in results], pd.concat([pred for _, pred in results])


def table_rows(name: str, model: str, per_fold: list[dict], pooled: pd.DataFrame) -> list[list]:
    """Per-fold rows, the mean ± sample std row and the pooled out-of-fold row of one cohort and model."""
    rows = [[name.upper(), model, k, r["n_patients"], r["n_events"], r["n_genes"],
             "" if r["n_nonzero"] is None else r["n_nonzero"],
             f"{r['cindex']:.3f} [{r['cindex_ci_low']:.3f}, {r['cindex_ci_high']:.3f}]",
             f"{r['cindex_uno']:.3f}", f"{r['ibs']:.3f}", f"{r['logrank_p']:.3g}"] for k, r in enumerate(per_fold)]
    summary = metrics.aggregate_folds(per_fold)

    def mean_std(key: str) -> str:
        return f"{summary[key]['mean']:.3f} ± {summary[key]['std']:.3f}"

    rows.append([name.upper(), model, "mean ± std", "", "", "", "", mean_std("cindex"), mean_std("cindex_uno"),
                 mean_std("ibs"), ""])
    pooled_c = metrics.pooled_cindex(pooled)
    rows.append([name.upper(), model, "pooled out-of-fold", pooled_c["n_patients"], pooled_c["n_events"], "", "",
                 f"{pooled_c['cindex_harrell']:.3f}", "", "", ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", nargs="+", default=["blca", "ucec"])
    parser.add_argument("--models", nargs="+", default=["cox", "snn"], choices=sorted(MODEL_LABELS))
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=train.DEFAULTS["epochs"], help="SNN training epochs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the SNN's per-patient steps are too small to gain from more, "
                             "and on a busy machine extra threads slow them down many-fold)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    training = train.resolve_options({"epochs": args.epochs})
    runners = fold_runners(args.bootstrap, training)
    rows = []
    for name in args.cohorts:
        for model in args.models:
            wall, cpu = time.perf_counter(), time.process_time()
            rows.extend(table_rows(name, model, *run_cohort(name, runners[model])))
            print(f"{name} {model}: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")
    headers = ["cohort", "model", "fold", "patients", "events", "genes kept", "non-zero coefs",
               "Harrell C [95% CI]", "Uno C", "IBS", "log-rank p"]
    print(f"\nGenomics-only baselines, published MCAT 5-fold splits ({torch.get_num_threads()} torch threads): "
          + "; ".join(f"{m} = {MODEL_LABELS[m]}" for m in args.models)
          + f"; SNN {args.epochs} epochs, final epoch reported; std = sample std (ddof=1) over folds; "
          f"95% CI = percentile bootstrap ({args.bootstrap} resamples) of the test fold; genes kept: cox = "
          "distinct selected genes, preprocessing fit on train + inner val; snn = SNN input width (the six "
          "groups' selected genes concatenated, a gene in two groups twice), preprocessing fit on the train split")
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
