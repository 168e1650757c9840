"""Evaluation stage: survival metrics of one fold's predictions, all computed by scikit-survival.

Per fold, on the held-out test patients:
- Harrell's C-index (``concordance_index_censored``) with a seeded percentile bootstrap 95% CI;
- Uno's C-index (``concordance_index_ipcw``), censoring distribution from the TRAINING fold,
  truncation time ``tau`` = a quantile (default 0.9) of the training follow-up times;
- cumulative/dynamic AUC (``cumulative_dynamic_auc``) at the configured months, where defined;
- integrated Brier score (``integrated_brier_score``) of the predicted survival curves, mapped
  from bins to time as a step function (see :func:`survival_at`);
- risk groups: cut-off = median risk of the training fold's own predictions; log-rank test
  (``compare_survival``) of high vs low risk on the test fold.
A metric that is undefined on a fold (too few patients or events, time outside follow-up) is
NaN, with the reason under ``notes`` (metric name -> reason text); nothing crashes. In
metrics.json (strict JSON, :func:`ghanet_workflow.atomic.write_json`) NaN is written as null.

"Training fold" here means every non-test patient of the fold (its train and inner val parts).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sksurv.compare import compare_survival
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

from ghanet_workflow.atomic import strict_json, write_json
from ghanet_workflow.errors import InputError
from ghanet_workflow.options import parse_options

log = logging.getLogger(__name__)

#: Config options (config section ``evaluation``).
DEFAULTS: dict = {
    "bootstrap": 1000,  # bootstrap resamples of the test fold for the C-index CI (0 = no CI)
    "ci_level": 0.95,  # level of the bootstrap percentile interval
    "auc_times_months": [12, 36, 60],  # times of the cumulative/dynamic AUC
    "tau_months": None,  # truncation time of Uno's C; null = tau_quantile of the training follow-up
    "tau_quantile": 0.9,  # quantile of the training fold's follow-up times used as tau (bounds IPC weights)
    "ibs_points": 50,  # time points of the integrated Brier score grid
    "seed": 1,  # seed of the bootstrap
}

#: Standard deviation across folds is the sample std (ddof=1), stated in the report.
STD_DDOF = 1
PREDICTION_COLUMNS = ("time", "event", "risk")


# ----------------------------------------------------------------------------- inputs


def survival_columns(frame: pd.DataFrame) -> list[str]:
    """The ``surv_0..surv_{B-1}`` columns, in bin order."""
    columns = [column for column in frame.columns if str(column).startswith("surv_")]
    return sorted(columns, key=lambda column: int(str(column)[5:]))


def _checked(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """Predictions with finite time >= 0, event in {0,1} (bool) and finite risk."""
    missing = [column for column in PREDICTION_COLUMNS if column not in frame.columns]
    if missing:
        raise InputError(f"{what} predictions lack column(s) {missing}; need {list(PREDICTION_COLUMNS)}")
    frame = frame.copy()
    frame["time"] = frame["time"].astype(float)
    frame["risk"] = frame["risk"].astype(float)
    if not frame["event"].isin([0, 1, True, False]).all():
        raise InputError(f"{what} predictions: column 'event' must be 0/1")
    frame["event"] = frame["event"].astype(bool)
    bad = ~np.isfinite(frame[["time", "risk"]].to_numpy()).all(axis=1) | (frame["time"] < 0)
    if bad.any():
        raise InputError(f"{what} predictions: non-finite risk or bad time on row(s) {list(np.flatnonzero(bad))[:10]}")
    return frame


def _structured(frame: pd.DataFrame) -> np.ndarray:
    """sksurv structured array (event, time)."""
    return Surv.from_arrays(event=frame["event"].to_numpy(bool), time=frame["time"].to_numpy(float))


# ----------------------------------------------------------------------------- single metrics


def harrell_cindex(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C (sksurv); NaN when no pair is comparable.

    Arguments in ``concordance_index_censored``'s order: event indicator (bool or 0/1), time, risk.
    """
    event, time = np.asarray(event), np.asarray(time)
    if event.dtype != bool and not np.isin(event, (0, 1)).all():
        raise ValueError("harrell_cindex(event, time, risk): event must be bool or 0/1 (was time passed first?)")
    if not event.any() or len(time) < 2:
        return math.nan
    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # no comparable pair -> 0/0 -> NaN
            return float(concordance_index_censored(event.astype(bool), time, risk)[0])
    except (ValueError, ZeroDivisionError):
        return math.nan


def bootstrap_cindex(test: pd.DataFrame, n: int, level: float, seed: int) -> tuple[float, float, int]:
    """Percentile bootstrap CI of Harrell's C over test patients: (low, high, n valid resamples)."""
    if n <= 0:
        return math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    time, event, risk = (test[c].to_numpy() for c in ("time", "event", "risk"))
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(test), len(test))
        value = harrell_cindex(event=event[idx], time=time[idx], risk=risk[idx])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan, 0
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high), len(values)


def support_limit(train: pd.DataFrame, test: pd.DataFrame) -> float:
    """Latest time where the training censoring distribution is positive, capped at the test follow-up.

    IPCW metrics are defined up to here; the test fold is censored at this time for AUC and IBS.
    """
    censoring = CensoringDistributionEstimator().fit(_structured(train))
    supported = censoring.unique_time_[censoring.prob_ > 0]
    return min(float(supported.max()), float(test["time"].max()))


def uno_tau(train: pd.DataFrame, test: pd.DataFrame, tau: float | None, quantile: float) -> float:
    """Truncation time of Uno's C: ``tau`` or the ``quantile`` of the training follow-up times.

    Both are capped at :func:`support_limit`. Without a cap on the tail, the inverse probability
    of censoring weights (1/G(t)^2) of the few late events dominate the estimate.
    """
    chosen = float(np.quantile(train["time"], quantile)) if tau is None else float(tau)
    return min(chosen, support_limit(train, test))


def truncate(test: pd.DataFrame, limit: float) -> pd.DataFrame:
    """Administrative censoring at ``limit`` (exact for every metric evaluated at times < limit)."""
    beyond = test["time"] > limit
    return test.assign(time=test["time"].where(~beyond, limit), event=test["event"] & ~beyond)


def survival_at(surv: np.ndarray, bin_edges: np.ndarray, times: Sequence[float]) -> np.ndarray:
    """Predicted survival S(t) (patients x times) from per-bin survival ``surv`` (patients x bins).

    surv[:, j] = P(T beyond bin j). At a time t inside bin j the patient has outlived bins
    0..j-1, so S(t) = surv[:, j-1] (1 in the first bin): a step function exact at the bin edges.
    """
    bins = np.digitize(np.asarray(times, dtype=float), np.asarray(bin_edges, dtype=float)[1:-1])
    padded = np.hstack([np.ones((surv.shape[0], 1)), surv])
    return padded[:, bins]


def _guarded(notes: dict, name: str, compute: Callable[[], float]) -> float:
    """Run ``compute``; on an undefined case store the reason under ``notes[name]`` and return NaN."""
    try:
        value = float(compute())
    except (ValueError, ZeroDivisionError, IndexError) as exc:
        notes[name] = str(exc)
        return math.nan
    if math.isnan(value):
        notes.setdefault(name, "undefined on this fold")
    return value


def uno_cindex(train: pd.DataFrame, test: pd.DataFrame, tau: float) -> float:
    """Uno's C (sksurv, IPCW with the training censoring distribution), truncated at tau."""
    if not (test["event"] & (test["time"] < tau)).any():
        raise ValueError(f"no test event before tau = {tau:.2f} months")
    return concordance_index_ipcw(_structured(train), _structured(test), test["risk"].to_numpy(), tau=tau)[0]


def dynamic_auc(train: pd.DataFrame, test: pd.DataFrame, month: float, limit: float) -> float:
    """Cumulative/dynamic AUC at ``month`` (sksurv) on the test fold censored at ``limit``."""
    truncated = truncate(test, limit)
    if not month < limit:
        raise ValueError(f"{month} months is not inside the follow-up (IPCW defined before {limit:.2f} months)")
    cases = truncated["event"] & (truncated["time"] <= month)
    controls = truncated["time"] > month
    if not cases.any() or not controls.any():
        raise ValueError(
            f"{int(cases.sum())} test events by {month} months and {int(controls.sum())} "
            "patients beyond it; need at least one of each"
        )
    auc, _ = cumulative_dynamic_auc(_structured(train), _structured(truncated), truncated["risk"].to_numpy(), [month])
    return auc[0]


def integrated_brier(
    train: pd.DataFrame, test: pd.DataFrame, bin_edges: np.ndarray, limit: float, n_points: int
) -> float:
    """Integrated Brier score (sksurv) over test-time quantiles (10th..90th) inside [min, limit)."""
    columns = survival_columns(test)
    if len(columns) != len(bin_edges) - 1:
        raise ValueError(f"{len(columns)} surv_* columns for {len(bin_edges) - 1} bins")
    truncated = truncate(test, limit)
    lower, upper = truncated["time"].min(), truncated["time"].max()
    grid = np.unique(np.quantile(truncated["time"], np.linspace(0.1, 0.9, n_points)))
    grid = grid[(grid >= lower) & (grid < upper)]
    if grid.size < 2:
        raise ValueError("fewer than two distinct follow-up times for the Brier grid")
    estimate = survival_at(truncated[columns].to_numpy(float), bin_edges, grid)
    return integrated_brier_score(_structured(train), _structured(truncated), estimate, grid)


def logrank(test: pd.DataFrame, cutoff: float) -> float:
    """p-value of the log-rank test of risk > cutoff vs <= cutoff (sksurv ``compare_survival``)."""
    high = test["risk"].to_numpy() > cutoff
    n_high, n_low = int(high.sum()), int((~high).sum())
    if n_high == 0 or n_low == 0:
        raise ValueError(f"all test patients fall in one risk group ({n_high} high, {n_low} low)")
    if not test["event"].any():
        raise ValueError("no event in the test fold")
    _, pvalue = compare_survival(_structured(test), high)
    return float(pvalue)


# ----------------------------------------------------------------------------- one fold


def evaluate_predictions(
    train: pd.DataFrame, test: pd.DataFrame, bin_edges: Sequence[float], options: Mapping | None = None
) -> dict:
    """All metrics of one fold (JSON-ready dict; NaN = undefined, reason under ``notes``).

    Training fold first, as in sksurv's ``concordance_index_ipcw(survival_train, survival_test, ...)``.
    ``train`` and ``test`` have columns time, event (1 = event), risk; ``test`` also
    surv_0..surv_{B-1}. ``train`` are the training fold's own predictions: they give the
    censoring distribution and the risk cut-off.
    """
    options = {**DEFAULTS, **(options or {})}
    train, test = _checked(train, "train"), _checked(test, "test")
    bin_edges = np.asarray(bin_edges, dtype=float)
    notes: dict[str, str] = {}
    result: dict = {"n_patients": len(test), "n_events": int(test["event"].sum())}
    result["cindex"] = _frame_cindex(test)
    if math.isnan(result["cindex"]):
        notes["cindex"] = _no_pair_reason(result["n_patients"], result["n_events"])
    low, high, n_valid = bootstrap_cindex(test, options["bootstrap"], options["ci_level"], options["seed"])
    result.update(cindex_ci_low=low, cindex_ci_high=high, bootstrap_valid=n_valid)
    if n_valid == 0:
        why = (
            "bootstrap disabled (evaluation.bootstrap = 0)"
            if options["bootstrap"] <= 0
            else f"none of the {options['bootstrap']} bootstrap resamples of the test fold has a comparable pair"
        )
        notes["cindex_ci_low"] = notes["cindex_ci_high"] = why
    limit = support_limit(train, test)
    tau = result["tau_months"] = uno_tau(train, test, options["tau_months"], options["tau_quantile"])
    result["cindex_uno"] = _guarded(notes, "cindex_uno", lambda: uno_cindex(train, test, tau))
    for month in options["auc_times_months"]:
        name = f"auc_{month:g}m"
        result[name] = _guarded(notes, name, lambda month=month: dynamic_auc(train, test, month, limit))
    result["ibs"] = _guarded(
        notes, "ibs", lambda: integrated_brier(train, test, bin_edges, limit, options["ibs_points"])
    )
    result["risk_cutoff"] = float(train["risk"].median())
    high = test["risk"] > result["risk_cutoff"]
    result["n_high_risk"], result["n_low_risk"] = int(high.sum()), int((~high).sum())
    result["logrank_p"] = _guarded(notes, "logrank_p", lambda: logrank(test, result["risk_cutoff"]))
    result["notes"] = notes
    return result


def _frame_cindex(test: pd.DataFrame) -> float:
    """Harrell's C of a checked predictions frame (columns event, time, risk)."""
    return harrell_cindex(event=test["event"].to_numpy(), time=test["time"].to_numpy(), risk=test["risk"].to_numpy())


def _no_pair_reason(n_patients: int, n_events: int) -> str:
    """Why Harrell's C is undefined on a test fold."""
    if n_events == 0:
        return f"no comparable pair: no event in the test fold ({n_patients} patients, all censored)"
    if n_patients < 2:
        return f"no comparable pair: {n_patients} patient in the test fold"
    return f"no comparable pair among the {n_patients} test patients ({n_events} events, none before another's time)"


# ----------------------------------------------------------------------------- across folds


def aggregate_folds(per_fold: Sequence[Mapping]) -> dict:
    """Metric -> {mean, std (sample, ddof=1), n_folds} over the folds where it is defined."""
    names = [
        key
        for key in dict.fromkeys(key for fold in per_fold for key in fold)
        if all(fold.get(key) is None or isinstance(fold.get(key), (int, float)) for fold in per_fold)
    ]
    summary = {}
    for name in names:
        values = np.array([_as_float(fold.get(name)) for fold in per_fold])
        values = values[np.isfinite(values)]
        summary[name] = {
            "mean": float(values.mean()) if values.size else math.nan,
            "std": float(values.std(ddof=STD_DDOF)) if values.size > STD_DDOF else math.nan,
            "n_folds": int(values.size),
        }
    return summary


def _as_float(value) -> float:
    """Metric value as float (None -> NaN)."""
    return math.nan if value is None else float(value)


def pooled_cindex(test: pd.DataFrame) -> dict:
    """Harrell's C (sksurv) of the pooled out-of-fold (test) predictions of all folds, with counts.

    ``test`` holds only test rows, columns time, event (1 = event), risk. Risks of different
    folds come from different models; this pools them as they are. Returns ``cindex_harrell``
    (NaN when no pair is comparable, e.g. no event or fewer than two patients), ``n_patients``
    and ``n_events``.
    """
    test = _checked(test, "pooled test")
    return {
        "cindex_harrell": _frame_cindex(test),
        "n_patients": len(test),
        "n_events": int(test["event"].sum()),
    }


# ----------------------------------------------------------------------------- command line


def json_ready(value):
    """NaN/inf -> None recursively (also numpy values, lists), so the JSON file stays strict."""
    return strict_json(value)


def evaluate_file(predictions_path: str | Path, preprocessing_path: str | Path, options: Mapping | None) -> dict:
    """Metrics of one fold's predictions.csv (split column: train/val/test) and its preprocessing.json."""
    from ghanet_workflow.preprocess import FoldPreprocessing

    predictions = pd.read_csv(predictions_path, dtype={"case_id": str})
    if "split" not in predictions.columns:
        raise InputError(f"{predictions_path}: needs a 'split' column (train/val/test)")
    bin_edges = FoldPreprocessing.from_json(preprocessing_path).bin_edges
    test = predictions[predictions["split"] == "test"]
    train = predictions[predictions["split"] != "test"]
    if test.empty or train.empty:
        raise InputError(f"{predictions_path}: needs both test rows and training-fold rows")
    return evaluate_predictions(train=train, test=test, bin_edges=bin_edges, options=options)


def evaluate_fold(model_dir: str | Path, out: str | Path, options: Mapping | None = None) -> dict:
    """metrics.json of one trained fold: the metrics of ``model_dir``'s predictions.csv (bins from
    its preprocessing.json) with the training job's train_info.json (model, fold, selected epoch,
    where it ran) merged in. Returns the metrics without the provenance."""
    model_dir = Path(model_dir)
    options = parse_options(json.dumps(dict(options or {})), DEFAULTS, "evaluation")
    metrics = evaluate_file(model_dir / "predictions.csv", model_dir / "preprocessing.json", options)
    info_path = model_dir / "train_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {info_path} ({exc}); rerun the fold's training job") from exc
    runtime = info.pop("runtime", None)
    metrics = {**metrics, **info}
    write_json(out, {**metrics, "runtime": runtime})
    return metrics


def main(argv: list[str]) -> int:
    """``ghanet-wf evaluate --model-dir D --out JSON [--options JSON]``."""
    parser = argparse.ArgumentParser(prog="ghanet-wf evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", required=True, help="the fold's training outputs (predictions.csv, preprocessing.json, train_info.json)"
    )
    parser.add_argument("--out", required=True, help="metrics.json to write")
    parser.add_argument("--options", help="JSON object (or file) with the options of DEFAULTS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = evaluate_fold(args.model_dir, args.out, parse_options(args.options, DEFAULTS, "evaluation"))
    log.info("C-index %s (%d patients, %d events)", metrics["cindex"], metrics["n_patients"], metrics["n_events"])
    return 0
