"""Cox elastic net (``coxnet``): the genomics-only Cox baseline, fitted on the CPU with scikit-survival.

One fold, as bench/bench_genomic_baselines.py has always run it:

- Preprocessing (:func:`ghanet_workflow.preprocess.fit_fold_preprocessing`: survival bins,
  Welch-selected genes, scaler) is fit on the WHOLE training fold, train + inner val. (The
  networks of :func:`ghanet_workflow.fold.train_fold` fit it on the train split only.) The test
  split never enters.
- Design matrix: the selected, scaled genes of all groups side by side, a gene listed in two
  groups once (:func:`design`).
- Penalty: scikit-survival's ``CoxnetSurvivalAnalysis`` path (:data:`L1_RATIO`,
  :data:`N_ALPHAS` penalties down to :data:`ALPHA_MIN_RATIO` x the largest) fit on the train
  split; the penalty with the best Harrell C on the inner val split is kept (the first on the
  path among ties).
- Refit at that penalty on the whole training fold, Breslow baseline; predictions: risk = the
  linear predictor, survival at the end of each bin (the last bin ends at the longest training
  time).

:func:`train_fold` writes the fold outputs of docs/CONTRACTS.md as the networks do:
``training_log.csv`` has one row per penalty of the path (``epoch`` = its 1-based place,
``alpha``, ``n_nonzero``, ``val_cindex``), ``train_info.json``'s ``selected_epoch`` is the
chosen place (with ``alpha`` and ``n_nonzero``), and ``model.pt`` holds a
:class:`ghanet_workflow.model.CoxnetModel` (genomics needed at inference). No checkpoint.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.util import Surv

from .atomic import write_csv
from .errors import InputError
from .metrics import harrell_cindex
from .model import CoxnetModel
from .model_io import save_model
from .preprocess import FoldPreprocessing, fit_fold_preprocessing
from .train import TrainResult

log = logging.getLogger(__name__)

MODEL_NAME = "coxnet"
#: elastic-net mixing (1 = lasso, 0 = ridge)
L1_RATIO = 0.5
#: penalties on the path
N_ALPHAS = 30
#: smallest penalty of the path as a share of the largest
ALPHA_MIN_RATIO = 0.01
#: shorter paths tried in turn when the solver overflows on the weakest penalties (ArithmeticError
#: "weights are too large", seen with thousands of genes, genomics.select_genes: false): the path
#: then stops at a stronger penalty; the training log shows the penalties it holds
FALLBACK_ALPHA_MIN_RATIOS = (0.05, 0.1, 0.2, 0.5)
LOG_COLUMNS = ["epoch", "alpha", "n_nonzero", "val_cindex"]


@dataclass
class CoxnetFit:
    """One fold's fitted Cox elastic net: preprocessing, chosen penalty, refit model, path log."""

    preprocessing: FoldPreprocessing
    model: CoxnetSurvivalAnalysis
    alpha: float
    selected: int  # 1-based place of ``alpha`` on the path
    path_log: pd.DataFrame  # LOG_COLUMNS, one row per penalty
    horizon: float  # end of the last bin: the longest training-fold time

    @property
    def columns(self) -> list[str]:
        return design_columns(self.preprocessing)

    @property
    def coef(self) -> np.ndarray:
        """Coefficients at the chosen penalty (the model's last: a single penalty, or a path ending there)."""
        return self.model.coef_[:, -1]

    @property
    def n_nonzero(self) -> int:
        return int(np.count_nonzero(self.coef))

    def risk(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x, alpha=self.alpha)

    def survival_functions(self, x: np.ndarray):
        return self.model.predict_survival_function(x, alpha=self.alpha)


def design_columns(prep: FoldPreprocessing) -> list[str]:
    """Selected gene columns of all groups, in group order, a gene listed in two groups once."""
    return list(dict.fromkeys(c for members in prep.selected_columns().values() for c in members))


def design(prep: FoldPreprocessing, genomics: pd.DataFrame) -> np.ndarray:
    """Selected, scaled genes of all groups side by side (float64, rows as in ``genomics``)."""
    columns = design_columns(prep)
    return ((genomics[columns] - prep.means[columns]) / prep.scales[columns]).to_numpy(dtype=float)


def outcome(patients: pd.DataFrame) -> np.ndarray:
    """sksurv structured outcome (event = 1 - censorship)."""
    return Surv.from_arrays(event=patients["censorship"].to_numpy() == 0, time=patients["survival_months"].to_numpy())


def alpha_path(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, val: pd.DataFrame) -> pd.DataFrame:
    """The penalty path fit on the train split, each penalty scored by Harrell's C on the inner val split."""
    for ratio in (ALPHA_MIN_RATIO, *FALLBACK_ALPHA_MIN_RATIOS):
        path = CoxnetSurvivalAnalysis(l1_ratio=L1_RATIO, alpha_min_ratio=ratio, n_alphas=N_ALPHAS)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                path.fit(x_train, y_train)
            break
        except ArithmeticError as error:
            log.warning("coxnet: the penalty path down to %s x the largest failed (%s); trying a shorter one", ratio, error)
    else:
        raise InputError(
            "coxnet: scikit-survival's solver overflowed on every penalty path tried (down to "
            f"{FALLBACK_ALPHA_MIN_RATIOS[-1]} x the largest penalty); keep fewer genes (genomics.select_genes: true)"
        )
    event, time = (val["censorship"] == 0).to_numpy(), val["survival_months"].to_numpy()
    return pd.DataFrame(
        {
            "epoch": np.arange(1, len(path.alphas_) + 1),
            "alpha": path.alphas_,
            "n_nonzero": np.count_nonzero(path.coef_, axis=0),
            "val_cindex": [harrell_cindex(event=event, time=time, risk=path.predict(x_val, alpha=a)) for a in path.alphas_],
        },
        columns=LOG_COLUMNS,
    )


def choose_alpha(path_log: pd.DataFrame) -> int:
    """Row of ``path_log`` with the best inner-val C (the first among ties); InputError when none is defined."""
    scores = path_log["val_cindex"].to_numpy(dtype=float)
    if np.isnan(scores).all():
        raise InputError(
            "coxnet: no penalty has a defined C-index on the inner validation split (it needs a comparable "
            "pair: at least one event and two patients); raise splits.inner_val_fraction"
        )
    return int(np.nanargmax(scores))


def fit_fold(
    patients: pd.DataFrame,
    genomics: pd.DataFrame,
    groups: Mapping[str, Sequence[str]],
    ids: Mapping[str, Sequence[str]],
    genomics_options: Mapping | None = None,
) -> CoxnetFit:
    """Preprocess on train + inner val, choose the penalty on the inner val split, refit on train + val.

    ``patients`` (survival_months, censorship) and ``genomics`` are indexed by case_id; ``ids``
    maps split (train, val, test) to case ids. Only the train and val patients are read.
    """
    train_ids, val_ids = list(ids["train"]), list(ids["val"])
    if not train_ids or not val_ids:
        raise InputError(
            "coxnet needs a train and an inner validation split to choose its penalty; "
            f"got {len(train_ids)} train and {len(val_ids)} val patients (splits.inner_val_fraction > 0)"
        )
    training = train_ids + val_ids
    prep = fit_fold_preprocessing(patients.loc[training], genomics.loc[training], groups, genomics_options)
    path_log = alpha_path(
        design(prep, genomics.loc[train_ids]), outcome(patients.loc[train_ids]),
        design(prep, genomics.loc[val_ids]), patients.loc[val_ids],
    )
    row = choose_alpha(path_log)
    alpha = float(path_log["alpha"].iloc[row])
    x, y = design(prep, genomics.loc[training]), outcome(patients.loc[training])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            model = CoxnetSurvivalAnalysis(l1_ratio=L1_RATIO, alphas=[alpha], fit_baseline_model=True).fit(x, y)
        except ArithmeticError:  # a weak penalty fit from zero overflows: follow the path down to it
            log.warning("coxnet: refit at penalty %.4g alone overflowed; refitting along the path down to it", alpha)
            path = path_log["alpha"].to_numpy(dtype=float)[: row + 1]
            model = CoxnetSurvivalAnalysis(l1_ratio=L1_RATIO, alphas=path, fit_baseline_model=True).fit(x, y)
    horizon = float(patients.loc[training, "survival_months"].max())
    return CoxnetFit(prep, model, alpha, row + 1, path_log, horizon)


def bin_ends(fit: CoxnetFit) -> np.ndarray:
    """End of each survival bin: the inner bin cuts, then the longest training time."""
    return np.append(fit.preprocessing.bin_edges[1:-1], fit.horizon)


def predictions(fit: CoxnetFit, patients: pd.DataFrame, genomics: pd.DataFrame, case_ids: Sequence[str]) -> pd.DataFrame:
    """case_id, time, event, risk (linear predictor) and surv_j = S(end of bin j) of ``case_ids`` (not empty)."""
    case_ids = list(case_ids)
    x = design(fit.preprocessing, genomics.loc[case_ids])
    rows = patients.loc[case_ids]
    ends = bin_ends(fit)
    frame = pd.DataFrame({
        "case_id": case_ids,
        "time": rows["survival_months"].to_numpy(dtype=float),
        "event": (rows["censorship"] == 0).astype(int).to_numpy(),
        "risk": fit.risk(x),
    })
    surv = np.array([curve(np.clip(ends, curve.x[0], curve.x[-1])) for curve in fit.survival_functions(x)])
    for j in range(len(ends)):
        frame[f"surv_{j}"] = surv[:, j]
    return frame


def torch_model(fit: CoxnetFit) -> tuple[CoxnetModel, dict]:
    """The fit as a :class:`CoxnetModel` over the concatenated per-group genes, and its config."""
    selected = fit.preprocessing.selected_columns()
    config = {"group_sizes": [len(members) for members in selected.values()], "n_bins": fit.preprocessing.n_bins}
    model = CoxnetModel(**config)
    coef = dict(zip(fit.columns, fit.coef))
    concatenated = [c for members in selected.values() for c in members]
    first = {column: concatenated.index(column) for column in coef}
    values = np.zeros(len(concatenated))
    for column, weight in coef.items():
        values[first[column]] = weight
    baseline = fit.survival_functions(np.zeros((1, len(fit.columns))))[0]
    ends = bin_ends(fit)
    with torch.no_grad():
        model.coef.copy_(torch.from_numpy(values))
        model.baseline_survival.copy_(torch.from_numpy(np.asarray(baseline(np.clip(ends, baseline.x[0], baseline.x[-1])))))
    return model, config


def train_fold(cohort, fold: Mapping[str, Sequence[str]], fold_id, out_dir: str | Path, genomics_options: Mapping | None) -> dict:
    """Fit one fold of a built cohort and write its training outputs; returns train_info (without runtime).

    Writes preprocessing.json, selected_genes.csv, training_log.csv, predictions.csv (train,
    val, test) and model.pt in ``out_dir``; the caller writes train_info.json.
    """
    out_dir = Path(out_dir)
    fit = fit_fold(cohort.patients, cohort.genomics, cohort.groups, fold, genomics_options)
    fit.preprocessing.to_json(out_dir / "preprocessing.json")
    write_csv(out_dir / "selected_genes.csv", fit.preprocessing.selected_genes_table())
    write_csv(out_dir / "training_log.csv", fit.path_log)
    frames = [
        predictions(fit, cohort.patients, cohort.genomics, fold[split]).assign(split=split, fold=fold_id)
        for split in ("train", "val", "test") if fold[split]
    ]
    table = pd.concat(frames, ignore_index=True)
    cutoff = float(table.loc[table["split"] != "test", "risk"].median())  # training fold
    model, config = torch_model(fit)
    result = TrainResult(model=model, log=fit.path_log, selected_epoch=fit.selected, device=torch.device("cpu"))
    save_model(out_dir / "model.pt", MODEL_NAME, config, result, fit.preprocessing, cutoff, fold_id)
    write_csv(out_dir / "predictions.csv", table)
    log.info("fold %s, coxnet: alpha %.4g (%d of %d on the path), %d of %d genes non-zero",
             fold_id, fit.alpha, fit.selected, len(fit.path_log), fit.n_nonzero, len(fit.columns))
    return {"model": MODEL_NAME, "fold": fold_id, "selected_epoch": fit.selected, "alpha": fit.alpha,
            "n_nonzero": fit.n_nonzero}
