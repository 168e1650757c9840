"""Per-fold preprocessing on real TCGA-BLCA rows: leak-free bins, scaler and gene selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ghanet_workflow import cohort, preprocess, splits
from ghanet_workflow.errors import InputError


@pytest.fixture(scope="module")
def blca(blca_table, signatures, published_splits):
    """(patients, genomics, groups, fold 0 of the published splits) of the real BLCA table."""
    table = cohort.read_clinical_table(blca_table)
    groups = cohort.gene_groups(list(table.columns), cohort.read_signatures(signatures))
    first = table.drop_duplicates("case_id").set_index("case_id")
    patients = first[["survival_months", "censorship"]]
    genomics = first[list(dict.fromkeys(c for cols in groups.values() for c in cols))].astype(float)
    fold = splits.make_splits(patients, published_dir=published_splits / "tcga_blca")[0]
    return patients, genomics, groups, fold


def fit_on_training_fold(patients, genomics, groups, fold, options=None):
    """What the train stage does: fit on the fold's non-test patients only."""
    train = fold.loc[fold["split"] != "test", "case_id"]
    return preprocess.fit_fold_preprocessing(patients.loc[train], genomics.loc[train], groups, options)


def test_changing_test_fold_data_changes_nothing(blca):
    """Leak test: test-fold times, censorship and genes must not move bins, scaler or selection."""
    patients, genomics, groups, fold = blca
    test_ids = fold.loc[fold["split"] == "test", "case_id"]
    altered = patients.copy()
    altered.loc[test_ids, "survival_months"] = altered.loc[test_ids, "survival_months"] * 3 + 50
    altered.loc[test_ids, "censorship"] = 0
    altered_genomics = genomics.copy()
    altered_genomics.loc[test_ids] = altered_genomics.loc[test_ids] * -2 + 1

    before = fit_on_training_fold(patients, genomics, groups, fold)
    after = fit_on_training_fold(altered, altered_genomics, groups, fold)
    np.testing.assert_array_equal(before.bin_edges, after.bin_edges)
    pd.testing.assert_series_equal(before.means, after.means)
    pd.testing.assert_series_equal(before.scales, after.scales)
    pd.testing.assert_frame_equal(before.selected_genes_table(), after.selected_genes_table())

    # the reference's habit (quantiles over all patients) would have moved the bins: the test has teeth
    def all_patient_cuts(frame):
        return np.quantile(frame.loc[frame["censorship"] == 0, "survival_months"], [0.25, 0.5, 0.75])

    assert not np.allclose(all_patient_cuts(patients), all_patient_cuts(altered))


def test_bins_are_training_event_quantiles_with_open_ends(blca):
    patients, genomics, groups, fold = blca
    prep = fit_on_training_fold(patients, genomics, groups, fold)
    train = patients.loc[fold.loc[fold["split"] != "test", "case_id"]]
    expected = np.quantile(train.loc[train["censorship"] == 0, "survival_months"], [0.25, 0.5, 0.75])
    np.testing.assert_allclose(prep.bin_edges[1:-1], expected)
    assert prep.bin_edges[0] == -np.inf and prep.bin_edges[-1] == np.inf
    cuts = prep.bin_edges[1:-1]
    times = [-1.0, 0.0, cuts[0] - 1e-9, cuts[0], cuts[1], cuts[2], 1e6]
    assert prep.assign_bins(times).tolist() == [0, 0, 0, 1, 2, 3, 3]
    assert sum(prep.summary["bin_counts"]) == len(train)


def test_selection_is_welch_on_plain_training_patients(blca):
    patients, genomics, groups, fold = blca
    prep = fit_on_training_fold(patients, genomics, groups, fold)
    train = patients.loc[fold.loc[fold["split"] != "test", "case_id"]]
    bins = prep.assign_bins(train["survival_months"])
    high = ((train["censorship"] == 0) & (bins < 2)).to_numpy()
    low = bins >= 2
    columns = groups["Tumor Suppressor Genes"]
    values = genomics.loc[train.index, columns].to_numpy()
    expected = stats.ttest_ind(values[high], values[low], equal_var=False).pvalue
    table = prep.selected_genes_table()
    group = table[table["group"] == "Tumor Suppressor Genes"]
    np.testing.assert_allclose(group["p_value"].to_numpy(), expected, equal_nan=True)
    assert group["gene"].tolist() == columns
    assert group["selected"].tolist() == (np.nan_to_num(expected, nan=1.0) < 0.05).tolist()
    assert prep.summary["n_high_risk"] == high.sum() and prep.summary["n_low_risk"] == low.sum()
    assert all(size > 0 for size in prep.group_sizes.values())


def test_fdr_and_minimum_per_group(blca):
    patients, genomics, groups, fold = blca
    plain = fit_on_training_fold(patients, genomics, groups, fold)
    corrected = fit_on_training_fold(patients, genomics, groups, fold, {"fdr": True, "min_genes_per_group": 3})
    assert sum(corrected.group_sizes.values()) < sum(plain.group_sizes.values())
    strict = fit_on_training_fold(patients, genomics, groups, fold, {"pvalue_threshold": 0.0, "min_genes_per_group": 3})
    assert set(strict.group_sizes.values()) == {3}
    # the kept genes are the group's smallest p-values
    table = strict.selected_genes_table()
    for group, rows in table.groupby("group"):
        assert set(rows.nsmallest(3, "p_value")["gene"]) == set(rows.loc[rows["selected"], "gene"])
    everything = fit_on_training_fold(patients, genomics, groups, fold, {"select_genes": False})
    assert everything.group_sizes == {g: len(c) for g, c in groups.items()}


def test_scaler_fit_on_training_fold(blca):
    patients, genomics, groups, fold = blca
    prep = fit_on_training_fold(patients, genomics, groups, fold)
    train_ids = fold.loc[fold["split"] != "test", "case_id"]
    scaled = prep.transform_genomics(genomics.loc[train_ids])
    for group, matrix in scaled.items():
        assert matrix.dtype == np.float32 and matrix.shape == (len(train_ids), prep.group_sizes[group])
        np.testing.assert_allclose(matrix.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(matrix.std(axis=0), 1, atol=1e-4)
    # rows follow the order given
    reversed_ids = list(train_ids[::-1])
    group = next(iter(scaled))
    np.testing.assert_array_equal(prep.transform_genomics(genomics.loc[reversed_ids])[group], scaled[group][::-1])


def test_constant_gene_has_unit_scale():
    patients = pd.DataFrame({"survival_months": [1, 2, 3, 4, 5, 6, 7, 8], "censorship": [0, 0, 0, 0, 0, 0, 1, 1]},
                            index=[f"p{i}" for i in range(8)])
    genomics = pd.DataFrame({"A_cnv": [1.0] * 8, "B_rnaseq": [5, 4, 3, 3, 1, 0, 2, 2.0]}, index=patients.index)
    prep = preprocess.fit_fold_preprocessing(patients, genomics, {"g": ["A_cnv", "B_rnaseq"]},
                                             {"select_genes": False})
    assert prep.scales["A_cnv"] == 1.0 and prep.means["A_cnv"] == 1.0
    out = prep.transform_genomics(genomics)["g"]
    assert np.all(out[:, 0] == 0) and np.isfinite(out).all()
    assert np.isnan(prep.selected_genes_table().set_index("gene").loc["A_cnv", "p_value"])


def test_json_round_trip(blca, tmp_path):
    patients, genomics, groups, fold = blca
    prep = fit_on_training_fold(patients, genomics, groups, fold, {"fdr": True})
    prep.to_json(tmp_path / "preprocessing.json")
    again = preprocess.FoldPreprocessing.from_json(tmp_path / "preprocessing.json")
    np.testing.assert_array_equal(prep.bin_edges, again.bin_edges)
    assert again.group_sizes == prep.group_sizes and again.options["fdr"] is True
    pd.testing.assert_frame_equal(prep.selected_genes_table(), again.selected_genes_table())
    for group, matrix in prep.transform_genomics(genomics).items():
        np.testing.assert_array_equal(matrix, again.transform_genomics(genomics)[group])
    assert "Infinity" not in (tmp_path / "preprocessing.json").read_text()


def test_errors_name_the_problem(blca):
    patients, genomics, groups, fold = blca
    with pytest.raises(InputError, match="no uncensored patient"):
        preprocess.fit_fold_preprocessing(patients.assign(censorship=1), genomics, groups)
    with pytest.raises(InputError, match="genomics lacks training patient"):
        preprocess.fit_fold_preprocessing(patients, genomics.iloc[5:], groups)
    prep = fit_on_training_fold(patients, genomics, groups, fold)
    first_gene = prep.selected_columns()["Oncogenes"][0]
    with pytest.raises(InputError, match=first_gene):
        prep.transform_genomics(genomics.drop(columns=[first_gene]))
