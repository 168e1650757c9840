"""Genomics-only Cox elastic net on the real TCGA-BLCA and TCGA-UCEC tables (published 5-fold splits).

Runs exactly the workflow's leak-free machinery: ``splits.make_splits`` (published files, their
``val`` = our test fold, an inner validation part carved from each training fold),
``preprocess.fit_fold_preprocessing`` on the training fold (bins, Welch-selected genes, scaler)
and ``metrics.evaluate_predictions`` on the held-out fold. The elastic-net penalty is chosen on
the inner validation part (Harrell's C), then the model is refit on the whole training fold;
the test fold is never used for a choice.

Usage: ``python bench/bench_genomic_baselines.py [--cohorts blca ucec] [--bootstrap 200]``.
Prints a table of per-fold and mean ± sample std (ddof=1) C-indices per cohort.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.util import Surv
from tabulate import tabulate

from ghanet_workflow import cohort, metrics, preprocess, splits

REPO = Path(__file__).resolve().parents[1]
TCGA = REPO / "data" / "tcga"
L1_RATIO = 0.5


def load_cohort(name: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(patients, genomics, groups) of one real MCAT table, one row per patient."""
    table = cohort.read_clinical_table(TCGA / f"tcga_{name}_all_clean.csv.zip")
    groups = cohort.gene_groups(list(table.columns), cohort.read_signatures(TCGA / "signatures.csv"))
    first = table.drop_duplicates("case_id").set_index("case_id")
    columns = list(dict.fromkeys(column for members in groups.values() for column in members))
    return first[["survival_months", "censorship"]], first[columns].astype(float), groups


def design(prep: preprocess.FoldPreprocessing, genomics: pd.DataFrame) -> np.ndarray:
    """Selected, scaled genes of all groups side by side (a gene listed in two groups once)."""
    columns = list(dict.fromkeys(c for members in prep.selected_columns().values() for c in members))
    return ((genomics[columns] - prep.means[columns]) / prep.scales[columns]).to_numpy(dtype=float)


def outcome(patients: pd.DataFrame) -> np.ndarray:
    """sksurv structured outcome (event = 1 - censorship)."""
    return Surv.from_arrays(event=patients["censorship"].to_numpy() == 0, time=patients["survival_months"].to_numpy())


def choose_alpha(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, val: pd.DataFrame) -> float:
    """Penalty on the elastic-net path with the best Harrell C on the inner validation part."""
    path = CoxnetSurvivalAnalysis(l1_ratio=L1_RATIO, alpha_min_ratio=0.01, n_alphas=30).fit(x_train, y_train)
    scores = [
        metrics.harrell_cindex(val["survival_months"].to_numpy(), (val["censorship"] == 0).to_numpy(),
                               path.predict(x_val, alpha=alpha))
        for alpha in path.alphas_
    ]
    return float(path.alphas_[int(np.nanargmax(scores))])


def fold_predictions(model: CoxnetSurvivalAnalysis, x: np.ndarray, patients: pd.DataFrame,
                     prep: preprocess.FoldPreprocessing, horizon: float) -> pd.DataFrame:
    """time, event, risk and survival at the end of each bin (the last bin ends at ``horizon``)."""
    ends = np.append(prep.bin_edges[1:-1], horizon)
    curves = model.predict_survival_function(x)
    frame = pd.DataFrame({"time": patients["survival_months"].to_numpy(),
                          "event": (patients["censorship"] == 0).astype(int).to_numpy(),
                          "risk": model.predict(x)}, index=patients.index)
    surv = np.array([curve(np.clip(ends, curve.x[0], curve.x[-1])) for curve in curves])
    for j in range(surv.shape[1]):
        frame[f"surv_{j}"] = surv[:, j]
    return frame


def run_fold(patients: pd.DataFrame, genomics: pd.DataFrame, groups: dict, fold: pd.DataFrame,
             bootstrap: int) -> tuple[dict, pd.DataFrame]:
    """Preprocess, choose the penalty, refit and evaluate one fold: (metrics, test predictions)."""
    ids = {name: fold.loc[fold["split"] == name, "case_id"].tolist() for name in splits.SPLIT_NAMES}
    training = ids["train"] + ids["val"]
    prep = preprocess.fit_fold_preprocessing(patients.loc[training], genomics.loc[training], groups)
    alpha = choose_alpha(design(prep, genomics.loc[ids["train"]]), outcome(patients.loc[ids["train"]]),
                         design(prep, genomics.loc[ids["val"]]), patients.loc[ids["val"]])
    model = CoxnetSurvivalAnalysis(l1_ratio=L1_RATIO, alphas=[alpha], fit_baseline_model=True)
    model.fit(design(prep, genomics.loc[training]), outcome(patients.loc[training]))
    horizon = float(patients.loc[training, "survival_months"].max())
    train_pred = fold_predictions(model, design(prep, genomics.loc[training]), patients.loc[training], prep, horizon)
    test_ids = ids["test"]
    test_pred = fold_predictions(model, design(prep, genomics.loc[test_ids]), patients.loc[test_ids], prep, horizon)
    result = metrics.evaluate_predictions(test_pred, train_pred, prep.bin_edges, {"bootstrap": bootstrap})
    result.update(n_genes=int(design(prep, genomics.iloc[:1]).shape[1]),
                  n_nonzero=int(np.count_nonzero(model.coef_[:, 0])), alpha=alpha)
    return result, test_pred.assign(split="test")


def run_cohort(name: str, bootstrap: int) -> tuple[list[dict], pd.DataFrame]:
    """All five published folds of one cohort: per-fold metrics and the pooled test predictions."""
    patients, genomics, groups = load_cohort(name)
    folds = splits.make_splits(patients, k=5, published_dir=TCGA / "splits" / f"tcga_{name}")
    results = [run_fold(patients, genomics, groups, fold, bootstrap) for fold in folds]
    return [metrics_ for metrics_, _ in results], pd.concat([pred for _, pred in results])


def table_rows(name: str, per_fold: list[dict], pooled: pd.DataFrame) -> list[list]:
    """Per-fold rows then the mean ± std row of one cohort."""
    rows = [[name.upper(), k, r["n_patients"], r["n_events"], r["n_genes"], r["n_nonzero"],
             f"{r['cindex']:.3f} [{r['cindex_ci_low']:.3f}, {r['cindex_ci_high']:.3f}]",
             f"{r['cindex_uno']:.3f}", f"{r['ibs']:.3f}", f"{r['logrank_p']:.3g}"] for k, r in enumerate(per_fold)]
    summary = metrics.aggregate_folds(per_fold)

    def mean_std(key: str) -> str:
        return f"{summary[key]['mean']:.3f} ± {summary[key]['std']:.3f}"

    rows.append([name.upper(), "mean ± std", "", "", "", "", mean_std("cindex"), mean_std("cindex_uno"),
                 mean_std("ibs"), ""])
    rows.append([name.upper(), "pooled out-of-fold", len(pooled), int(pooled["event"].sum()), "", "",
                 f"{metrics.pooled_cindex(pooled):.3f}", "", "", ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", nargs="+", default=["blca", "ucec"])
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    rows = []
    for name in args.cohorts:
        start = time.perf_counter()
        rows.extend(table_rows(name, *run_cohort(name, args.bootstrap)))
        print(f"{name}: {time.perf_counter() - start:.1f} s")
    headers = ["cohort", "fold", "patients", "events", "genes kept", "non-zero coefs",
               "Harrell C [95% CI]", "Uno C", "IBS", "log-rank p"]
    print("\nGenomics-only Cox elastic net (l1_ratio 0.5), published MCAT 5-fold splits; "
          "std = sample std (ddof=1)")
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
