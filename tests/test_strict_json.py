"""Every JSON file the workflow writes is strict JSON: undefined values are null, with the reason in ``notes``."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from ghanet_workflow import cohort, metrics, preprocess, tiling
from ghanet_workflow.report import cindex, qc
from ghanet_workflow.atomic import dumps_json, strict_json, write_json
from ghanet_workflow.fold import run_fold

FOLD_OPTIONS = {
    "training": {"epochs": 1, "grad_accum": 4, "hidden_dim": 32, "seed": 3, "device": "cpu"},
    "evaluation": {"bootstrap": 5, "auc_times_months": [12, 36]},
    "genomics": {"pvalue_threshold": 1.0, "min_genes_per_group": 1},
}


def _reject(constant: str):
    raise ValueError(f"non-standard JSON constant {constant}")


def strict_load(path) -> dict:
    """Parse a file with a parser that rejects NaN/Infinity literals."""
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject)


# ----------------------------------------------------------------------------- the writer


def test_write_json_nulls_non_finite_values_at_any_depth(tmp_path):
    obj = {
        "a": math.nan,
        "b": [1.0, np.float32("nan"), {"c": np.float64(np.inf), "d": -math.inf}],
        "e": np.array([0.5, np.nan]),
        "f": (np.int64(3), np.bool_(True), np.float16(2.5)),
        "g": {np.int64(7): "numpy key"},
        "h": pd.NA,
    }
    write_json(tmp_path / "x.json", obj)
    back = strict_load(tmp_path / "x.json")
    assert back == {"a": None, "b": [1.0, None, {"c": None, "d": None}], "e": [0.5, None],
                    "f": [3, True, 2.5], "g": {"7": "numpy key"}, "h": None}  # fmt: skip
    assert strict_json({"x": [math.nan]}) == {"x": [None]}
    assert list(json.loads(dumps_json({"b": 1, "a": 2}, sort_keys=False))) == ["b", "a"]


def test_strict_mode_is_on(monkeypatch):
    # a value strict_json does not know and that json turns into NaN is refused, never written
    class Weird(float):
        pass

    monkeypatch.setattr("ghanet_workflow.atomic.strict_json", lambda value: value)
    with pytest.raises(ValueError, match="Out of range float"):
        dumps_json({"x": Weird("nan")})


# ----------------------------------------------------------------------------- metrics.json of a fold


@pytest.fixture(scope="module")
def blca_cohort(blca_table, signatures, tmp_path_factory):
    """A built cohort of 40 real BLCA patients (genomics only: every slide marked usable)."""
    table = pd.read_csv(blca_table, dtype={"case_id": str, "slide_id": str})
    keep = list(dict.fromkeys(table["case_id"]))[:40]
    table = table[table["case_id"].isin(keep)]
    folder = tmp_path_factory.mktemp("strict_cohort")
    table.to_csv(folder / "table.csv", index=False)
    status = pd.DataFrame({"slide_id": table["slide_id"], "status": "ok", "reason": "", "n_patches": 10,
                           "features_path": ""})  # fmt: skip
    cohort.build_cohort(folder / "table.csv", signatures, status, folder / "cohort")
    return folder


def test_metrics_json_of_a_fold_without_test_events_is_strict(blca_cohort, tmp_path, torch_one_thread):
    patients = cohort.load_built_cohort(blca_cohort / "cohort").patients
    censored = patients.index[patients["censorship"] == 1]
    test = list(censored[:6])
    rest = [c for c in patients.index if c not in test]
    fold = pd.DataFrame({"case_id": test + rest, "split": ["test"] * 6 + ["val"] * 6 + ["train"] * (len(rest) - 6)})
    fold.to_csv(tmp_path / "fold_0.csv", index=False)
    out = tmp_path / "snn" / "fold_0"
    run_fold(blca_cohort / "cohort", tmp_path / "fold_0.csv", "snn", out, FOLD_OPTIONS)

    written = strict_load(out / "metrics.json")
    assert written["n_events"] == 0 and written["n_patients"] == 6
    for key in ("cindex", "cindex_uno", "cindex_ci_low", "cindex_ci_high", "logrank_p", "auc_12m", "auc_36m"):
        assert written[key] is None, key
        assert isinstance(written["notes"][key], str) and written["notes"][key], key
    assert "no event" in written["notes"]["cindex"]
    assert all(value is not None for key, value in written.items() if key not in written["notes"])
    strict_load(out / "preprocessing.json")

    # the report reads null as missing (NaN) and shows the reasons
    frame = cindex.fold_metrics_frame("snn", [0], {("snn", 0): out / "metrics.json"})
    row = frame.iloc[0]
    assert row["status"] == "ok" and math.isnan(row["cindex_harrell"]) and math.isnan(row["cindex_uno"])
    assert "cindex: no comparable pair" in row["notes"] and row["n_events"] == 0


def test_evaluate_predictions_written_by_write_json_is_strict_with_notes(tmp_path):
    rng = np.random.default_rng(0)
    n = 30
    frame = pd.DataFrame({"time": rng.uniform(1, 80, n), "event": (np.arange(n) % 3 == 0).astype(int),
                          "risk": rng.normal(size=n)})  # fmt: skip
    for j in range(4):
        frame[f"surv_{j}"] = 0.9 ** (j + 1)
    test, train = frame.iloc[:5].assign(event=0), frame.iloc[5:]
    result = metrics.evaluate_predictions(
        train=train, test=test, bin_edges=[-np.inf, 10.0, 30.0, 50.0, np.inf], options={"bootstrap": 0}
    )
    write_json(tmp_path / "metrics.json", result)
    written = strict_load(tmp_path / "metrics.json")
    assert written["cindex"] is None and "no event" in written["notes"]["cindex"]
    assert written["cindex_ci_low"] is None and "evaluation.bootstrap = 0" in written["notes"]["cindex_ci_low"]
    undefined = {key for key, value in written.items() if value is None}
    assert undefined and undefined <= set(written["notes"])  # every null has its reason


def test_preprocessing_json_is_strict_with_undefined_values(tmp_path):
    genes = pd.DataFrame({"group": ["g", "g"], "gene": ["A_rnaseq", "B_rnaseq"], "p_value": [np.nan, 0.01],
                          "selected": [True, True]})  # fmt: skip
    prep = preprocess.FoldPreprocessing(bin_edges=np.array([-np.inf, 5.0, np.inf]),
                                        means=pd.Series({"A_rnaseq": 0.0, "B_rnaseq": np.nan}),
                                        scales=pd.Series({"A_rnaseq": 1.0, "B_rnaseq": np.inf}),
                                        gene_table=genes)  # fmt: skip
    prep.to_json(tmp_path / "preprocessing.json")
    data = strict_load(tmp_path / "preprocessing.json")
    assert data["scaler"]["B_rnaseq"] == [None, None] and data["genes"][0]["p_value"] is None
    back = preprocess.FoldPreprocessing.from_json(tmp_path / "preprocessing.json")
    assert np.isnan(back.means["B_rnaseq"]) and np.isnan(back.gene_table["p_value"].iloc[0])


# ----------------------------------------------------------------------------- qc.json of failed slides


@pytest.mark.parametrize("name", ["broken.svs", "unreadable.svs", "unopenable.tiff"])
def test_qc_json_of_a_failed_slide_is_strict(name, test_slides, tmp_path):
    shutil.copy(test_slides / name, tmp_path / name)
    slide_id = name.split(".")[0]
    row = tiling.tile_slide(tmp_path / name, slide_id=slide_id, out_h5=tmp_path / f"{slide_id}.h5",
                            out_qc_json=tmp_path / f"{slide_id}.qc.json", out_png=tmp_path / "qc" / f"{slide_id}.png")
    assert row["status"] == "failed"
    written = strict_load(tmp_path / f"{slide_id}.qc.json")
    assert written["reason"] == row["reason"] and row["reason"]
    assert set(written["notes"]) == {key for key, value in written.items() if value is None}
    if name != "unreadable.svs":  # (that one is opened and measured, then fails to decode a tile)
        assert written["mpp"] is None and written["downsample"] is None and written["achieved_mpp"] is None
        assert written["notes"]["mpp"].startswith("not measured: the slide is failed")
    # the report reads null as missing
    slides = qc.load_slide_table(qc_jsons=[tmp_path / f"{slide_id}.qc.json"])
    assert slides.loc[0, "status"] == "failed"
    if name != "unreadable.svs":
        assert pd.isna(slides.loc[0, "mpp"])


def test_qc_json_of_a_slide_without_mpp_is_strict(tcga_frozen_slide, tmp_path):
    row = tiling.tile_slide(tcga_frozen_slide, slide_id="frozen", out_h5=tmp_path / "frozen.h5",
                            out_qc_json=tmp_path / "frozen.qc.json", out_png=tmp_path / "frozen.png")
    assert row["status"] == "failed"
    written = strict_load(tmp_path / "frozen.qc.json")
    assert written["mpp"] is None and "mpp" in written["notes"] and written["level0_width"] > 0


def test_qc_json_of_a_good_slide_has_no_notes(cmu_slide, tmp_path):
    tiling.tile_slide(cmu_slide, slide_id="cmu", out_h5=tmp_path / "cmu.h5", out_qc_json=tmp_path / "cmu.qc.json",
                      out_png=tmp_path / "cmu.png")  # fmt: skip
    written = strict_load(tmp_path / "cmu.qc.json")
    assert written["status"] == "ok" and written["notes"] == {} and written["mpp"] > 0
