"""The coxnet model (Cox elastic net) on a genomic-only cohort of the real TCGA-UCEC table, published splits."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from test_genomic_baselines import load_bench, perturbed_outside_train

from ghanet_workflow import cohort, coxnet, fold, interpret, metrics, splits, train
from ghanet_workflow.errors import InputError
from ghanet_workflow.model_io import load_fold_model
from ghanet_workflow.preprocess import FoldPreprocessing

PREDICTION_COLUMNS = ["case_id", "time", "event", "risk", "surv_0", "surv_1", "surv_2", "surv_3", "split", "fold"]


@pytest.fixture(scope="module")
def ucec(tmp_path_factory, ucec_table, signatures, published_splits):
    """(cohort dir, splits dir) built by the cohort and splits stages' command lines, no slides."""
    root = tmp_path_factory.mktemp("coxnet_ucec")
    assert cohort.main(["--clinical", str(ucec_table), "--signatures", str(signatures), "--genomic-only",
                        "--out-dir", str(root / "cohort")]) == 0
    options = json.dumps({"published_dir": str(published_splits / "tcga_ucec")})
    assert splits.main(["--patients", str(root / "cohort" / "patients.csv"), "--out-dir", str(root / "splits"),
                        "--options", options]) == 0
    return root / "cohort", root / "splits"


@pytest.fixture(scope="module")
def fold0(ucec, tmp_path_factory):
    """Fold 0 trained by ``ghanet-wf train --model coxnet``, then evaluated and interpreted."""
    cohort_dir, splits_dir = ucec
    out = tmp_path_factory.mktemp("coxnet_fold0")
    assert fold.main(["--model", "coxnet", "--cohort-dir", str(cohort_dir), "--fold-csv",
                      str(splits_dir / "fold_0.csv"), "--out-dir", str(out)]) == 0
    metrics.evaluate_fold(out, out / "metrics.json")
    interpret.interpret_fold(cohort_dir, splits_dir / "fold_0.csv", out, out)
    return out


def test_coxnet_fold_writes_the_fold_contract(ucec, fold0):
    cohort_dir, splits_dir = ucec
    ids = splits.read_fold(splits_dir / "fold_0.csv")
    predictions = pd.read_csv(fold0 / "predictions.csv", dtype={"case_id": str})
    assert list(predictions.columns) == PREDICTION_COLUMNS
    for split in splits.SPLIT_NAMES:
        assert predictions.loc[predictions["split"] == split, "case_id"].tolist() == ids[split]
    surv = predictions.filter(like="surv_").to_numpy()
    assert np.all(np.diff(surv, axis=1) <= 0) and np.all((surv >= 0) & (surv <= 1))
    assert (predictions["fold"] == 0).all()

    log = pd.read_csv(fold0 / "training_log.csv")
    info = json.loads((fold0 / "train_info.json").read_text())
    assert list(log.columns) == coxnet.LOG_COLUMNS and 1 < len(log) <= coxnet.N_ALPHAS
    chosen = log.iloc[info["selected_epoch"] - 1]
    assert info["model"] == "coxnet" and info["runtime"]["device"] == "cpu"
    assert chosen["alpha"] == info["alpha"] and chosen["val_cindex"] == log["val_cindex"].max()
    assert log["alpha"].is_monotonic_decreasing

    prep = FoldPreprocessing.from_json(fold0 / "preprocessing.json")
    genes = pd.read_csv(fold0 / "selected_genes.csv")
    assert genes["selected"].sum() == sum(prep.group_sizes.values()) > 0
    result = json.loads((fold0 / "metrics.json").read_text())
    assert result["model"] == "coxnet" and result["n_patients"] == len(ids["test"]) and 0 < result["cindex"] < 1
    assert list(pd.read_csv(fold0 / "reconstruction.csv").columns) == interpret.RECONSTRUCTION_COLUMNS
    assert pd.read_csv(fold0 / "reconstruction.csv").empty
    with h5py.File(fold0 / "attention.h5", "r") as handle:
        assert handle.attrs["n_patients"] == 0 and handle.attrs["model"] == "coxnet"


def test_coxnet_fold_gives_the_bench_figures(ucec, fold0):
    """Cohort stage -> fold file -> train -> predictions.csv -> evaluate equals the bench on the same fold."""
    bench = load_bench()
    patients, genomics, groups = bench.load_cohort("ucec")
    folds = splits.make_splits(patients, k=5, published_dir=bench.TCGA / "splits" / "tcga_ucec")
    expected, test_predictions = bench.run_cox_fold(patients, genomics, groups, folds[0], metrics.DEFAULTS["bootstrap"])
    got = json.loads((fold0 / "metrics.json").read_text())
    for key in ("cindex", "cindex_ci_low", "cindex_ci_high", "cindex_uno", "ibs", "logrank_p", "n_patients", "n_events"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key
    assert got["alpha"] == expected["alpha"] and got["n_nonzero"] == expected["n_nonzero"]
    written = pd.read_csv(fold0 / "predictions.csv", dtype={"case_id": str})
    written = written[written["split"] == "test"].reset_index(drop=True)
    pd.testing.assert_frame_equal(written.drop(columns="fold"), test_predictions.reset_index(drop=True),
                                  check_exact=False, rtol=1e-12)


def test_model_pt_needs_genomics_and_reproduces_the_predictions(ucec, fold0):
    cohort_dir, splits_dir = ucec
    with pytest.raises(InputError, match="model 'coxnet' needs genomics at inference"):
        load_fold_model(fold0, slides_only=True)  # what WSI-only ghanet-wf predict calls
    model, meta = load_fold_model(fold0, slides_only=False)
    assert meta["uses_genomics_at_inference"] and meta["selected_epoch"] >= 1
    built = cohort.load_built_cohort(cohort_dir)
    test_ids = splits.read_fold(splits_dir / "fold_0.csv")["test"]
    prep = FoldPreprocessing.from_json(fold0 / "preprocessing.json")
    predicted = train.predict(model, fold.build_cases(built, prep, test_ids, None))
    written = pd.read_csv(fold0 / "predictions.csv", dtype={"case_id": str}).query("split == 'test'")
    assert predicted["case_id"].tolist() == written["case_id"].tolist()
    np.testing.assert_allclose(predicted["risk"], written["risk"], atol=1e-5)
    np.testing.assert_allclose(predicted.filter(like="surv_"), written.filter(like="surv_"), atol=1e-5)


def test_test_patients_change_neither_the_penalty_nor_the_preprocessing(ucec):
    cohort_dir, splits_dir = ucec
    built = cohort.load_built_cohort(cohort_dir)
    ids = splits.read_fold(splits_dir / "fold_1.csv")
    fit = coxnet.fit_fold(built.patients, built.genomics, built.groups, ids)
    only_test = {"train": [], "val": [], "test": ids["test"]}  # perturb the test patients alone
    patients, genomics = perturbed_outside_train(built.patients, built.genomics, only_test)
    other = coxnet.fit_fold(patients, genomics, built.groups, ids)

    assert other.alpha == fit.alpha and other.selected == fit.selected
    pd.testing.assert_frame_equal(other.path_log, fit.path_log)
    assert np.array_equal(other.preprocessing.bin_edges, fit.preprocessing.bin_edges)
    pd.testing.assert_frame_equal(other.preprocessing.gene_table, fit.preprocessing.gene_table)
    pd.testing.assert_series_equal(other.preprocessing.means, fit.preprocessing.means)
    pd.testing.assert_series_equal(other.preprocessing.scales, fit.preprocessing.scales)
    assert np.array_equal(other.model.coef_, fit.model.coef_)
    # the perturbation reached the test patients' predictions
    before = coxnet.predictions(fit, built.patients, built.genomics, ids["test"])
    after = coxnet.predictions(other, patients, genomics, ids["test"])
    assert not np.allclose(before["risk"], after["risk"])


def test_coxnet_needs_an_inner_validation_split_and_is_not_trained_by_gradient(ucec):
    cohort_dir, splits_dir = ucec
    built = cohort.load_built_cohort(cohort_dir)
    ids = splits.read_fold(splits_dir / "fold_0.csv")
    no_val = {"train": ids["train"] + ids["val"], "val": [], "test": ids["test"]}
    with pytest.raises(InputError, match="coxnet needs a train and an inner validation split"):
        coxnet.fit_fold(built.patients, built.genomics, built.groups, no_val)
    censored = built.patients.assign(censorship=1)  # no event in the val split: no C-index on the path
    events = built.patients.loc[ids["train"]].index
    censored.loc[events, "censorship"] = built.patients.loc[events, "censorship"]
    with pytest.raises(InputError, match="inner validation split"):
        coxnet.fit_fold(censored, built.genomics, built.groups, ids)
    with pytest.raises(InputError, match="'coxnet' is not trained by gradient"):
        train.train("coxnet", {}, {}, {}, ".", {})


def test_a_slide_model_on_the_genomic_only_cohort_is_refused_by_name(ucec, tmp_path):
    cohort_dir, splits_dir = ucec
    with pytest.raises(InputError, match=r"genomic-only cohort .* model 'ghanet' reads slide features; "
                                         r"train only \['coxnet', 'snn'\]"):
        fold.train_fold(cohort_dir, splits_dir / "fold_0.csv", "ghanet", tmp_path)


def test_a_weak_penalty_that_overflows_alone_is_refit_along_the_path(ucec, tmp_path, caplog):
    """Every gene kept (genomics.select_genes: false), fold 4's chosen penalty overflows scikit-survival's
    solver when fit from zero (ArithmeticError); the refit follows the path down to it and predicts
    at that penalty, as a fit that does not overflow would."""
    cohort_dir, splits_dir = ucec
    options = json.dumps({"genomics": {"select_genes": False}})
    assert fold.main(["--model", "coxnet", "--cohort-dir", str(cohort_dir), "--fold-csv", str(splits_dir / "fold_4.csv"),
                      "--out-dir", str(tmp_path), "--options", options]) == 0
    assert "refitting along the path down to it" in caplog.text  # the overflow happened, and was handled
    info = json.loads((tmp_path / "train_info.json").read_text())
    log = pd.read_csv(tmp_path / "training_log.csv")
    assert info["alpha"] == pytest.approx(log["alpha"].iloc[info["selected_epoch"] - 1])
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert predictions["risk"].notna().all() and predictions["risk"].std() > 0
    model, _ = load_fold_model(tmp_path, slides_only=False)  # model.pt: the coefficients at the chosen penalty
    assert int(np.count_nonzero(model.coef.numpy())) == info["n_nonzero"]
