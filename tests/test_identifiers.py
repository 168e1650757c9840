"""Case and slide ids stay the exact strings of the table ('0001', '01' vs '1', '1e5', 'TRUE', 'NA')
through the cohort files, the split files and their readers, and the report's readers."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from ghanet_workflow import cohort, splits
from ghanet_workflow.report import inputs, qc

#: Ids pandas would turn into numbers, booleans or NaN; '01' and '1' must stay two patients.
ODD_CASE_IDS = ["0001", "01", "1", "NA", "1e5", "TRUE"]
#: Slide ids (without extension) of the same kind, given to the first slide of the first patients.
ODD_SLIDE_IDS = ["0002", "NA", "1e5"]
N_PATIENTS = 36


@pytest.fixture(scope="module")
def odd_table(blca_table, tmp_path_factory):
    """The real BLCA table, first N_PATIENTS patients, some case/slide ids rewritten; (csv path, id map)."""
    table = pd.read_csv(blca_table, dtype={"case_id": str, "slide_id": str})
    keep = list(dict.fromkeys(table["case_id"]))[:N_PATIENTS]
    table = table[table["case_id"].isin(keep)].copy()
    renamed = dict(zip(keep, ODD_CASE_IDS))
    table["case_id"] = table["case_id"].map(lambda c: renamed.get(c, c))
    first_rows = table.drop_duplicates("case_id").index[: len(ODD_SLIDE_IDS)]
    table.loc[first_rows, "slide_id"] = ODD_SLIDE_IDS
    path = tmp_path_factory.mktemp("odd") / "odd_ids.csv"
    table.to_csv(path, index=False)
    return path, table


@pytest.fixture(scope="module")
def odd_cohort(odd_table, signatures, tmp_path_factory):
    """The cohort built from the odd-id table (every slide usable), through the command line."""
    path, table = odd_table
    folder = tmp_path_factory.mktemp("odd_cohort")
    status = pd.DataFrame(
        {"slide_id": table["slide_id"], "status": "ok", "reason": "", "n_patches": 10, "features_path": ""}
    )
    status.to_csv(folder / "slide_status.csv", index=False)
    out = folder / "cohort"
    code = cohort.main(
        ["--clinical", str(path), "--signatures", str(signatures), "--slide-status",
         str(folder / "slide_status.csv"), "--out-dir", str(out)]
    )  # fmt: skip
    assert code == 0
    return out


def csv_column(path, column: str) -> list[str]:
    """A column of a CSV file as the raw text written (no type inference)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def test_clinical_table_keeps_ids_as_written(odd_table):
    path, table = odd_table
    read = cohort.read_clinical_table(path)
    assert list(read["case_id"]) == list(table["case_id"])
    assert list(read["slide_id"]) == list(table["slide_id"])
    assert set(ODD_CASE_IDS) <= set(read["case_id"]) and set(ODD_SLIDE_IDS) <= set(read["slide_id"])
    assert read["case_id"].nunique() == N_PATIENTS  # '01' and '1' are two patients
    # other columns are still parsed: numbers stay numbers
    assert pd.api.types.is_float_dtype(read["survival_months"]) and pd.api.types.is_numeric_dtype(read["age"])


def test_built_cohort_files_round_trip_the_ids(odd_table, odd_cohort):
    _, table = odd_table
    expected = list(dict.fromkeys(table["case_id"]))
    assert csv_column(odd_cohort / "patients.csv", "case_id") == expected
    built = cohort.load_built_cohort(odd_cohort)
    assert list(built.patients.index) == expected and list(built.genomics.index) == expected
    assert len(built.patients) == N_PATIENTS and {"01", "1", "0001"} <= set(built.patients.index)
    assert built.patients.loc["NA", "n_slides"] >= 1 and built.patients.loc["1e5", "survival_months"] >= 0
    assert set(csv_column(odd_cohort / "slides.csv", "slide_id")) == set(table["slide_id"])
    assert set(built.slides["slide_id"]) == set(table["slide_id"]) and built.slides["used"].all()
    assert set(built.slides["case_id"]) == set(expected)
    slides_of = built.patients["slides"].str.split(";")
    assert {s for names in slides_of for s in names} == set(table["slide_id"])
    assert all(isinstance(name, str) for name in built.slides["slide_id"])


def test_generated_split_files_and_reader_round_trip_the_ids(odd_cohort, tmp_path):
    out = tmp_path / "splits"
    code = splits.main(["--patients", str(odd_cohort / "patients.csv"), "--out-dir", str(out), "--options",
                        json.dumps({"k": 3, "inner_val_fraction": 0.2})])  # fmt: skip
    assert code == 0
    expected = set(csv_column(odd_cohort / "patients.csv", "case_id"))
    tested = []
    for fold in range(3):
        assert set(csv_column(out / f"fold_{fold}.csv", "case_id")) == expected
        parts = splits.read_fold(out / f"fold_{fold}.csv")
        assert set().union(*map(set, parts.values())) == expected
        assert sum(map(len, parts.values())) == N_PATIENTS
        tested += parts["test"]
    assert sorted(tested) == sorted(expected)
    for frame in splits.read_splits(out, 3):
        assert set(frame["case_id"]) == expected
    # a rerun reads the files back and finds they fit the cohort (no id turned into NaN or a number)
    assert splits.main(["--patients", str(odd_cohort / "patients.csv"), "--out-dir", str(out), "--options",
                        json.dumps({"k": 3})]) == 0  # fmt: skip


def test_published_split_files_keep_the_ids(odd_cohort, tmp_path):
    ids = csv_column(odd_cohort / "patients.csv", "case_id")
    folder = tmp_path / "published"
    folder.mkdir()
    for fold in range(2):
        test = ids[fold::2]
        train = [c for c in ids if c not in test]
        rows = [[str(i), train[i] if i < len(train) else "", test[i] if i < len(test) else ""]
                for i in range(max(len(train), len(test)))]  # fmt: skip
        with open(folder / f"splits_{fold}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["", "train", "val"])
            writer.writerows(rows)
    train0, val0 = splits.read_published_fold(folder / "splits_0.csv")
    assert val0 == ids[0::2] and train0 == [c for c in ids if c not in ids[0::2]]
    patients = pd.read_csv(odd_cohort / "patients.csv", dtype=str, keep_default_na=False).set_index("case_id")
    patients = patients.astype({"survival_months": float, "censorship": int})
    folds = splits.make_splits(patients, k=2, published_dir=folder, inner_val_fraction=0.2)
    for fold, frame in enumerate(folds):
        assert set(frame.loc[frame["split"] == "test", "case_id"]) == set(ids[fold::2])
        assert set(frame["case_id"]) == set(ids)


def test_report_readers_keep_the_ids(odd_cohort, tmp_path):
    ids = csv_column(odd_cohort / "patients.csv", "case_id")
    predictions = pd.DataFrame({"case_id": ids, "time": range(len(ids)), "event": 1, "risk": 0.5,
                                "split": "test", "fold": 0})  # fmt: skip
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    read = inputs.read_predictions(tmp_path / "predictions.csv")
    assert list(read["case_id"]) == ids
    slides = qc.load_slide_table([odd_cohort / "slides.csv"])
    expected = set(csv_column(odd_cohort / "slides.csv", "slide_id"))
    assert set(slides["slide_id"]) == expected and set(slides["slide_key"]) == {cohort.slide_key(s) for s in expected}
    assert set(slides["case_id"]) == set(ids)


def test_read_id_csv_leaves_other_columns_to_pandas(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("case_id,slide_id,x,flag\nNA,1e5,NA,TRUE\n0001,01,,FALSE\n1,TRUE,3.5,TRUE\n")
    frame = cohort.read_id_csv(path)
    assert list(frame["case_id"]) == ["NA", "0001", "1"] and list(frame["slide_id"]) == ["1e5", "01", "TRUE"]
    assert frame["x"].isna().tolist() == [True, True, False] and frame["x"].iloc[2] == 3.5
    assert frame["flag"].tolist() == [True, False, True]
