"""Patient-level splits: published MCAT files load exactly; generated folds are sound and seeded."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from ghanet_workflow import cohort, splits
from ghanet_workflow.errors import InputError


def patients_of(table_path) -> pd.DataFrame:
    """One row per patient of a real MCAT table, indexed by case_id."""
    table = cohort.read_clinical_table(table_path)
    return table.drop_duplicates("case_id").set_index("case_id")[["survival_months", "censorship"]]


@pytest.fixture(scope="module")
def blca_patients(blca_table) -> pd.DataFrame:
    return patients_of(blca_table)


@pytest.fixture(scope="module")
def ucec_patients(ucec_table) -> pd.DataFrame:
    return patients_of(ucec_table)


def members(frame: pd.DataFrame, *names: str) -> set[str]:
    return set(frame.loc[frame["split"].isin(names), "case_id"])


@pytest.mark.parametrize("name", ["blca", "ucec"])
def test_published_splits_load_exactly(name, blca_patients, ucec_patients, published_splits):
    patients = {"blca": blca_patients, "ucec": ucec_patients}[name]
    folder = published_splits / f"tcga_{name}"
    folds = splits.make_splits(patients, k=5, published_dir=folder)
    for fold, frame in enumerate(folds):
        published = pd.read_csv(folder / f"splits_{fold}.csv", dtype=str)
        assert members(frame, "test") == set(published["val"].dropna())  # their val = our held-out test
        assert members(frame, "train", "val") == set(published["train"].dropna())
        # the inner validation part is carved from the training fold, ~15 %
        n_train = len(members(frame, "train", "val"))
        assert len(members(frame, "val")) == round(0.15 * n_train)
    tests = [members(frame, "test") for frame in folds]
    assert set().union(*tests) == set(patients.index) and sum(map(len, tests)) == len(patients)


def test_published_splits_restricted_to_the_cohort(blca_patients, published_splits, caplog):
    dropped = list(blca_patients.index[:3])
    cohort_patients = blca_patients.drop(index=dropped)
    extra = pd.DataFrame({"survival_months": [10.0], "censorship": [0]}, index=pd.Index(["TCGA-NEW"], name="case_id"))
    with caplog.at_level(logging.WARNING, logger="ghanet_workflow.splits"):
        folds = splits.make_splits(pd.concat([cohort_patients, extra]), published_dir=published_splits / "tcga_blca")
    assert "3 patient(s) of the published splits are not in the cohort" in caplog.text
    assert "1 cohort patient(s) are in no published split file" in caplog.text and "TCGA-NEW" in caplog.text
    used = set().union(*(set(frame["case_id"]) for frame in folds))
    assert used == set(cohort_patients.index)


def test_published_dir_with_missing_file(blca_patients, published_splits):
    with pytest.raises(InputError, match="splits_5.csv"):
        splits.make_splits(blca_patients, k=6, published_dir=published_splits / "tcga_blca")


def test_generated_splits_are_patient_level_disjoint_and_stratified(blca_patients):
    folds = splits.make_splits(blca_patients, k=5, seed=1)
    tests = [members(frame, "test") for frame in folds]
    for i, test in enumerate(tests):
        for other in tests[i + 1:]:
            assert not test & other
    assert set().union(*tests) == set(blca_patients.index)
    for frame in folds:
        assert not frame["case_id"].duplicated().any()
        assert members(frame, "train", "val", "test") == set(blca_patients.index)
    events = [int((blca_patients.loc[list(test), "censorship"] == 0).sum()) for test in tests]
    assert max(events) - min(events) <= 2  # censorship is a stratification variable
    summary = splits.split_summary(folds, blca_patients)
    assert summary["n_patients"].sum() == 5 * len(blca_patients)


def test_generated_splits_depend_on_the_seed_only(blca_patients):
    first, again = splits.make_splits(blca_patients, seed=3), splits.make_splits(blca_patients, seed=3)
    other = splits.make_splits(blca_patients, seed=4)
    for a, b in zip(first, again):
        pd.testing.assert_frame_equal(a, b)
    assert members(first[0], "test") != members(other[0], "test")


def test_no_inner_validation_when_fraction_is_zero(ucec_patients):
    folds = splits.make_splits(ucec_patients, inner_val_fraction=0.0)
    assert all(not members(frame, "val") for frame in folds)


def test_checks_reject_overlap_and_eventless_folds(blca_patients):
    folds = splits.make_splits(blca_patients, k=5, seed=1)
    leaked = folds[1].copy()
    patient = sorted(members(folds[0], "test"))[0]
    leaked.loc[leaked["case_id"] == patient, "split"] = "test"
    with pytest.raises(InputError, match=f"already in the test set of fold 0: {patient}"):
        splits.check_splits([folds[0], leaked], blca_patients, expect_full_cover=False)
    censored_only = blca_patients.assign(censorship=1)
    with pytest.raises(InputError, match="has no event"):
        splits.check_splits(folds, censored_only)
    with pytest.raises(InputError, match="in no test fold"):
        splits.check_splits(folds[:4], blca_patients)


def test_few_events_warn_with_numbers(caplog):
    patients = pd.DataFrame({"survival_months": range(1, 21), "censorship": [0, 0, 0, 0, 0, 0] + [1] * 14},
                            index=pd.Index([f"P{i:02d}" for i in range(20)], name="case_id"))
    with caplog.at_level(logging.WARNING, logger="ghanet_workflow.splits"):
        folds = splits.make_splits(patients, k=3, seed=1, inner_val_fraction=0.2)
    assert "test fold has only 2 event(s) among" in caplog.text
    assert all(len(members(frame, "test")) >= 6 for frame in folds)


def test_too_few_patients(blca_patients):
    with pytest.raises(InputError, match="cannot make 5 folds"):
        splits.make_splits(blca_patients.iloc[:3])


def test_write_read_and_reuse(blca_patients, tmp_path):
    patients_csv = tmp_path / "patients.csv"
    blca_patients.reset_index().to_csv(patients_csv, index=False)
    out = tmp_path / "splits"
    assert splits.main(["--patients", str(patients_csv), "--out-dir", str(out), "--options", '{"seed": 2}']) == 0
    fold0 = splits.read_fold(out / "fold_0.csv")
    assert set(fold0) == {"train", "val", "test"}
    assert len(fold0["test"]) in (74, 75) and not set(fold0["test"]) & set(fold0["train"] + fold0["val"])
    stamp = (out / "fold_0.csv").stat().st_mtime_ns
    # a rerun with another seed reuses the existing folds instead of silently changing them
    assert splits.main(["--patients", str(patients_csv), "--out-dir", str(out), "--options", '{"seed": 9}']) == 0
    assert (out / "fold_0.csv").stat().st_mtime_ns == stamp
    # a cohort that no longer fits the files is an error, not a silent regeneration
    blca_patients.iloc[:-5].reset_index().to_csv(patients_csv, index=False)
    with pytest.raises(InputError, match="do not fit the cohort"):
        splits.main(["--patients", str(patients_csv), "--out-dir", str(out)])


# ----------------------------------------------------------------------------- small cohorts


@pytest.mark.parametrize(("n_patients", "k", "fraction"), [(8, 2, 0.15), (8, 3, 0.2), (10, 2, 0.2), (12, 3, 0.15),
                                                          (12, 2, 0.2)])  # fmt: skip
def test_small_real_cohort_gets_an_inner_validation_part(blca_patients, caplog, n_patients, k, fraction):
    patients = blca_patients.iloc[:n_patients]
    with caplog.at_level(logging.WARNING, logger="ghanet_workflow.splits"):
        folds = splits.make_splits(patients, k=k, seed=1, inner_val_fraction=fraction)
    assert "stratifying by censorship only" in caplog.text  # sklearn's stratified split cannot do it
    for frame in folds:
        training = members(frame, "train", "val")
        val, train = members(frame, "val"), members(frame, "train")
        assert len(val) == max(1, round(fraction * len(training))) and not val & train
        events = patients["censorship"] == 0
        assert events[sorted(train)].any()  # the bins and the loss need an event to train on
        if events[sorted(training)].sum() >= 2:
            assert events[sorted(val)].any()
    assert set().union(*(members(frame, "test") for frame in folds)) == set(patients.index)
    # seeded: the same folds again
    again = splits.make_splits(patients, k=k, seed=1, inner_val_fraction=fraction)
    for a, b in zip(folds, again):
        pd.testing.assert_frame_equal(a, b)


def test_inner_validation_keeps_the_only_event_in_training(blca_patients, caplog):
    events = blca_patients[blca_patients["censorship"] == 0].iloc[:1]
    censored = blca_patients[blca_patients["censorship"] == 1].iloc[:9]
    train = pd.concat([events, censored])
    for seed in range(5):
        with caplog.at_level(logging.WARNING, logger="ghanet_workflow.splits"):
            val = splits.inner_validation(train, 0.3, seed, 4, fold=2)
        assert len(val) == 3 and events.index[0] not in val
    assert "fold 2: the inner validation part (3 of 10 training patients) has no event" in caplog.text


def test_inner_validation_fraction_too_large_names_fold_counts_and_key(blca_patients):
    patients = blca_patients.iloc[:8]
    with pytest.raises(InputError, match=r"fold 0: splits.inner_val_fraction 0.95 of its 4 training patient\(s\) "
                                         r"\(\d+ event\(s\)\) leaves no patient to train on.*splits.k"):  # fmt: skip
        splits.make_splits(patients, k=2, seed=1, inner_val_fraction=0.95)
    with pytest.raises(InputError, match=r"splits.inner_val_fraction is 1.5; it must be in \[0, 1\)"):
        splits.inner_validation(patients, 1.5, 1, 4)


def test_too_few_events_for_stratified_folds_falls_back_then_names_the_eventless_fold(blca_patients, caplog):
    # 8 real patients with 4 events cannot make 5 folds stratified by censorship; unstratified
    # folds are made, and the test fold left without an event is an InputError, not a sklearn crash
    patients = blca_patients.iloc[40:48]
    assert (patients["censorship"] == 0).sum() == 4
    with caplog.at_level(logging.WARNING, logger="ghanet_workflow.splits"):
        with pytest.raises(InputError, match=r"fold \d: the test fold \(\d patients\) has no event.*splits.k"):
            splits.make_splits(patients, k=5, seed=1)
    assert "cannot make 5 folds stratified by censorship only" in caplog.text and "no stratification" in caplog.text
