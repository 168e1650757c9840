"""``ghanet-wf predict``: risks of new patients from slide features alone, over trained fold models.

Two tiny G-HANet fold models are trained for real (fold.run_fold) on a synthetic cohort with
real HDF5 feature files; the new patients have feature files only (no clinical or genomic row).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ghanet_workflow import cli
from ghanet_workflow.errors import InputError
from ghanet_workflow.fold import run_fold
from ghanet_workflow.model_io import load_fold_model
from ghanet_workflow.predict import fold_model_dirs, predict_slides, read_slide_table
from ghanet_workflow.train import Case, predict

IN_DIM = 16
ATTRS = {"encoder": "toy_encoder", "feature_dim": IN_DIM, "target_mpp": 0.5, "patch_size": 256}
GROUPS = {"group_a": ["TP53_mut", "RB1_cnv", "PTEN_rnaseq"], "group_b": ["MYC_cnv", "KRAS_rnaseq", "EGFR_rnaseq"]}
OPTIONS = {
    "training": {"epochs": 2, "grad_accum": 4, "max_patches": 24, "hidden_dim": 32, "n_heads": 4, "seed": 3},
    "evaluation": {"bootstrap": 5, "auc_times_months": [30]},
    "genomics": {"min_genes_per_group": 1},
}
N_PATIENTS = 24


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def write_features(path: Path, features: np.ndarray, **attrs) -> Path:
    """A per-slide feature HDF5 file in the CONTRACTS format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle["features"] = features.astype(np.float32)
        handle["coords"] = np.zeros((len(features), 2), np.int64)
        for key, value in {**ATTRS, "status": "ok", "reason": "", **attrs}.items():
            handle.attrs[key] = value
    return path


def write_training_cohort(results: Path, rng: np.random.Generator) -> list[str]:
    """results/cohort/* and one feature file per patient; bags and genes shift with a latent risk."""
    genes = [gene for columns in GROUPS.values() for gene in columns]
    patients, genomics, slides = [], [], []
    for i in range(N_PATIENTS):
        case_id, risk = f"TRAIN-{i:03d}", rng.uniform()
        features = rng.normal(size=(int(rng.integers(4, 30)), IN_DIM)) + 2 * risk
        path = write_features(results / "features" / "toy_encoder" / f"{case_id}-DX1.h5", features)
        patients.append(
            {
                "case_id": case_id,
                "survival_months": round(100 * (1 - risk) + 1, 2),
                "censorship": int(rng.uniform() < 0.3),
                "n_slides": 1,
                "slides": f"{case_id}-DX1.svs",
            }
        )
        genomics.append({"case_id": case_id, **{g: rng.normal() + 2 * risk for g in genes}})
        slides.append(
            {
                "slide_id": f"{case_id}-DX1.svs",
                "case_id": case_id,
                "status": "ok",
                "reason": "",
                "n_patches": len(features),
                "features_path": str(path),
                "used": True,
            }
        )
    cohort = results / "cohort"
    cohort.mkdir(parents=True)
    pd.DataFrame(patients).to_csv(cohort / "patients.csv", index=False)
    pd.DataFrame(genomics).to_csv(cohort / "genomics.csv.gz", index=False)
    (cohort / "groups.json").write_text(json.dumps(GROUPS))
    pd.DataFrame(slides).to_csv(cohort / "slides.csv", index=False)
    return [p["case_id"] for p in patients]


def write_fold_csv(path: Path, case_ids: list[str], fold: int) -> None:
    test = case_ids[6 * fold : 6 * fold + 6]
    rest = [c for c in case_ids if c not in test]
    splits = {"train": rest[:-3], "val": rest[-3:], "test": test}
    rows = [{"case_id": c, "split": split} for split, ids in splits.items() for c in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """results/<cohort> with 2 trained G-HANet folds; genomics and survival removed after training."""
    results = tmp_path_factory.mktemp("predict") / "results" / "toy"
    case_ids = write_training_cohort(results, np.random.default_rng(0))
    for fold in range(2):
        write_fold_csv(results / "splits" / f"fold_{fold}.csv", case_ids, fold)
        run_fold(
            results / "cohort",
            results / "splits" / f"fold_{fold}.csv",
            "ghanet",
            results / "models" / "ghanet" / f"fold_{fold}",
            OPTIONS,
        )
    # prediction must not need them: genomics enter G-HANet only through the training loss
    (results / "cohort" / "genomics.csv.gz").unlink()
    (results / "cohort" / "patients.csv").unlink()
    return results


@pytest.fixture(scope="module")
def new_slides(trained: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Feature files and slide table of 3 new patients (one with two slides), no clinical data."""
    rng = np.random.default_rng(1)
    features_dir = trained.parent / "new" / "features"
    bags = {
        "NEW-A.svs": rng.normal(size=(12, IN_DIM)),
        "NEW-B1.svs": rng.normal(size=(5, IN_DIM)) + 2,
        "NEW-B2.tiff": rng.normal(size=(9, IN_DIM)) + 2,
        "NEW-C.svs": rng.normal(size=(1, IN_DIM)) + 1,
    }
    for slide_id, features in bags.items():
        write_features(features_dir / f"{Path(slide_id).stem}.h5", features, slide_id=slide_id)
    table = pd.DataFrame(
        {
            "case_id": ["A", "B", "B", "C"],
            "slide_id": list(bags),
            "path": [f"/nowhere/{s}" for s in bags],  # tiling input only; prediction reads features
        }
    )
    table_path = trained.parent / "new" / "slides.csv"
    table.to_csv(table_path, index=False)
    return table_path, features_dir, bags


def direct_risk(model_dir: Path, bag: np.ndarray) -> float:
    model, _ = load_fold_model(model_dir)
    return float(predict(model, {"x": Case(torch.from_numpy(bag.astype(np.float32)))})["risk"].iloc[0])


def test_cli_writes_mean_spread_and_groups_of_the_fold_models(trained, new_slides, tmp_path):
    table_path, features_dir, bags = new_slides
    out = tmp_path / "risks.csv"
    argv = ["predict", "--slides", str(table_path), "--features-dir", str(features_dir)]
    assert cli.main([*argv, "--models-from", str(trained), "--model", "ghanet", "--out", str(out)]) == 0
    risks = pd.read_csv(out).set_index("case_id")
    assert risks.index.tolist() == ["A", "B", "C"]
    assert risks.loc["B", "n_slides"] == 2 and risks.loc["B", "n_patches"] == 14
    model_dirs = fold_model_dirs(trained, "ghanet")
    assert [d.name for d in model_dirs] == ["fold_0", "fold_1"]
    pooled = {
        "A": bags["NEW-A.svs"],
        "B": np.concatenate([bags["NEW-B1.svs"], bags["NEW-B2.tiff"]]),
        "C": bags["NEW-C.svs"],
    }
    for case_id, bag in pooled.items():
        expected = [direct_risk(d, bag) for d in model_dirs]
        np.testing.assert_allclose(risks.loc[case_id, ["risk_fold_0", "risk_fold_1"]], expected, rtol=1e-5)
    per_fold = risks[["risk_fold_0", "risk_fold_1"]].to_numpy()
    assert (per_fold[:, 0] != per_fold[:, 1]).all()  # two different models
    np.testing.assert_allclose(risks["risk_mean"], per_fold.mean(axis=1))
    np.testing.assert_allclose(risks["risk_std"], per_fold.std(axis=1, ddof=1))
    cutoffs = np.array([torch.load(d / "model.pt", weights_only=True)["cutoff"] for d in model_dirs])
    np.testing.assert_allclose(risks["risk_cutoff"], cutoffs.mean())
    np.testing.assert_allclose(risks["high_fraction"], (per_fold > cutoffs).mean(axis=1))
    expected_groups = np.where(risks["risk_mean"] > cutoffs.mean(), "high", "low")
    assert risks["risk_group"].tolist() == expected_groups.tolist()
    assert (risks["status"] == "ok").all()


def with_cutoff(model_dir: Path, out_dir: Path, cutoff: float) -> Path:
    """A copy of a fold model whose stored cut-off is ``cutoff``."""
    out_dir.mkdir(parents=True)
    payload = torch.load(model_dir / "model.pt", weights_only=True)
    torch.save({**payload, "cutoff": cutoff}, out_dir / "model.pt")
    return out_dir


def test_risk_groups_follow_the_stored_cutoffs(trained, new_slides, tmp_path):
    table_path, features_dir, _ = new_slides
    slides = read_slide_table(table_path)
    fold_0 = trained / "models" / "ghanet" / "fold_0"
    baseline = predict_slides(slides, [fold_0], features_dir).set_index("case_id")
    middle = float(baseline["risk_mean"].median())  # between the patients' risks
    tables = {
        name: predict_slides(slides, [with_cutoff(fold_0, tmp_path / name, cutoff)], features_dir)
        for name, cutoff in {"low": -1e9, "high": 1e9, "middle": middle}.items()
    }
    assert (tables["low"]["risk_group"] == "high").all() and (tables["low"]["high_fraction"] == 1).all()
    assert (tables["high"]["risk_group"] == "low").all() and (tables["high"]["high_fraction"] == 0).all()
    split = tables["middle"].set_index("case_id")
    assert split["risk_group"].tolist() == np.where(baseline["risk_mean"] > middle, "high", "low").tolist()
    assert set(split["risk_group"]) == {"high", "low"}
    np.testing.assert_allclose(split["risk_mean"], baseline["risk_mean"])  # the cut-off changes groups only
    assert (split["risk_std"] == 0).all()  # one model: no spread


def test_a_missing_feature_file_is_named(trained, new_slides, tmp_path):
    table_path, features_dir, _ = new_slides
    slides = pd.concat([read_slide_table(table_path), pd.DataFrame([{"case_id": "D", "slide_id": "NEW-D.svs"}])])
    with pytest.raises(InputError, match=r"1 feature file\(s\) not found \(slide NEW-D\.svs: .*NEW-D\.h5\)"):
        predict_slides(slides, fold_model_dirs(trained, "ghanet"), features_dir)


def test_a_failed_slide_leaves_its_patient_without_risk_and_the_others_scored(trained, new_slides, tmp_path):
    table_path, features_dir, _ = new_slides
    features = tmp_path / "features"
    shutil.copytree(features_dir, features)
    reason = "slide 'NEW-D.svs' cannot be opened"
    write_features(features / "NEW-D.h5", np.zeros((0, IN_DIM)), status="failed", reason=reason)
    slides = pd.concat([read_slide_table(table_path), pd.DataFrame([{"case_id": "D", "slide_id": "NEW-D.svs"}])])
    table = predict_slides(slides, fold_model_dirs(trained, "ghanet"), features).set_index("case_id")
    assert table.loc["D", "status"] == "no_usable_slide" and reason in table.loc["D", "reason"]
    assert np.isnan(table.loc["D", "risk_mean"]) and table.loc["D", "n_slides_used"] == 0
    assert (table.drop(index="D")["status"] == "ok").all() and table.drop(index="D")["risk_mean"].notna().all()


def test_features_of_another_encoder_are_rejected(trained, new_slides, tmp_path):
    write_features(tmp_path / "X.h5", np.ones((4, IN_DIM)), encoder="resnet50_trunc")
    slides = pd.DataFrame({"case_id": ["X"], "slide_id": ["X.svs"]})
    with pytest.raises(InputError, match=r"encoder 'resnet50_trunc' \(training 'toy_encoder'\)"):
        predict_slides(slides, fold_model_dirs(trained, "ghanet"), tmp_path)


def test_features_of_another_dimension_are_rejected(trained, tmp_path):
    # no training feature file to compare attributes with: the model's input size still guards
    model_dir = tmp_path / "lone" / "fold_0"
    shutil.copytree(trained / "models" / "ghanet" / "fold_0", model_dir)
    write_features(tmp_path / "X.h5", np.ones((4, IN_DIM + 1)), feature_dim=IN_DIM + 1)
    slides = pd.DataFrame({"case_id": ["X"], "slide_id": ["X.svs"]})
    with pytest.raises(InputError, match="do not fit the model"):
        predict_slides(slides, [model_dir], tmp_path)


def test_missing_models_and_bad_tables_are_named(trained, tmp_path):
    with pytest.raises(InputError, match=r"models/abmil/fold_<k>/model\.pt"):
        fold_model_dirs(trained, "abmil")
    (tmp_path / "no_case.csv").write_text("slide_id,path\nA.svs,/a.svs\n")
    with pytest.raises(InputError, match=r"missing column\(s\) \['case_id'\]"):
        read_slide_table(tmp_path / "no_case.csv")
    (tmp_path / "twice.tsv").write_text("case_id\tslide_id\nA\tA.svs\nB\tA.svs\n")
    with pytest.raises(InputError, match=r"\['A\.svs'\] listed twice"):
        read_slide_table(tmp_path / "twice.tsv")
    with pytest.raises(InputError, match="unknown key"):
        predict_slides(pd.DataFrame({"case_id": ["A"], "slide_id": ["A.svs"]}), [], options={"devcie": "cpu"})


def test_cli_takes_explicit_fold_folders_and_options(trained, new_slides, tmp_path):
    table_path, features_dir, _ = new_slides
    out = tmp_path / "risks.csv"
    fold_1 = trained / "models" / "ghanet" / "fold_1"
    argv = ["predict", "--slides", str(table_path), "--features-dir", str(features_dir), "--model-dirs", str(fold_1)]
    assert cli.main([*argv, "--out", str(out), "--options", '{"device": "cpu"}']) == 0
    risks = pd.read_csv(out)
    assert [c for c in risks.columns if c.startswith("risk_fold_")] == ["risk_fold_1"]
    np.testing.assert_allclose(risks["risk_mean"], risks["risk_fold_1"])
