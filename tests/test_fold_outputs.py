"""The per-fold interpretation outputs: reconstruction.csv (every model) and attention.h5 (G-HANet)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ghanet_workflow.fold import run_fold, runtime_record
from ghanet_workflow.interpret import (
    ATTENTION_NAME,
    RECONSTRUCTION_COLUMNS,
    RECONSTRUCTION_NAME,
    attention_patients,
    pearson_columns,
)

IN_DIM = 16
GROUPS = {"Oncogenes": [f"ONC{i}_rnaseq" for i in range(6)], "Kinases": [f"KIN{i}_cnv" for i in range(5)]}
OPTIONS = {
    "training": {"epochs": 1, "grad_accum": 4, "max_patches": 32, "hidden_dim": 32, "n_heads": 4, "seed": 3},
    "evaluation": {"bootstrap": 5, "auc_times_months": [30]},
    "genomics": {"pvalue_threshold": 1.0, "min_genes_per_group": 1},
}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def write_cohort(folder, n_patients: int = 24, seed: int = 0) -> list[str]:
    """A built cohort (CONTRACTS layout) whose feature files carry level-0 coords and slide ids."""
    rng = np.random.default_rng(seed)
    cohort_dir, features_dir = folder / "cohort", folder / "features"
    cohort_dir.mkdir(parents=True)
    features_dir.mkdir()
    genes = [gene for columns in GROUPS.values() for gene in columns]
    patients, genomics, slides = [], [], []
    for i in range(n_patients):
        case_id, risk = f"TCGA-ZZ-{i:04d}", rng.uniform()
        names = [f"{case_id}-01Z-00-DX{k}" for k in range(1 + i % 2)]
        patients.append(
            {
                "case_id": case_id,
                "survival_months": round(100 * (1 - risk) + rng.uniform(0, 5), 2),
                "censorship": int(rng.uniform() < 0.3),
                "n_slides": len(names),
                "slides": ";".join(f"{n}.svs" for n in names),
            }
        )
        genomics.append({"case_id": case_id, **{g: rng.normal() + 2 * risk for g in genes}})
        for name in names:
            n_patches = int(rng.integers(4, 30))
            path = features_dir / f"{name}.h5"
            with h5py.File(path, "w") as handle:
                handle["features"] = (rng.normal(size=(n_patches, IN_DIM)) + 2 * risk).astype("f4")
                handle["coords"] = np.stack([np.arange(n_patches) % 5, np.arange(n_patches) // 5], 1) * 256
                handle.attrs.update(slide_id=f"{name}.svs", patch_size_level0=256)
            slides.append(
                {
                    "slide_id": f"{name}.svs",
                    "case_id": case_id,
                    "status": "ok",
                    "reason": "",
                    "n_patches": n_patches,
                    "features_path": str(path),
                    "used": True,
                }
            )
    pd.DataFrame(patients).to_csv(cohort_dir / "patients.csv", index=False)
    pd.DataFrame(genomics).to_csv(cohort_dir / "genomics.csv.gz", index=False)
    (cohort_dir / "groups.json").write_text(json.dumps(GROUPS))
    pd.DataFrame(slides).to_csv(cohort_dir / "slides.csv", index=False)
    ids = [p["case_id"] for p in patients]
    split = ["test"] * 8 + ["val"] * 4 + ["train"] * (n_patients - 12)
    pd.DataFrame({"case_id": ids, "split": split}).to_csv(folder / "fold_0.csv", index=False)
    return ids


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interpretation")
    write_cohort(folder)
    return folder


@pytest.fixture(scope="module")
def ghanet_fold(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("ghanet") / "fold_0"
    run_fold(cohort / "cohort", cohort / "fold_0.csv", "ghanet", out, OPTIONS)
    return out


def test_metrics_json_records_where_the_fold_ran(ghanet_fold, monkeypatch):
    import json

    runtime = json.loads((ghanet_fold / "metrics.json").read_text())["runtime"]
    assert runtime["device"] == "cpu" and runtime["torch_threads"] >= 1 and runtime["torch"] == torch.__version__
    assert set(runtime) == {"device", "cuda_visible_devices", "slurm_job_id", "torch_threads", "torch"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    record = runtime_record({"device": "cpu"})
    assert record["cuda_visible_devices"] == "3" and record["slurm_job_id"] == "4242"


def test_reconstruction_csv_has_one_r_per_selected_gene_on_the_test_patients(ghanet_fold):
    table = pd.read_csv(ghanet_fold / RECONSTRUCTION_NAME)
    assert list(table.columns) == RECONSTRUCTION_COLUMNS
    selected = pd.read_csv(ghanet_fold / "selected_genes.csv")
    selected = selected[selected["selected"].astype(bool)]
    assert sorted(table["gene"]) == sorted(selected["gene"])
    assert set(table["group"]) == set(GROUPS)
    assert (table["n_patients"] == 8).all()
    assert table["pearson_r"].dropna().between(-1, 1).all() and table["pearson_r"].notna().any()


def test_attention_h5_keeps_the_extreme_risk_test_patients_with_their_patches(ghanet_fold, cohort):
    predictions = pd.read_csv(ghanet_fold / "predictions.csv")
    test = predictions[predictions["split"] == "test"].sort_values("risk")
    slides = pd.read_csv(cohort / "cohort" / "slides.csv")
    with h5py.File(ghanet_fold / ATTENTION_NAME, "r") as handle:
        assert handle.attrs["n_patients"] == 4 and list(handle.attrs["groups"]) == list(GROUPS)
        assert "softmax" in handle.attrs["token_attention"]
        entries = [handle["patients"][k] for k in sorted(handle["patients"], key=int)]
        stored = {e.attrs["case_id"]: e.attrs["risk_end"] for e in entries}
        assert stored == {
            **dict.fromkeys(test["case_id"].iloc[-2:], "high"),
            **dict.fromkeys(test["case_id"].iloc[:2], "low"),
        }
        for entry in entries:
            attention, weights = entry["token_attention"][()], entry["patch_weights"][()]
            own = slides[slides["case_id"] == entry.attrs["case_id"]]
            assert list(entry.attrs["slide_ids"]) == own["slide_id"].tolist()
            assert attention.shape == (len(GROUPS), own["n_patches"].sum()) == (len(GROUPS), len(weights))
            np.testing.assert_allclose(attention.sum(axis=1), 1, rtol=1e-5)
            np.testing.assert_allclose(weights.sum(), 1, rtol=1e-5)
            first = entry["slide_index"][()] == 0
            with h5py.File(own["features_path"].iloc[0], "r") as features:
                np.testing.assert_array_equal(entry["coords"][()][first], features["coords"][()])


def test_a_model_without_reconstruction_or_attention_writes_empty_but_present_outputs(cohort, tmp_path):
    run_fold(cohort / "cohort", cohort / "fold_0.csv", "abmil", tmp_path, OPTIONS)
    table = pd.read_csv(tmp_path / RECONSTRUCTION_NAME)
    assert table.empty and list(table.columns) == RECONSTRUCTION_COLUMNS
    with h5py.File(tmp_path / ATTENTION_NAME, "r") as handle:
        assert handle.attrs["n_patients"] == 0 and handle.attrs["model"] == "abmil"
        assert len(handle["patients"]) == 0


def test_pearson_is_nan_where_undefined_and_exact_where_linear():
    true = np.array([[1.0, 2.0, 5.0], [2.0, 2.0, 4.0], [3.0, 2.0, 3.0]])
    predicted = np.array([[10.0, 1.0, 1.0], [20.0, 2.0, 2.0], [30.0, 3.0, 3.0]])
    r = pearson_columns(predicted, true)
    assert r[0] == pytest.approx(1.0) and np.isnan(r[1]) and r[2] == pytest.approx(-1.0)
    assert np.isnan(pearson_columns(predicted[:1], true[:1])).all()
    constant_prediction = np.ones_like(true)
    assert np.isnan(pearson_columns(constant_prediction, true)).all()


def test_attention_patients_are_the_two_highest_and_two_lowest_risks():
    test = pd.DataFrame({"case_id": list("abcdef"), "risk": [0.5, -3.0, 2.0, 1.0, -1.0, 0.0]})
    assert attention_patients(test) == {"c": "high", "d": "high", "b": "low", "e": "low"}
    assert attention_patients(test.head(3)) == {"c": "high", "a": "high", "b": "low"}
