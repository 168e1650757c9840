"""Training loop (sampling, accumulation, resume after a kill) and the per-fold runner end to end."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ghanet_workflow import fold as fold_module
from ghanet_workflow.errors import InputError
from ghanet_workflow import interpret
from ghanet_workflow import metrics as metrics_module
from ghanet_workflow.fold import run_fold
from ghanet_workflow.model_io import load_fold_model
from ghanet_workflow.train import (
    CHECKPOINT_NAME,
    LOG_COLUMNS,
    LOG_NAME,
    Case,
    balanced_weights,
    model_config,
    predict,
    resolve_options,
    subsample_patches,
    train,
)

IN_DIM = 16
GROUP_SIZES = [3, 5, 4]
FAST = {"epochs": 3, "grad_accum": 4, "max_patches": 24, "hidden_dim": 32, "n_heads": 4, "seed": 7}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def synthetic_cases(n: int, seed: int) -> dict[str, Case]:
    """Cases whose bags and genes shift with a latent risk; higher risk -> earlier bin and time."""
    generator = torch.Generator().manual_seed(seed)
    cases = {}
    for i in range(n):
        risk = torch.rand((), generator=generator).item()
        n_patches = int(torch.randint(1, 60, (1,), generator=generator))
        features = torch.randn(n_patches, IN_DIM, generator=generator) + 2 * risk
        genes = [torch.randn(size, generator=generator) + 3 * risk for size in GROUP_SIZES]
        censored = float(torch.rand((), generator=generator) < 0.3)
        cases[f"case-{seed}-{i}"] = Case(
            features, genes, label=min(3, int((1 - risk) * 4)), censorship=censored, time=float(100 * (1 - risk) + 1)
        )
    return cases


def config_for(options: dict, name: str = "ghanet") -> dict:
    return model_config(resolve_options(options), IN_DIM, GROUP_SIZES, 4)


class Killed(Exception):
    """Stands for the job being killed right after a checkpoint was written."""


def kill_after(epoch_to_kill: int):
    def callback(epoch: int, row: dict) -> None:
        if epoch == epoch_to_kill:
            raise Killed

    return callback


@pytest.fixture(scope="module")
def cases() -> tuple[dict[str, Case], dict[str, Case]]:
    return synthetic_cases(20, seed=1), synthetic_cases(8, seed=2)


@pytest.mark.parametrize("name", ["ghanet", "abmil_snn"])
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path, cases, name):
    train_cases, val_cases = cases
    config = config_for(FAST, name)
    full = train(name, config, train_cases, val_cases, tmp_path / "full", FAST)
    with pytest.raises(Killed):
        train(name, config, train_cases, val_cases, tmp_path / "killed", FAST, on_epoch_end=kill_after(2))
    assert len(pd.read_csv(tmp_path / "killed" / LOG_NAME)) == 2
    epochs_run = []
    resumed = train(
        name,
        config,
        train_cases,
        val_cases,
        tmp_path / "killed",
        FAST,
        on_epoch_end=lambda epoch, row: epochs_run.append(epoch),
    )
    assert epochs_run == [3]
    expected, got = predict(full.model, val_cases), predict(resumed.model, val_cases)
    pd.testing.assert_frame_equal(expected, got, check_exact=True)
    columns = ["epoch", "loss_surv", "loss_sce", "loss_mse", "loss_total", "val_cindex"]
    pd.testing.assert_frame_equal(full.log[columns], resumed.log[columns], check_exact=True)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_finished_run_extended_by_epochs_matches_a_longer_run(tmp_path, cases):
    train_cases, val_cases = cases
    config = config_for(FAST)
    two_then_three = tmp_path / "extended"
    train("ghanet", config, train_cases, val_cases, two_then_three, {**FAST, "epochs": 2})
    extended = train("ghanet", config, train_cases, val_cases, two_then_three, FAST)
    straight = train("ghanet", config, train_cases, val_cases, tmp_path / "straight", FAST)
    np.testing.assert_array_equal(
        predict(extended.model, val_cases)["risk"], predict(straight.model, val_cases)["risk"]
    )


def test_a_checkpoint_of_other_options_is_not_resumed(tmp_path, cases):
    train_cases, val_cases = cases
    config = config_for(FAST)
    with pytest.raises(Killed):
        train("ghanet", config, train_cases, val_cases, tmp_path, FAST, on_epoch_end=kill_after(2))
    epochs_run = []
    train(
        "ghanet",
        config,
        train_cases,
        val_cases,
        tmp_path,
        {**FAST, "lr": 1e-3},
        on_epoch_end=lambda epoch, row: epochs_run.append(epoch),
    )
    assert epochs_run == [1, 2, 3]


def test_training_is_deterministic_for_a_seed_and_changes_with_it(tmp_path, cases):
    train_cases, val_cases = cases
    options = {**FAST, "epochs": 1}
    config = config_for(options)
    a = train("ghanet", config, train_cases, val_cases, tmp_path / "a", options)
    b = train("ghanet", config, train_cases, val_cases, tmp_path / "b", options)
    c = train("ghanet", config, train_cases, val_cases, tmp_path / "c", {**options, "seed": 8})
    risk = [predict(result.model, val_cases)["risk"].to_numpy() for result in (a, b, c)]
    np.testing.assert_array_equal(risk[0], risk[1])
    assert not np.array_equal(risk[0], risk[2])


def test_log_and_checkpoint_are_written_every_epoch(tmp_path, cases):
    train_cases, val_cases = cases
    result = train("abmil", config_for(FAST), train_cases, val_cases, tmp_path, FAST)
    log = pd.read_csv(tmp_path / LOG_NAME)
    assert list(log.columns) == LOG_COLUMNS and log["epoch"].tolist() == [1, 2, 3]
    assert np.isfinite(log[["loss_surv", "loss_total", "val_cindex"]].to_numpy()).all()
    assert (log["loss_sce"] == 0).all()  # ABMIL has no reconstruction heads
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["epoch"] == 3 and len(checkpoint["log_rows"]) == 3
    assert result.selected_epoch == 3
    assert not (tmp_path / "tensorboard").exists()  # TensorBoard is not installed here


def test_ghanet_logs_reconstruction_losses(tmp_path, cases):
    train_cases, val_cases = cases
    result = train("ghanet", config_for(FAST), train_cases, val_cases, tmp_path, {**FAST, "epochs": 1})
    row = result.log.iloc[0]
    assert row["loss_sce"] > 0 and row["loss_mse"] > 0
    assert row["loss_total"] == pytest.approx(row["loss_surv"] + 0.3 * (row["loss_sce"] + row["loss_mse"]))


def test_best_val_selection_picks_the_epoch_with_the_highest_inner_cindex(tmp_path, cases):
    train_cases, val_cases = cases
    options = {**FAST, "epochs": 4, "select": "best_val"}
    result = train("abmil", config_for(options), train_cases, val_cases, tmp_path, options)
    assert result.selected_epoch == int(result.log.loc[result.log["val_cindex"].idxmax(), "epoch"])


def test_the_remainder_of_an_epoch_is_stepped(tmp_path, cases):
    train_cases, val_cases = cases
    options = {**FAST, "epochs": 1, "grad_accum": 1000}  # fewer cases than one accumulation window
    torch.manual_seed(options["seed"])
    from ghanet_workflow.model import build_model

    initial = build_model("abmil", config_for(options)).state_dict()
    result = train("abmil", config_for(options), train_cases, val_cases, tmp_path, options)
    changed = [not torch.equal(initial[k], v) for k, v in result.model.state_dict().items()]
    assert all(changed)


def test_balanced_weights_give_each_bin_censorship_class_equal_mass():
    cases = [Case(None, label=b, censorship=c) for b, c in [(0, 0), (0, 0), (0, 0), (1, 0), (1, 1), (1, 1)]]
    weights = balanced_weights(cases)
    assert weights[:3].sum() == pytest.approx(1.0)
    assert weights[3].item() == pytest.approx(1.0) and weights[4:].sum() == pytest.approx(1.0)


def test_subsample_patches_caps_training_bags_without_duplicates():
    features = torch.arange(100, dtype=torch.float32).unsqueeze(1)
    generator = torch.Generator().manual_seed(0)
    sample = subsample_patches(features, 30, generator)
    assert sample.shape == (30, 1) and len(set(sample[:, 0].tolist())) == 30
    assert subsample_patches(features[:10], 30, generator).shape == (10, 1)


def test_bad_training_options_are_rejected():
    with pytest.raises(InputError, match="unknown training option"):
        resolve_options({"learning_rate": 0.1})
    with pytest.raises(InputError, match="select"):
        resolve_options({"select": "test"})


def cindex_of(result, cases: dict[str, Case]) -> float:
    """Harrell's C of a trained model on labelled cases."""
    from ghanet_workflow.metrics import harrell_cindex

    events = np.array([c.censorship == 0 for c in cases.values()])
    times = np.array([c.time for c in cases.values()])
    return harrell_cindex(event=events, time=times, risk=predict(result.model, cases)["risk"].to_numpy())


def with_permuted_labels(cases: dict[str, Case], seed: int) -> dict[str, Case]:
    """The same bags and genes with (bin, censorship, time) shuffled across patients."""
    order = np.random.default_rng(seed).permutation(len(cases))
    values = list(cases.values())
    return {
        case_id: Case(case.features, case.genomics, values[j].label, values[j].censorship, values[j].time)
        for (case_id, case), j in zip(cases.items(), order)
    }


def test_the_planted_signal_is_learned_and_permuted_labels_give_chance(tmp_path):
    options = {**FAST, "epochs": 6, "grad_accum": 8, "lr": 5e-4}
    train_cases, test_cases = synthetic_cases(60, seed=3), synthetic_cases(40, seed=4)
    result = train("ghanet", config_for(options), train_cases, {}, tmp_path / "real", options)
    assert cindex_of(result, test_cases) >= 0.75
    assert math.isnan(result.log["val_cindex"].iloc[0])  # no inner validation split given
    permuted = train(
        "ghanet", config_for(options), with_permuted_labels(train_cases, 0), {}, tmp_path / "perm", options
    )
    assert abs(cindex_of(permuted, test_cases) - 0.5) <= 0.15


# ----------------------------------------------------------------------------- per-fold runner


GROUPS = {
    "tumor_suppression": ["TP53_mut", "RB1_cnv", "PTEN_rnaseq", "CDKN2A_rnaseq"],
    "oncogenesis": ["MYC_cnv", "KRAS_rnaseq", "EGFR_rnaseq"],
    "cytokines": ["IL6_rnaseq", "TNF_rnaseq", "IL10_rnaseq", "CXCL8_rnaseq"],
}


def write_cohort(folder, n_patients: int = 30, seed: int = 0) -> pd.DataFrame:
    """A built cohort in the CONTRACTS format, with real HDF5 feature files (1-2 slides per patient)."""
    rng = np.random.default_rng(seed)
    cohort_dir, features_dir = folder / "cohort", folder / "features"
    cohort_dir.mkdir(parents=True)
    features_dir.mkdir()
    genes = [gene for columns in GROUPS.values() for gene in columns]
    patients, genomics, slides = [], [], []
    for i in range(n_patients):
        case_id, risk = f"TCGA-XX-{i:04d}", rng.uniform()
        event = int(rng.uniform() < 0.7)
        patients.append(
            {
                "case_id": case_id,
                "survival_months": round(100 * (1 - risk) + rng.uniform(0, 5), 2),
                "censorship": 1 - event,
            }
        )
        genomics.append({"case_id": case_id, **{g: rng.normal() + 2 * risk for g in genes}})
        names = [f"{case_id}-01Z-00-DX{k}" for k in range(1 + i % 2)]
        for name in names:
            path = features_dir / f"{name}.h5"
            with h5py.File(path, "w") as handle:
                handle["features"] = (rng.normal(size=(int(rng.integers(3, 40)), IN_DIM)) + 2 * risk).astype("f4")
            slides.append(
                {
                    "slide_id": f"{name}.svs",
                    "case_id": case_id,
                    "status": "ok",
                    "reason": "",
                    "n_patches": 1,
                    "features_path": str(path),
                    "used": True,
                }
            )
        patients[-1].update(n_slides=len(names), slides=";".join(f"{n}.svs" for n in names))
    pd.DataFrame(patients).to_csv(cohort_dir / "patients.csv", index=False)
    pd.DataFrame(genomics).to_csv(cohort_dir / "genomics.csv.gz", index=False)
    (cohort_dir / "groups.json").write_text(json.dumps(GROUPS))
    pd.DataFrame(slides).to_csv(cohort_dir / "slides.csv", index=False)
    return pd.DataFrame(patients)


def write_fold(path, case_ids: list[str], test_start: int) -> dict[str, list[str]]:
    test = case_ids[test_start : test_start + 8]
    rest = [c for c in case_ids if c not in test]
    fold = {"train": rest[:-4], "val": rest[-4:], "test": test}
    rows = [{"case_id": c, "split": split} for split, ids in fold.items() for c in ids]
    pd.DataFrame(rows).to_csv(path, index=False)
    return fold


FOLD_OPTIONS = {
    "training": {**FAST, "epochs": 2},
    "evaluation": {"bootstrap": 10, "auc_times_months": [30]},
    "genomics": {"pvalue_threshold": 0.05, "min_genes_per_group": 1},
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fold_run")
    patients = write_cohort(folder)
    ids = patients["case_id"].tolist()
    folds = [write_fold(folder / f"fold_{k}.csv", ids, 8 * k) for k in range(2)]
    return folder, folds


def test_run_fold_writes_every_output_and_keeps_the_test_split_out_of_training(tmp_path, cohort):
    folder, folds = cohort
    out = tmp_path / "ghanet" / "fold_0"
    argv = [
        "--cohort-dir",
        str(folder / "cohort"),
        "--fold-csv",
        str(folder / "fold_0.csv"),
        "--model",
        "ghanet",
        "--out-dir",
        str(out),
        "--options",
        json.dumps({k: v for k, v in FOLD_OPTIONS.items() if k != "evaluation"}),
        json.dumps({"training": {"device": "cpu"}}),
    ]
    assert fold_module.main(argv) == 0
    evaluation = json.dumps(FOLD_OPTIONS["evaluation"])
    assert metrics_module.main(["--model-dir", str(out), "--out", str(out / "metrics.json"), "--options", evaluation]) == 0
    assert interpret.main(["--cohort-dir", str(folder / "cohort"), "--fold-csv", str(folder / "fold_0.csv"),
                           "--model-dir", str(out)]) == 0  # fmt: skip
    for name in (
        "preprocessing.json",
        "selected_genes.csv",
        "checkpoint.pt",
        "model.pt",
        LOG_NAME,
        "predictions.csv",
        "metrics.json",
        "train_info.json",
        "reconstruction.csv",
        "attention.h5",
    ):
        assert (out / name).is_file(), name
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns[:4]) == ["case_id", "time", "event", "risk"]
    assert {f"surv_{k}" for k in range(4)} <= set(predictions.columns)
    for split, ids in folds[0].items():
        assert sorted(predictions.loc[predictions["split"] == split, "case_id"]) == sorted(ids)
    assert (predictions["fold"] == 0).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_patients"] == 8 and 0 <= metrics["cindex"] <= 1 and metrics["model"] == "ghanet"
    model = torch.load(out / "model.pt", weights_only=True)
    non_test = predictions[predictions["split"] != "test"]
    assert model["cutoff"] == pytest.approx(non_test["risk"].median())
    assert model["config"]["in_dim"] == IN_DIM and len(model["config"]["group_sizes"]) == len(GROUPS)
    assert len(pd.read_csv(out / LOG_NAME)) == 2

    # a rerun finds the finished checkpoint: no epoch is trained again and the outputs are unchanged
    rerun = run_fold(folder / "cohort", folder / "fold_0.csv", "ghanet", out, FOLD_OPTIONS)
    assert rerun["cindex"] == metrics["cindex"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "predictions.csv"), predictions)


def test_changing_test_patients_changes_nothing_that_training_sees(tmp_path, cohort):
    folder, folds = cohort
    altered = tmp_path / "altered"
    altered.mkdir()
    for name in ("genomics.csv.gz", "groups.json", "slides.csv"):
        (altered / name).write_bytes((folder / "cohort" / name).read_bytes())
    patients = pd.read_csv(folder / "cohort" / "patients.csv")
    test = patients["case_id"].isin(folds[0]["test"])
    patients.loc[test, "survival_months"] = 1000.0 + np.arange(test.sum())  # beyond every training time
    patients.loc[test, "censorship"] = 0
    patients.to_csv(altered / "patients.csv", index=False)
    original, changed = tmp_path / "original", tmp_path / "changed"
    run_fold(folder / "cohort", folder / "fold_0.csv", "abmil", original, FOLD_OPTIONS)
    run_fold(altered, folder / "fold_0.csv", "abmil", changed, FOLD_OPTIONS)
    assert (original / "preprocessing.json").read_text() == (changed / "preprocessing.json").read_text()
    a, b = (pd.read_csv(d / "predictions.csv") for d in (original, changed))
    np.testing.assert_array_equal(a["risk"], b["risk"])


def test_snn_baseline_runs_through_the_same_harness(tmp_path, cohort):
    folder, folds = cohort
    metrics = run_fold(folder / "cohort", folder / "fold_0.csv", "snn", tmp_path, FOLD_OPTIONS)
    assert metrics["model"] == "snn" and 0 <= metrics["cindex"] <= 1
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 30
    with pytest.raises(InputError, match="needs genomics"):
        load_fold_model(tmp_path)


def test_a_fold_with_an_unknown_patient_is_rejected(tmp_path, cohort):
    folder, _ = cohort
    pd.DataFrame({"case_id": ["nobody"], "split": ["test"]}).to_csv(tmp_path / "fold_9.csv", index=False)
    with pytest.raises(InputError, match="not in the built cohort"):
        run_fold(folder / "cohort", tmp_path / "fold_9.csv", "ghanet", tmp_path / "out", FOLD_OPTIONS)


def test_a_failed_retraining_leaves_no_stale_metrics_of_the_previous_run(tmp_path, cohort):
    """The evaluation and interpretation files of a fold belong to its last training: a new training
    removes them first, so a failed one cannot leave the old metrics.json looking finished."""
    folder, _ = cohort
    out = tmp_path / "fold"
    out.mkdir()
    for name in fold_module.DERIVED_NAMES:
        (out / name).write_text("from the previous training run")
    pd.DataFrame({"case_id": ["nobody"], "split": ["test"]}).to_csv(tmp_path / "fold_9.csv", index=False)
    with pytest.raises(InputError, match="not in the built cohort"):
        training_only = {k: v for k, v in FOLD_OPTIONS.items() if k != "evaluation"}
        fold_module.train_fold(folder / "cohort", tmp_path / "fold_9.csv", "ghanet", out, training_only)
    assert not any((out / name).exists() for name in fold_module.DERIVED_NAMES)
