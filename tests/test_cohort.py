"""Cohort stage on the real TCGA tables: validation errors, gene groups, slide handling, filters."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pandas as pd
import pytest

from ghanet_workflow import cohort
from ghanet_workflow.errors import InputError

BLCA_SIZES = [94, 334, 521, 468, 1496, 479]
UCEC_SIZES = [3, 24, 21, 22, 65, 15]


@pytest.fixture(scope="module")
def blca(blca_table) -> pd.DataFrame:
    return cohort.read_clinical_table(blca_table)


@pytest.fixture(scope="module")
def blca_raw(blca_table) -> pd.DataFrame:
    return pd.read_csv(blca_table, compression="zip")


@pytest.fixture()
def small_table(blca_raw, tmp_path):
    """Real BLCA rows of 4 patients (TCGA-2F-A9KP has 2 slides), written as a plain CSV."""
    cases = ["TCGA-2F-A9KO", "TCGA-2F-A9KP", "TCGA-2F-A9KQ", "TCGA-2F-A9KR"]
    rows = blca_raw[blca_raw["case_id"].isin(cases)]
    assert rows["case_id"].value_counts()["TCGA-2F-A9KP"] == 2 and len(rows) == 5
    path = tmp_path / "small.csv"
    rows.to_csv(path, index=False)
    return path, rows


def write_features(folder, slide_id, n, status="ok", reason=""):
    """A per-slide feature HDF5 like the features stage writes."""
    path = folder / f"{cohort.slide_key(slide_id)}.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=np.zeros((n, 8), dtype=np.float32))
        handle.create_dataset("coords", data=np.zeros((n, 2), dtype=np.int64))
        handle.attrs.update(status=status, reason=reason, slide_id=cohort.slide_key(slide_id))
    return path


# ----------------------------------------------------------------------------- gene groups


def test_blca_groups_hold_every_gene_column(blca, signatures):
    groups = cohort.gene_groups(list(blca.columns), cohort.read_signatures(signatures))
    assert [len(columns) for columns in groups.values()] == BLCA_SIZES
    # the table's last column is a gene of the Transcription Factors group and must not be lost
    assert blca.columns[-1] in groups["Transcription Factors"]
    members = {column for columns in groups.values() for column in columns}
    assert not members & {"train", "site", "age", "Unnamed: 0", "censorship", "is_female", "survival_months"}
    # table order inside a group
    positions = [blca.columns.get_loc(column) for column in groups["Oncogenes"]]
    assert positions == sorted(positions)


def test_ucec_group_sizes(ucec_table, signatures):
    table = cohort.read_clinical_table(ucec_table)
    groups = cohort.gene_groups(list(table.columns), cohort.read_signatures(signatures))
    assert [len(columns) for columns in groups.values()] == UCEC_SIZES


def test_only_suffixed_gene_columns_enter():
    columns = ["train", "site", "age", "Unnamed: 0", "TP53_cnv", "TP53_rnaseq", "TP53_mut", "TP53_expr", "TP53",
               "site_cnv"]
    groups = cohort.gene_groups(columns, {"tsg": ["TP53", "PTEN"], "other": ["site"]})
    assert groups == {"tsg": ["TP53_cnv", "TP53_rnaseq", "TP53_mut"], "other": ["site_cnv"]}


def test_group_with_no_column_is_an_error(signatures):
    with pytest.raises(InputError, match="no gene column of signature group"):
        cohort.gene_groups(["TP53_cnv"], cohort.read_signatures(signatures))


# ----------------------------------------------------------------------------- malformed tables


def _bad_table(rows: pd.DataFrame, tmp_path, edit) -> str:
    table = rows.copy()
    edit(table)
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.drop(columns=["censorship"], inplace=True), r"missing required column\(s\) \['censorship'\]"),
        (lambda t: t.drop(columns=["case_id", "slide_id"], inplace=True), r"\['case_id', 'slide_id'\]"),
        (lambda t: t.__setitem__("survival_months", [5.0, -1.0, 5.0, 7.0, 9.0]), r"negative on line 3 \(slide_id"),
        (lambda t: t.__setitem__("survival_months", ["5", "5", "x", "7", "9"]), r"not a number on line 4 \(slide_id"),
        (lambda t: t.__setitem__("survival_months", [5, 5, None, 7, 9]), r"not a number on line 4"),
        (lambda t: t.__setitem__("censorship", [0, 0, 2, 1, 1]), r"'censorship' must be 0 \(event\) or 1.*line 4"),
        (
            lambda t: t.__setitem__("censorship", [0, 0, 1, 1, 1]),
            r"conflicting survival_months/censorship.*TCGA-2F-A9KP",
        ),
        (lambda t: t.__setitem__("survival_months", [5.0, 6.0, 7.0, 7.0, 9.0]), r"conflicting.*TCGA-2F-A9KP"),
        (
            lambda t: t.__setitem__("slide_id", ["a.svs", "b.svs", "a.svs", "c.svs", "d.svs"]),
            r"duplicated slide_id on line 2.*line 4",
        ),
        (lambda t: t.__setitem__("case_id", ["A", "", "B", "C", "D"]), r"'case_id' is empty on line\(s\) 3"),
    ],
)
def test_malformed_tables_name_the_problem(small_table, tmp_path, edit, message):
    _, rows = small_table
    rows = rows.reset_index(drop=True)
    with pytest.raises(InputError, match=message):
        cohort.read_clinical_table(_bad_table(rows, tmp_path, edit))


def test_missing_table_file(tmp_path):
    with pytest.raises(InputError, match="clinical table not found"):
        cohort.read_clinical_table(tmp_path / "nope.csv")


def test_zipped_and_plain_tables_read_the_same(small_table, tmp_path):
    path, rows = small_table
    zipped = tmp_path / "small.csv.zip"
    rows.to_csv(zipped, index=False, compression="zip")
    plain, packed = cohort.read_clinical_table(path), cohort.read_clinical_table(zipped)
    pd.testing.assert_frame_equal(plain, packed)
    assert plain["censorship"].dtype.kind == "i" and plain["survival_months"].dtype.kind == "f"


# ----------------------------------------------------------------------------- slides and patients


def test_missing_and_failed_slides(small_table, signatures, tmp_path):
    """Failed/absent slides are reported; a patient is dropped only when none of its slides remain."""
    path, rows = small_table
    slides = dict(zip(rows["slide_id"], rows["case_id"]))
    kp = [s for s, c in slides.items() if c == "TCGA-2F-A9KP"]
    only = {c: s for s, c in slides.items() if c != "TCGA-2F-A9KP"}
    features = tmp_path / "features"
    features.mkdir()
    files = [
        write_features(features, kp[0], 0, status="failed", reason="OpenSlideError: cannot open"),
        write_features(features, kp[1], 12),
        write_features(features, only["TCGA-2F-A9KQ"], 0, status="ok"),  # ok but no patch
        write_features(features, only["TCGA-2F-A9KR"], 7),
        write_features(features, "TCGA-XX-0000-01Z-00-DX1.svs", 5),  # processed, not in the table
    ]
    corrupt = features / "corrupt.h5"
    corrupt.write_text("not hdf5")
    status = cohort.slide_status_from_features([*files, corrupt])
    assert status.set_index("slide_id").loc["corrupt", "status"] == "failed"

    out = tmp_path / "cohort"
    cohort.build_cohort(path, signatures, status, out)
    built = cohort.load_built_cohort(out)

    # TCGA-2F-A9KO: its only slide has no features file -> dropped; A9KQ: 0 patches -> dropped
    assert list(built.patients.index) == ["TCGA-2F-A9KP", "TCGA-2F-A9KR"]
    assert built.patients.loc["TCGA-2F-A9KP", "n_slides"] == 1
    assert built.patients.loc["TCGA-2F-A9KP", "slides"] == kp[1]
    assert built.feature_paths("TCGA-2F-A9KP") == [str(files[1])]
    table = built.slides.set_index("slide_id")
    assert table.loc[only["TCGA-2F-A9KO"], "status"] == "missing"
    assert "absent on disk" in table.loc[only["TCGA-2F-A9KO"], "reason"]
    assert table.loc[kp[0], "reason"] == "OpenSlideError: cannot open"
    assert table.loc[only["TCGA-2F-A9KQ"], "reason"] == "0 patches"
    assert table.loc["TCGA-XX-0000-01Z-00-DX1", "case_id"] == ""
    assert "not in the clinical table" in table.loc["TCGA-XX-0000-01Z-00-DX1", "reason"]
    assert table["used"].sum() == 2
    assert list(built.genomics.index) == list(built.patients.index)
    assert [len(built.groups[g]) for g in built.groups] == BLCA_SIZES
    # genomics are the table's values of the patient, unchanged
    source = rows.loc[rows["case_id"] == "TCGA-2F-A9KR", list(built.genomics.columns)].iloc[0]
    np.testing.assert_array_equal(built.genomics.loc["TCGA-2F-A9KR"].to_numpy(), source.to_numpy(dtype=float))


def test_dropped_patients_are_warned(small_table, signatures, tmp_path, caplog):
    path, rows = small_table
    status = pd.DataFrame({"slide_id": rows["slide_id"].iloc[:2], "status": "ok", "reason": "", "n_patches": 3,
                           "features_path": "f.h5"})
    with caplog.at_level(logging.WARNING, logger="ghanet_workflow.cohort"):
        cohort.build_cohort(path, signatures, status, tmp_path / "c")
    assert "2 patient(s) dropped" in caplog.text and "TCGA-2F-A9KR" in caplog.text


def test_no_usable_slide_at_all_is_an_error(small_table, signatures, tmp_path):
    path, _ = small_table
    empty = pd.DataFrame(columns=list(cohort.SLIDE_STATUS_COLUMNS))
    with pytest.raises(InputError, match="no patient has a usable slide"):
        cohort.build_cohort(path, signatures, empty, tmp_path / "c")
    assert not (tmp_path / "c" / "patients.csv").exists()


def test_conflicting_genomics_within_a_patient(small_table, signatures, tmp_path):
    _, rows = small_table
    rows = rows.reset_index(drop=True)
    rows.loc[rows["case_id"] == "TCGA-2F-A9KP", "TP53_rnaseq"] = [0.1, 0.2]
    path = tmp_path / "t.csv"
    rows.to_csv(path, index=False)
    status = pd.DataFrame({"slide_id": rows["slide_id"], "status": "ok", "reason": "", "n_patches": 3,
                           "features_path": "f.h5"})
    with pytest.raises(InputError, match="TCGA-2F-A9KP have different gene values"):
        cohort.build_cohort(path, signatures, status, tmp_path / "c")


# ----------------------------------------------------------------------------- filters


def test_filter_on_oncotree_code(ucec_table, signatures, tmp_path):
    table = cohort.read_clinical_table(ucec_table)
    status = pd.DataFrame({"slide_id": table["slide_id"], "status": "ok", "reason": "", "n_patches": 4,
                           "features_path": "f.h5"})
    cohort.build_cohort(ucec_table, signatures, status, tmp_path / "c", filters={"oncotree_code": ["USC"]})
    built = cohort.load_built_cohort(tmp_path / "c")
    expected = set(table.loc[table["oncotree_code"] == "USC", "case_id"])
    assert set(built.patients.index) == expected and len(expected) > 50
    # slides of other subtypes are not reported as missing: they were filtered, not lost
    assert set(built.slides["case_id"]) == expected


def test_filters_numeric_unknown_and_empty(blca):
    assert set(cohort.apply_filters(blca, {"is_female": [1]})["is_female"]) == {1}
    assert len(cohort.apply_filters(blca, {"is_female": 1})) == int((blca["is_female"] == 1).sum())
    with pytest.raises(InputError, match="no such column"):
        cohort.apply_filters(blca, {"subtype": ["IDC"]})
    with pytest.raises(InputError, match="keeps no row.*values present: BLCA"):
        cohort.apply_filters(blca, {"oncotree_code": ["IDC"]})


# ----------------------------------------------------------------------------- command line


def test_main_with_feature_files(small_table, signatures, tmp_path):
    path, rows = small_table
    features = tmp_path / "features"
    features.mkdir()
    files = [str(write_features(features, slide, 4)) for slide in rows["slide_id"]]
    out = tmp_path / "cohort"
    code = cohort.main(["--clinical", str(path), "--signatures", str(signatures), "--features", *files,
                        "--out-dir", str(out), "--options", json.dumps({"filters": {"case_id": ["TCGA-2F-A9KP"]}})])
    assert code == 0
    patients = pd.read_csv(out / "patients.csv")
    assert patients.to_dict("records")[0]["n_slides"] == 2 and len(patients) == 1
    assert list(json.loads((out / "groups.json").read_text())) == list(cohort.read_signatures(signatures))


def test_main_rejects_unknown_option(small_table, signatures, tmp_path):
    path, _ = small_table
    with pytest.raises(InputError, match="unknown option"):
        cohort.main(["--clinical", str(path), "--signatures", str(signatures), "--slide-status", "x.csv",
                     "--out-dir", str(tmp_path), "--options", '{"filter": {}}'])


def test_genomic_only_cohort_keeps_every_patient_and_lists_no_slide(ucec_table, signatures, tmp_path):
    table = cohort.read_clinical_table(ucec_table)
    out = tmp_path / "cohort"
    code = cohort.main(["--clinical", str(ucec_table), "--signatures", str(signatures), "--genomic-only",
                        "--out-dir", str(out), "--options", json.dumps({"filters": {"oncotree_code": ["USC"]}})])
    assert code == 0
    built = cohort.load_built_cohort(out)
    expected = list(dict.fromkeys(table.loc[table["oncotree_code"] == "USC", "case_id"]))
    assert list(built.patients.index) == expected and len(expected) > 50
    assert (built.patients["n_slides"] == 0).all() and (built.patients["slides"] == "").all()
    assert [len(members) for members in built.groups.values()] == UCEC_SIZES
    assert list(built.genomics.index) == expected and set(built.genomics) == set().union(*built.groups.values())
    assert list(built.slides.columns) == list(cohort.SLIDE_TABLE_COLUMNS) and built.slides.empty
    assert built.feature_paths(expected[0]) == []
    with pytest.raises(SystemExit):  # a slide source and --genomic-only exclude each other
        cohort.main(["--clinical", str(ucec_table), "--signatures", str(signatures), "--genomic-only",
                     "--slide-status", "x.csv", "--out-dir", str(out)])
