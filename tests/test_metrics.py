"""Fold metrics agree with scikit-survival and with hand-made cases; undefined cases give NaN."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sksurv.compare import compare_survival
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.util import Surv

from ghanet_workflow import cohort, metrics, preprocess

EDGES = np.array([-np.inf, 10.0, 25.0, 50.0, np.inf])


def predictions(times, censorship, rng, noise=15.0) -> pd.DataFrame:
    """Predictions whose risk falls with time (plus noise) and whose survival per bin follows the risk."""
    times = np.asarray(times, dtype=float)
    risk = -times + rng.normal(0, noise, len(times))
    hazards = 1 / (1 + np.exp(-(risk[:, None] / 30 + np.array([-1.5, -1.0, -0.5, 0.0]))))
    surv = np.cumprod(1 - hazards, axis=1)
    frame = pd.DataFrame({"time": times, "event": 1 - np.asarray(censorship), "risk": risk})
    for j in range(surv.shape[1]):
        frame[f"surv_{j}"] = surv[:, j]
    return frame


@pytest.fixture(scope="module")
def fold(blca_table):
    """Training and test predictions over the real BLCA survival times (373 patients)."""
    table = cohort.read_clinical_table(blca_table).drop_duplicates("case_id")
    rng = np.random.default_rng(0)
    frame = predictions(table["survival_months"], table["censorship"], rng)
    test_rows = rng.permutation(len(frame))[:75]
    is_test = np.zeros(len(frame), bool)
    is_test[test_rows] = True
    return frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)


def y(frame):
    return Surv.from_arrays(event=frame["event"].astype(bool), time=frame["time"])


def test_perfect_and_reversed_ranking():
    times = np.array([2.0, 5, 9, 14, 30, 41, 60])
    event = np.array([1, 1, 0, 1, 1, 0, 1])
    assert metrics.harrell_cindex(event, times, -times) == 1.0
    assert metrics.harrell_cindex(event, times, times) == 0.0
    constant = np.zeros_like(times)
    assert metrics.harrell_cindex(event, times, constant) == 0.5


def test_harrell_cindex_takes_sksurvs_order_and_refuses_time_as_event():
    times = np.array([2.0, 5, 9, 14, 30, 41, 60])
    event = np.array([True, True, False, True, True, False, True])
    assert metrics.harrell_cindex(event, times, -times) == concordance_index_censored(event, times, -times)[0]
    with pytest.raises(ValueError, match="event must be bool or 0/1"):
        metrics.harrell_cindex(times, event, -times)


def test_fold_metrics_agree_with_sksurv(fold):
    train, test = fold
    result = metrics.evaluate_predictions(train=train, test=test, bin_edges=EDGES, options={"bootstrap": 200})
    expected_c = concordance_index_censored(test["event"].astype(bool), test["time"], test["risk"])[0]
    assert result["cindex"] == pytest.approx(expected_c)
    assert 0.5 < result["cindex"] < 1.0
    tau = result["tau_months"]
    assert tau == pytest.approx(min(np.quantile(train["time"], 0.9), test["time"].max()))
    expected_uno = concordance_index_ipcw(y(train), y(test), test["risk"], tau=tau)[0]
    assert result["cindex_uno"] == pytest.approx(expected_uno)
    assert result["n_patients"] == 75 and result["n_events"] == int(test["event"].sum())

    limit = metrics.support_limit(*(f.assign(event=f["event"].astype(bool)) for f in (train, test)))
    assert tau <= limit <= min(train["time"].max(), test["time"].max())
    truncated = metrics.truncate(test.assign(event=test["event"].astype(bool)), limit)
    auc, _ = cumulative_dynamic_auc(y(train), y(truncated), truncated["risk"], [12, 36])
    assert [result["auc_12m"], result["auc_36m"]] == pytest.approx(list(auc))

    assert result["risk_cutoff"] == pytest.approx(train["risk"].median())
    high = test["risk"].to_numpy() > train["risk"].median()
    assert result["logrank_p"] == pytest.approx(compare_survival(y(test), high)[1])
    assert result["n_high_risk"] == high.sum() and result["n_low_risk"] == (~high).sum()
    assert result["cindex_ci_low"] < result["cindex"] < result["cindex_ci_high"]
    assert 0 < result["ibs"] < 0.25


def test_ibs_uses_the_step_survival_function(fold):
    train, test = fold
    options = {"bootstrap": 0, "ibs_points": 30}
    result = metrics.evaluate_predictions(train=train, test=test, bin_edges=EDGES, options=options)
    limit = metrics.support_limit(*(f.assign(event=f["event"].astype(bool)) for f in (train, test)))
    truncated = metrics.truncate(test.assign(event=test["event"].astype(bool)), limit)
    grid = np.unique(np.quantile(truncated["time"], np.linspace(0.1, 0.9, 30)))
    grid = grid[(grid >= truncated["time"].min()) & (grid < truncated["time"].max())]
    surv = truncated[[f"surv_{j}" for j in range(4)]].to_numpy()
    estimate = metrics.survival_at(surv, EDGES, grid)
    assert result["ibs"] == pytest.approx(integrated_brier_score(y(train), y(truncated), estimate, grid))


def test_survival_at_maps_bins_to_time():
    surv = np.array([[0.9, 0.7, 0.4, 0.1]])
    times = [0.0, 9.9, 10.0, 24.0, 25.0, 49.0, 50.0, 500.0]
    assert metrics.survival_at(surv, EDGES, times).tolist() == [[1.0, 1.0, 0.9, 0.9, 0.7, 0.7, 0.4, 0.4]]


def test_bootstrap_is_seeded(fold):
    train, test = fold
    a = metrics.bootstrap_cindex(test.assign(event=test["event"].astype(bool)), 100, 0.95, seed=1)
    b = metrics.bootstrap_cindex(test.assign(event=test["event"].astype(bool)), 100, 0.95, seed=1)
    c = metrics.bootstrap_cindex(test.assign(event=test["event"].astype(bool)), 100, 0.95, seed=2)
    assert a == b and a != c and a[2] == 100


def test_tiny_or_eventless_fold_gives_nan_with_reasons(fold):
    train, test = fold
    censored = test.iloc[:2].assign(event=0)
    result = metrics.evaluate_predictions(train=train, test=censored, bin_edges=EDGES, options={"bootstrap": 20})
    assert math.isnan(result["cindex"]) and "no comparable pair" in result["notes"]["cindex"]
    assert math.isnan(result["cindex_uno"]) and "no test event" in result["notes"]["cindex_uno"]
    assert math.isnan(result["logrank_p"]) and result["notes"]["logrank_p"]
    assert math.isnan(result["cindex_ci_low"]) and result["bootstrap_valid"] == 0
    short = test.nsmallest(6, "time").assign(event=1)
    result = metrics.evaluate_predictions(train=train, test=short, bin_edges=EDGES, options={"bootstrap": 0})
    assert math.isnan(result["auc_60m"]) and "60 months" in result["notes"]["auc_60m"]


def test_aggregate_uses_sample_std_and_skips_undefined():
    folds = [{"cindex": 0.6, "n_events": 10, "notes": {}}, {"cindex": 0.7, "n_events": 12, "notes": {}},
             {"cindex": math.nan, "n_events": 0, "notes": {"cindex": "no event"}}, {"cindex": 0.8, "n_events": 9}]
    summary = metrics.aggregate_folds(folds)
    assert summary["cindex"]["mean"] == pytest.approx(0.7)
    assert summary["cindex"]["std"] == pytest.approx(np.std([0.6, 0.7, 0.8], ddof=1))
    assert summary["cindex"]["n_folds"] == 3 and "notes" not in summary
    assert metrics.STD_DDOF == 1


def test_pooled_out_of_fold_cindex(fold):
    train, test = fold
    rows = [test.loc[part].assign(split="test", fold=k) for k, part in enumerate(np.array_split(test.index, 3))]
    pooled = metrics.pooled_cindex(pd.concat(rows, ignore_index=True))
    assert pooled["cindex_harrell"] == pytest.approx(
        concordance_index_censored(test["event"].astype(bool), test["time"], test["risk"])[0])
    assert pooled["n_patients"] == len(test) and pooled["n_events"] == int(test["event"].sum())
    empty = metrics.pooled_cindex(pd.DataFrame(columns=["case_id", "time", "event", "risk", "split", "fold"]))
    assert math.isnan(empty["cindex_harrell"]) and empty["n_patients"] == 0 and empty["n_events"] == 0
    censored = metrics.pooled_cindex(test.assign(event=0))
    assert math.isnan(censored["cindex_harrell"]) and censored["n_events"] == 0


def test_main_writes_standard_json(fold, tmp_path):
    train, test = fold
    frame = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    frame.insert(0, "case_id", [f"P{i}" for i in range(len(frame))])
    frame.assign(fold=0).to_csv(tmp_path / "predictions.csv", index=False)
    prep = preprocess.FoldPreprocessing(bin_edges=EDGES, means=pd.Series(dtype=float), scales=pd.Series(dtype=float),
                                        gene_table=pd.DataFrame(columns=preprocess.GENE_TABLE_COLUMNS))
    prep.to_json(tmp_path / "preprocessing.json")
    (tmp_path / "train_info.json").write_text(json.dumps({"model": "abmil", "fold": 0, "selected_epoch": 3}))
    out = tmp_path / "metrics.json"
    code = metrics.main(["--model-dir", str(tmp_path), "--out", str(out), "--options",
                         json.dumps({"bootstrap": 10, "auc_times_months": [12, 1000]})])
    assert code == 0
    text = out.read_text()
    assert json.loads(text)["model"] == "abmil" and json.loads(text)["selected_epoch"] == 3
    assert "NaN" not in text
    written = json.loads(text)
    assert written["auc_1000m"] is None and "1000 months" in written["notes"]["auc_1000m"]
    assert written["cindex"] == pytest.approx(
        concordance_index_censored(test["event"].astype(bool), test["time"], test["risk"])[0])
