"""The demo's planted survival signal is learned from real features, and permuted labels are not.

Slow (about 3 minutes on 2 CPU cores): the 40 demo slides are generated, tiled and featurised
with efficientnet_lite0 (tests/demo_features.py), then G-HANet is trained through the per-fold
runner on the 5 patient-level folds, once with the true survival labels and once per label
permutation (time and event moved together across patients, genes and slides left in place).

Why several permutations: the demo slides carry one strong feature axis (the share of high-risk
tissue). Permuted labels correlate with it by chance (40 patients), and a working learner follows
that chance correlation consistently over the folds, so one permutation's mean C-index scatters
around 0.5 with an SD of about 0.1. The mean over four permutations is checked against 0.5; a
pipeline that let test labels into training would score well above it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from demo_features import DemoRun, run_folds

pytestmark = pytest.mark.slow

#: reduced training (the workflow default is 20 epochs, width 512, accumulation 32): same signal, ~5x faster
OPTIONS = {
    "training": {"epochs": 5, "grad_accum": 8, "lr": 5e-4, "hidden_dim": 128, "device": "cpu", "seed": 1},
    "evaluation": {"bootstrap": 10},
}
PERMUTATION_SEEDS = (0, 1, 2, 3)


def permuted_cohort(cohort_dir: Path, out_dir: Path, seed: int) -> Path:
    """A copy of the cohort whose (survival_months, censorship) pairs are shuffled across patients."""
    shutil.copytree(cohort_dir, out_dir)
    patients = pd.read_csv(cohort_dir / "patients.csv", dtype={"case_id": str})
    order = np.random.default_rng(seed).permutation(len(patients))
    labels = ["survival_months", "censorship"]
    patients[labels] = patients[labels].to_numpy()[order]
    patients.to_csv(out_dir / "patients.csv", index=False)
    return out_dir


@pytest.fixture(scope="module")
def test_cindex(demo_features_run: DemoRun, tmp_path_factory) -> dict[str, list[float]]:
    """Test C-index per fold: 'real' labels and one entry per permutation seed."""
    work = tmp_path_factory.mktemp("learning")
    cohorts = {"real": demo_features_run.cohort_dir}
    for seed in PERMUTATION_SEEDS:
        cohorts[f"permuted_{seed}"] = permuted_cohort(demo_features_run.cohort_dir, work / f"permuted_{seed}", seed)
    jobs = [
        (cohort, fold_csv, "ghanet", work / "models" / name / fold_csv.stem, OPTIONS)
        for name, cohort in cohorts.items()
        for fold_csv in demo_features_run.fold_csvs
    ]
    metrics = run_folds(jobs)
    n_folds = len(demo_features_run.fold_csvs)
    results = {name: [m["cindex"] for m in metrics[i * n_folds : (i + 1) * n_folds]] for i, name in enumerate(cohorts)}
    for name, values in results.items():
        print(f"{name}: test C-index per fold {np.round(values, 3).tolist()}, mean {np.mean(values):.3f}")
    return results


def test_the_demo_build_has_every_patient_with_real_features(demo_features_run):
    patients = pd.read_csv(demo_features_run.cohort_dir / "patients.csv")
    slides = pd.read_csv(demo_features_run.cohort_dir / "slides.csv")
    used = slides[slides["used"].astype(str) == "True"]
    assert len(patients) == 40 and len(used) == 40
    with h5py.File(used["features_path"].iloc[0], "r") as handle:
        features = handle["features"][()]
        assert handle.attrs["encoder"] == "efficientnet_lite0"
    assert features.shape == (27, 1280) and np.isfinite(features).all() and features.std() > 0
    folds = [pd.read_csv(path) for path in demo_features_run.fold_csvs]
    tested = [case for fold in folds for case in fold.loc[fold["split"] == "test", "case_id"]]
    assert sorted(tested) == sorted(patients["case_id"])  # every patient is tested exactly once


def test_the_planted_signal_is_learned(test_cindex):
    assert np.mean(test_cindex["real"]) >= 0.65


def test_permuted_labels_give_chance(test_cindex):
    permuted = [value for name, values in test_cindex.items() if name != "real" for value in values]
    assert len(permuted) == len(PERMUTATION_SEEDS) * len(test_cindex["real"])
    assert abs(np.mean(permuted) - 0.5) <= 0.12
    assert np.mean(test_cindex["real"]) > np.mean(permuted) + 0.15
