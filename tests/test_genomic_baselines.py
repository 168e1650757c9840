"""The genomics-only baselines of bench/bench_genomic_baselines.py on real TCGA-UCEC fold 0 (published split)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ghanet_workflow import splits, train

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_genomic_baselines.py"
SHORT_TRAINING = train.resolve_options({"epochs": 2, "device": "cpu"})


def load_bench():
    """The bench script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_genomic_baselines", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def ucec_fold0(bench) -> tuple[pd.DataFrame, pd.DataFrame, dict, pd.DataFrame]:
    """(patients, genomics, groups, fold 0 frame) of the real UCEC table with its published split."""
    patients, genomics, groups = bench.load_cohort("ucec")
    folds = splits.make_splits(patients, k=5, published_dir=bench.TCGA / "splits" / "tcga_ucec")
    return patients, genomics, groups, folds[0]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Single-threaded torch as in the bench (tiny per-patient steps); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_snn_fold_gives_finite_cindex_on_the_test_fold(bench, ucec_fold0):
    patients, genomics, groups, fold = ucec_fold0
    result, predictions = bench.run_snn_fold(patients, genomics, groups, fold, 0, SHORT_TRAINING)
    test_ids = bench.fold_ids(fold)["test"]
    assert sorted(predictions["case_id"]) == sorted(test_ids)
    assert result["n_patients"] == len(test_ids) and result["n_events"] > 0
    assert 0.0 <= result["cindex"] <= 1.0
    assert math.isfinite(result["final_val_cindex"])
    assert result["n_genes"] > 0
    surv = predictions[[f"surv_{j}" for j in range(4)]].to_numpy()
    assert np.all(np.diff(surv, axis=1) <= 0) and np.all((surv >= 0) & (surv <= 1))


def perturbed_outside_train(patients: pd.DataFrame, genomics: pd.DataFrame, ids: dict) -> tuple:
    """Copies whose val and test patients have other survival times, censorship and genes."""
    outside = ids["val"] + ids["test"]
    patients, genomics = patients.copy(), genomics.copy()
    patients.loc[outside, "survival_months"] = patients.loc[outside, "survival_months"].to_numpy()[::-1] * 3 + 1
    patients.loc[outside, "censorship"] = 1 - patients.loc[outside, "censorship"]
    genomics.loc[outside] = genomics.loc[outside] * 10 + 5
    return patients, genomics


def test_snn_preprocessing_and_weights_depend_on_the_train_split_only(bench, ucec_fold0):
    patients, genomics, groups, fold = ucec_fold0
    ids = bench.fold_ids(fold)
    prep, cases, result = bench.fit_snn(patients, genomics, groups, ids, SHORT_TRAINING)
    other_patients, other_genomics = perturbed_outside_train(patients, genomics, ids)
    other_prep, other_cases, other_result = bench.fit_snn(other_patients, other_genomics, groups, ids, SHORT_TRAINING)

    assert np.array_equal(prep.bin_edges, other_prep.bin_edges)
    pd.testing.assert_frame_equal(prep.gene_table, other_prep.gene_table)
    pd.testing.assert_series_equal(prep.means, other_prep.means)
    pd.testing.assert_series_equal(prep.scales, other_prep.scales)
    weights, other_weights = result.model.state_dict(), other_result.model.state_dict()
    assert all(torch.equal(weights[name], other_weights[name]) for name in weights)
    # the perturbation did reach the held-out cases, and the SNN reads no slide features
    assert cases["test"][ids["test"][0]].time != other_cases["test"][ids["test"][0]].time
    assert all(case.features is None for split in cases.values() for case in split.values())
    assert result.selected_epoch == SHORT_TRAINING["epochs"]  # the final epoch, not a chosen one


def test_cox_fold_gives_finite_cindex_on_the_test_fold(bench, ucec_fold0):
    patients, genomics, groups, fold = ucec_fold0
    result, predictions = bench.run_cox_fold(patients, genomics, groups, fold, 0)
    assert len(predictions) == len(bench.fold_ids(fold)["test"])
    assert 0.0 <= result["cindex"] <= 1.0
    assert 0 <= result["n_nonzero"] <= result["n_genes"]
