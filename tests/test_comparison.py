"""The paired model comparison: corrected resampled t-test and paired bootstrap, checked by hand.

The t-test numbers below are worked out on paper (Nadeau & Bengio 2003); the bootstrap replicate
is recomputed from the generator's draws with a pairwise Harrell C written out here, independent
of scikit-survival.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ghanet_workflow.errors import InputError
from ghanet_workflow.report import comparison


def pairwise_harrell(event, time, risk) -> float:
    """Harrell's C by its definition: pairs (i, j) with time_i < time_j and an event at i; ties in risk count 1/2."""
    concordant = comparable = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if event[i] and time[i] < time[j]:
                comparable += 1
                concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return concordant / comparable


def test_the_corrected_t_test_matches_the_worked_example():
    # d = (0.02, 0.05, -0.01, 0.04, 0.03): mean 0.026, sample variance 5.3e-4; n_test/n_train = 1/4
    # corrected variance (1/5 + 1/4) * 5.3e-4 = 2.385e-4; t = 0.026 / sqrt(2.385e-4) = 1.68356
    t, p, df, variance = comparison.corrected_ttest([0.02, 0.05, -0.01, 0.04, 0.03], 0.25)
    assert variance == pytest.approx(2.385e-4)
    assert t == pytest.approx(1.683562, abs=1e-6) and df == 4
    assert p == pytest.approx(0.167553, abs=1e-6)  # two-sided, Student t with 4 df
    # the uncorrected paired t-test would claim more: t = 0.026 / sqrt(5.3e-4 / 5) = 2.525
    assert t < 0.026 / np.sqrt(5.3e-4 / 5)
    assert np.isnan(comparison.corrected_ttest([0.1], 0.25)[0])  # one fold: no variance
    assert np.isnan(comparison.corrected_ttest([0.1, 0.1], 0.25)[1])  # no spread: no test


FOLD_A = pd.DataFrame({"time": [5.0, 8, 12, 20, 31], "event": [1, 0, 1, 1, 0]})
FOLD_B = pd.DataFrame({"time": [3.0, 9, 14, 26], "event": [1, 1, 0, 1]})


def test_one_bootstrap_replicate_is_the_mean_delta_on_the_drawn_patients():
    folds = [
        (FOLD_A.assign(risk=[0.9, 0.1, 0.5, 0.3, 0.2]), FOLD_A.assign(risk=[0.1, 0.2, 0.3, 0.4, 0.5])),
        (FOLD_B.assign(risk=[0.8, 0.6, 0.1, 0.2]), FOLD_B.assign(risk=[0.2, 0.8, 0.6, 0.1])),
    ]
    seed = 3
    (replicate,) = comparison.paired_bootstrap(folds, 1, np.random.default_rng(seed))
    draws = np.random.default_rng(seed)  # the same generator, fold after fold
    deltas = []
    for model, reference in folds:
        index = draws.integers(0, len(model), len(model))
        event, time = model["event"].to_numpy()[index], model["time"].to_numpy()[index]
        deltas.append(
            pairwise_harrell(event, time, model["risk"].to_numpy()[index])
            - pairwise_harrell(event, time, reference["risk"].to_numpy()[index])
        )
    assert replicate == pytest.approx(np.mean(deltas), abs=1e-12)
    # By hand. Seed 3 draws patients [4, 0, 0, 1, 0] of fold A and [3, 3, 2, 0] of fold B.
    # Fold A: the only events are the three copies of patient 0 (t=5), each comparable with
    # patients 4 (t=31) and 1 (t=8): 6 pairs; the model ranks 0 above both (0.9 > 0.2, 0.1): C = 1;
    # the reference ranks it below both (0.1 < 0.5, 0.2): C = 0. Delta = 1.
    # Fold B: patient 0 (t=3, event) against 3, 3, 2: 3 pairs (patient 3's event at t=26 has no
    # later patient). Model: 0.8 above 0.2, 0.2, 0.1: C = 1. Reference: 0.2 above 0.1, 0.1 but
    # below 0.6: C = 2/3. Delta = 1/3. The replicate: (1 + 1/3) / 2 = 2/3.
    draws = np.random.default_rng(seed)
    assert list(draws.integers(0, 5, 5)) == [4, 0, 0, 1, 0] and list(draws.integers(0, 4, 4)) == [3, 3, 2, 0]
    assert deltas == pytest.approx([1.0, 1 / 3]) and replicate == pytest.approx(2 / 3)


def test_the_percentile_ci_leaves_out_undefined_replicates():
    low, high = comparison.percentile_ci(np.array([0.0, 0.1, np.nan, 0.2, 0.3, 0.4]), 0.5)
    assert (low, high) == pytest.approx((0.1, 0.3))  # percentiles 25 and 75 of the five defined values


def write_fold(results: Path, model: str, fold: int, frame: pd.DataFrame) -> Path:
    path = results / "models" / model / f"fold_{fold}" / "predictions.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def cohort_predictions(results: Path, rng: np.random.Generator, strength: float) -> list[Path]:
    """Five folds of 30 patients (10 test); ``good`` ranks by time ``strength`` times more sharply than ``ghanet``."""
    paths = []
    for fold in range(5):
        time = rng.uniform(1, 100, 30)
        frame = pd.DataFrame(
            {
                "case_id": [f"P{fold}-{i:02d}" for i in range(30)],
                "time": time,
                "event": rng.integers(0, 2, 30),
                "split": ["test"] * 10 + ["train"] * 15 + ["val"] * 5,
                "fold": fold,
            }
        )
        weak = -time / 30 + rng.normal(scale=3.0, size=30)
        paths.append(write_fold(results, "ghanet", fold, frame.assign(risk=weak)))
        good = -strength * time / 30 + rng.normal(size=30)
        paths.append(write_fold(results, "good", fold, frame.assign(risk=good)))
    return paths


def test_a_clearly_better_model_is_marked_and_the_files_say_how(tmp_path):
    paths = cohort_predictions(tmp_path / "blca", np.random.default_rng(0), strength=5.0)
    options = {"comparison_bootstrap": 200}
    table = comparison.write_comparison({"blca": paths}, tmp_path / "out", options)
    (row,) = table.to_dict("records")
    assert row["model"] == "good" and row["reference"] == "ghanet" and row["n_folds"] == 5
    assert row["mean_delta"] > 0.2 and row["p_value"] < 0.05 and row["significant"]
    assert row["ci_low"] < row["mean_delta"] < row["ci_high"] and row["ci_low"] > 0
    # n_test / n_train = 10 / 20 in every fold (train + inner val are the training fold)
    deltas = []
    for fold in range(5):
        frames = [pd.read_csv(tmp_path / "blca" / "models" / m / f"fold_{fold}" / "predictions.csv") for m in ("good", "ghanet")]
        tests = [f[f["split"] == "test"] for f in frames]
        deltas.append(np.subtract(*[pairwise_harrell(t["event"].to_numpy(), t["time"].to_numpy(), t["risk"].to_numpy()) for t in tests]))
    t, p, _, _ = comparison.corrected_ttest(deltas, 10 / 20)
    assert row["mean_delta"] == pytest.approx(np.mean(deltas)) and row["t"] == pytest.approx(t)
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "Nadeau & Bengio 2003" in md and f"{row['mean_delta']:.3f}*" in md
    assert f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]" in md  # brackets: the ends may be negative
    tex = (tmp_path / "out" / "comparison.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "$\\Delta C$" in tex
    assert "95\\% CI" in tex and "\\hline" not in tex
    assert "<table>" in (tmp_path / "out" / "comparison.html").read_text()
    saved = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert list(saved.columns) == comparison.COLUMNS


def test_the_same_seed_gives_the_same_table(tmp_path):
    paths = cohort_predictions(tmp_path / "blca", np.random.default_rng(1), strength=0.5)
    first = comparison.compare_models({"blca": paths}, "ghanet", level=0.95, n_bootstrap=50, seed=4)
    again = comparison.compare_models({"blca": paths}, "ghanet", level=0.95, n_bootstrap=50, seed=4)
    pd.testing.assert_frame_equal(first, again)


def test_the_overall_row_averages_cohorts_and_sums_their_corrected_variances(tmp_path):
    by_cohort = {
        name: cohort_predictions(tmp_path / name, np.random.default_rng(seed), strength=1.0)
        for name, seed in (("blca", 2), ("ucec", 3))
    }
    table = comparison.compare_models(by_cohort, "ghanet", level=0.9, n_bootstrap=30, seed=1).set_index("cohort")
    blca, ucec, overall = table.loc["blca"], table.loc["ucec"], table.loc[comparison.OVERALL]
    assert overall["mean_delta"] == pytest.approx((blca["mean_delta"] + ucec["mean_delta"]) / 2)
    # each cohort's corrected variance (1/5 + 10/20) s^2, summed and divided by 2^2
    variance = sum((1 / 5 + 0.5) * c["std_delta"] ** 2 for c in (blca, ucec)) / 4
    assert overall["t"] == pytest.approx(overall["mean_delta"] / np.sqrt(variance))
    assert overall["df"] == 8 and overall["p_value"] == pytest.approx(2 * stats.t.sf(abs(overall["t"]), 8))
    assert overall["n_folds"] == 10


def test_models_tested_on_other_patients_or_a_missing_reference_are_named(tmp_path):
    paths = cohort_predictions(tmp_path / "blca", np.random.default_rng(0), strength=1.0)
    ucec = cohort_predictions(tmp_path / "ucec", np.random.default_rng(1), strength=1.0)
    # a cohort without the reference model (a genomic-only cohort beside slide cohorts) is left out, and named
    table = comparison.write_comparison({"blca": paths, "ucec": ucec}, tmp_path / "out", {"reference_model": "snn"})
    assert table.empty and table.attrs["without_reference"] == ["blca", "ucec"]
    assert "Not compared, snn is not trained there: blca, ucec." in (tmp_path / "out" / "comparison.md").read_text()
    table = comparison.compare_models({"blca": paths, "ucec": ucec}, "ghanet", level=0.95, n_bootstrap=5, seed=1)
    assert comparison.OVERALL in set(table["cohort"])
    moved = pd.read_csv(paths[1]).assign(split=lambda f: f["split"].iloc[::-1].to_numpy())
    moved.to_csv(paths[1], index=False)
    with pytest.raises(InputError, match="fold 0: good and ghanet were tested on different patients"):
        comparison.compare_models({"blca": paths}, "ghanet", level=0.95, n_bootstrap=5, seed=1)


def test_a_single_model_run_says_there_is_nothing_to_compare(tmp_path):
    paths = [p for p in cohort_predictions(tmp_path / "blca", np.random.default_rng(0), 1.0) if "ghanet" in str(p)]
    table = comparison.write_comparison({"blca": paths}, tmp_path / "out", {})
    assert table.empty and "nothing to compare" in (tmp_path / "out" / "comparison.md").read_text()
    assert json.loads(pd.read_csv(tmp_path / "out" / "comparison.csv").to_json(orient="records")) == []


def test_the_cli_writes_the_comparison_and_the_paper_table_marks_it(tmp_path):
    from ghanet_workflow import cli
    from ghanet_workflow.report import cindex

    paths = cohort_predictions(tmp_path / "blca", np.random.default_rng(0), strength=5.0)
    out = tmp_path / "blca" / "report"
    argv = ["report", "comparison", "--predictions", *map(str, paths), "--out-dir", str(out)]
    assert cli.main([*argv, "--options", json.dumps({"comparison_bootstrap": 100})]) == 0
    row = pd.read_csv(out / "comparison.csv").iloc[0]
    assert row["cohort"] == "blca" and bool(row["significant"])  # the cohort: the folder above --out-dir
    metrics = []
    for path in paths:  # a cindex.csv from the same predictions (the metrics.json the evaluate stage writes)
        frame = pd.read_csv(path)
        test = frame[frame["split"] == "test"]
        c = pairwise_harrell(test["event"].to_numpy(), test["time"].to_numpy(), test["risk"].to_numpy())
        (path.parent / "metrics.json").write_text(json.dumps({"cindex": c, "n_patients": len(test), "n_events": 1}))
        metrics.append(path.parent / "metrics.json")
    cindex.write_cindex_report(metrics, paths, out / "cindex.md", out / "cindex.csv", cohort="blca")
    argv = ["report", "paper", "--cindex", str(out / "cindex.csv"), "--comparison", str(out / "comparison.csv")]
    assert cli.main([*argv, "--out-dir", str(out)]) == 0
    md = (out / "paper_table.md").read_text()
    good = next(line for line in md.splitlines() if line.startswith("| good"))
    ghanet = next(line for line in md.splitlines() if line.startswith("| ghanet"))
    assert "\\*" in good and "\\*" not in ghanet and "differs from ghanet's" in md
    assert "$^{*}$" in (out / "paper_table.tex").read_text()
    cells = pd.read_csv(out / "paper_table.csv").set_index(["model", "cohort"])["differs"]
    assert cells[("good", "blca")] and not cells[("ghanet", "blca")]
    assert not cells[("good", "Overall")]  # one cohort: no overall comparison row to mark it


def test_a_reference_model_that_is_not_trained_stops_the_dry_run(tmp_path):
    from e2e_fixtures import REPO, SNAKEMAKE, run

    overlay = tmp_path / "models.yaml"
    overlay.write_text("training:\n  models: [abmil, snn]\n")
    result = run([SNAKEMAKE, "-n", "--configfile", "config/config.yaml", str(overlay)], REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert "report.reference_model: 'ghanet' is not trained in any cohort (models: ['abmil', 'snn'])" in output
