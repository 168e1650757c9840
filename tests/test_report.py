"""Report stage: tables (markdown/LaTeX/CSV) and figures built from realistic per-fold outputs.

The inputs follow docs/CONTRACTS.md: 40 patients, 5 folds, predictions with train/val/test rows,
metrics.json with NaN where a metric is undefined, one fold that failed, a cohort slides.csv with
a broken slide. Expected numbers are recomputed independently with scikit-survival / numpy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from sksurv.metrics import concordance_index_censored

from ghanet_workflow import cli, plots
from ghanet_workflow.report import attention, cindex, inputs, options, paper, qc, reconstruction, text
from ghanet_workflow.errors import InputError

N_PATIENTS, N_FOLDS, N_BINS = 40, 5, 4


def report_main(argv: list[str]) -> int:
    """``ghanet-wf report ...`` through the command-line door (which turns an InputError into status 2)."""
    return cli.main(["report", *argv])


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fold_predictions(fold: int, rng: np.random.Generator) -> pd.DataFrame:
    """Predictions of one fold: every patient once, its fifth of them as test, risk linked to time."""
    case_ids = [f"TCGA-XX-{i:04d}" for i in range(N_PATIENTS)]
    time = rng.uniform(2, 120, N_PATIENTS).round(2)
    event = rng.integers(0, 2, N_PATIENTS)
    risk = -time / 30 + rng.normal(0, 2.0, N_PATIENTS)
    survival = np.cumprod(rng.uniform(0.7, 0.98, (N_PATIENTS, N_BINS)), axis=1)
    split = np.where(np.arange(N_PATIENTS) % N_FOLDS == fold, "test", "train")
    split[(np.arange(N_PATIENTS) % N_FOLDS != fold) & (np.arange(N_PATIENTS) % 7 == 0)] = "val"
    frame = pd.DataFrame({"case_id": case_ids, "time": time, "event": event, "risk": risk})
    for b in range(N_BINS):
        frame[f"surv_{b}"] = survival[:, b]
    return frame.assign(split=split, fold=fold)


def fold_metrics(predictions: pd.DataFrame, fold: int) -> dict:
    """metrics.json of one fold as the evaluate stage writes it (auc_60m undefined -> NaN + a note)."""
    test = predictions[predictions["split"] == "test"]
    cindex = concordance_index_censored(test["event"].astype(bool), test["time"], test["risk"])[0]
    return {
        "cindex": cindex,
        "cindex_uno": cindex - 0.01,
        "ibs": 0.2 + fold / 100,
        "auc_12m": 0.7,
        "auc_36m": 0.65 + fold / 100,
        "auc_60m": float("nan"),
        "notes": {"auc_60m": "60 months is beyond the truncation time"},
        "cindex_ci_low": cindex - 0.1,
        "cindex_ci_high": min(cindex + 0.1, 1.0),
        "n_patients": len(test),
        "n_events": int(test["event"].sum()),
        "logrank_p": 0.2,
        "risk_cutoff": float(predictions.loc[predictions["split"] != "test", "risk"].median()),
    }


def write_model_run(results: Path, model: str, seed: int, failed_folds=(3,)) -> dict[str, list[Path]]:
    """Per-fold files of one model under results/models/<model>/fold_k; failed folds get none."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {"metrics": [], "predictions": [], "training_logs": []}
    for fold in range(N_FOLDS):
        predictions = fold_predictions(fold, rng)
        if fold in failed_folds:
            continue
        fold_dir = results / "models" / model / f"fold_{fold}"
        fold_dir.mkdir(parents=True)
        predictions.to_csv(fold_dir / "predictions.csv", index=False)
        (fold_dir / "metrics.json").write_text(json.dumps(fold_metrics(predictions, fold)))
        epochs = np.arange(1, 6)
        pd.DataFrame(
            {
                "epoch": epochs,
                "loss_surv": 1 / epochs,
                "loss_sce": 0.5 / epochs,
                "loss_mse": 0.3 / epochs,
                "loss_total": 1.8 / epochs,
                "val_cindex": 0.5 + epochs / 50,
                "seconds": 1.0,
            }
        ).to_csv(fold_dir / "training_log.csv", index=False)
        files["metrics"].append(fold_dir / "metrics.json")
        files["predictions"].append(fold_dir / "predictions.csv")
        files["training_logs"].append(fold_dir / "training_log.csv")
    return files


def write_slides(results: Path) -> tuple[Path, list[Path]]:
    """Cohort slides.csv (one broken slide) plus tiling QC JSONs and thumbnails in the CONTRACTS layout."""
    slides = pd.DataFrame(
        {
            "slide_id": ["TCGA-XX-0000-01Z.svs", "TCGA-XX-0001-01Z.svs", "broken.svs"],
            "case_id": ["TCGA-XX-0000", "TCGA-XX-0001", "TCGA-XX-0002"],
            "status": ["ok", "ok", "failed"],
            "reason": ["", "", "OpenSlide cannot open broken.svs: Unsupported or missing image file"],
            "n_patches": [120, 340, 0],
            "features_path": [
                f"results/c/features/efficientnet_lite0/{s}.h5"
                for s in ("TCGA-XX-0000-01Z", "TCGA-XX-0001-01Z", "broken")
            ],
        }
    )
    (results / "cohort").mkdir(parents=True, exist_ok=True)
    slides.to_csv(results / "cohort" / "slides.csv", index=False)
    (results / "tiles" / "qc").mkdir(parents=True, exist_ok=True)
    qc_files = []
    for key, status in (("TCGA-XX-0000-01Z", "ok"), ("TCGA-XX-0001-01Z", "ok"), ("broken", "failed")):
        qc_row = {
            "slide_id": key,
            "status": status,
            "reason": "",
            "mpp": 0.25,
            "mpp_source": "metadata",
            "n_patches": 0 if status != "ok" else 100,
            "seconds": 0.5,
        }
        (results / "tiles" / f"{key}.qc.json").write_text(json.dumps(qc_row))
        qc_files.append(results / "tiles" / f"{key}.qc.json")
        if status == "ok":
            mpimg.imsave(
                results / "tiles" / "qc" / f"{key}.png", np.random.default_rng(0).random((40, 60, 3))
            )
    return results / "cohort" / "slides.csv", qc_files


@pytest.fixture
def cohort_run(tmp_path):
    """A cohort with 5 expected folds of G-HANet, fold 3 failed, and a broken slide."""
    results = tmp_path / "results" / "demo_blca"
    files = write_model_run(results, "ghanet", seed=0)
    slides_csv, qc_files = write_slides(results)
    return results, files, slides_csv, qc_files


def test_cindex_report_has_every_fold_mean_std_and_pooled_c(cohort_run, tmp_path):
    results, files, _, _ = cohort_run
    out = tmp_path / "report"
    table, test = cindex.write_cindex_report(
        files["metrics"],
        files["predictions"],
        out / "cindex.md",
        out / "cindex.csv",
        out / "predictions.csv",
        cohort="demo_blca",
        folds=range(N_FOLDS),
    )
    md = (out / "cindex.md").read_text()
    fold_lines = [
        line for line in md.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    ]
    assert [line.split("|")[1].strip() for line in fold_lines] == ["0", "1", "2", "3", "4"]
    assert "missing" in fold_lines[3] and "Missing folds: fold 3 (no metrics.json given)" in md

    per_fold = [json.loads(p.read_text())["cindex"] for p in files["metrics"]]
    expected = f"{np.mean(per_fold):.3f} ± {np.std(per_fold, ddof=1):.3f}"
    assert f"| mean ± std         | {expected}" in md
    assert "sample standard deviation (ddof=1)" in md and "4 completed fold(s) of 5" in md

    all_test = pd.concat(pd.read_csv(p).query("split == 'test'") for p in files["predictions"])
    pooled = concordance_index_censored(all_test["event"].astype(bool), all_test["time"], all_test["risk"])[0]
    row = table[table["kind"] == "pooled"].iloc[0]
    assert row["cindex_harrell"] == pytest.approx(pooled)
    assert f"| pooled out-of-fold | {pooled:.3f}" in md
    assert "(folds 0, 1, 2, 4)" in md
    assert "AUC 12 mo" in md and "AUC 60 mo" in md
    assert "- fold 0: auc_60m: 60 months is beyond the truncation time" in md

    csv = pd.read_csv(out / "cindex.csv")
    assert list(csv["kind"]) == ["fold"] * 5 + ["mean", "std", "pooled"]
    assert csv.loc[csv["fold"] == "3", "status"].item() == "missing"
    assert np.isnan(csv.loc[csv["kind"] == "mean", "auc_60m"].item())  # undefined everywhere stays undefined
    assert csv.loc[csv["kind"] == "mean", "n_patients"].item() == len(all_test)

    saved = pd.read_csv(out / "predictions.csv")
    assert len(saved) == len(all_test) == 4 * N_PATIENTS // N_FOLDS
    assert set(saved["split"]) == {"test"} and set(saved["fold"]) == {0, 1, 2, 4}
    assert set(saved["risk_group"]) <= {"low risk", "high risk"}


def test_risk_groups_cut_at_the_training_median_of_each_fold(cohort_run):
    _, files, _, _ = cohort_run
    predictions = pd.read_csv(files["predictions"][0])
    grouped = cindex.assign_risk_groups(predictions, 2, files["predictions"][0])
    median = predictions.loc[predictions["split"] != "test", "risk"].median()  # train + inner val
    assert len(grouped) == (predictions["split"] == "test").sum()
    assert (grouped["risk_group"] == np.where(grouped["risk"] > median, "high risk", "low risk")).all()
    with pytest.raises(InputError, match="no training-fold rows"):
        cindex.assign_risk_groups(predictions[predictions["split"] == "test"], 2, files["predictions"][0])


def test_a_metrics_file_that_is_absent_or_failed_is_listed_with_its_reason(cohort_run, tmp_path):
    results, files, _, _ = cohort_run
    failed = results / "models" / "ghanet" / "fold_4" / "metrics.json"
    failed.write_text(json.dumps({"status": "failed", "reason": "CUDA out of memory"}))
    absent = results / "models" / "ghanet" / "fold_3" / "metrics.json"
    table, _ = cindex.write_cindex_report(
        [*files["metrics"], absent],
        files["predictions"],
        tmp_path / "c.md",
        tmp_path / "c.csv",
        cohort="demo_blca",
    )
    md = (tmp_path / "c.md").read_text()
    assert f"fold 3 (metrics.json not found: {absent})" in md
    assert "fold 4 (failed: CUDA out of memory)" in md
    assert "3 completed fold(s) of 5" in md


def test_a_failed_run_reports_each_missing_fold_with_the_error_from_its_training_log(cohort_run, tmp_path):
    results, _, _, _ = cohort_run
    logs = tmp_path / "logs" / "train_fold"
    logs.mkdir(parents=True)
    (logs / "ghanet_fold_3.log").write_text(
        "2026-11-29 INFO fold: CUDA_VISIBLE_DEVICES=0\n"
        "ghanet-wf train: error: results/splits/fold_3.csv: the train split is empty\n"
    )
    (logs / "abmil_fold_0.log").write_text("Traceback (most recent call last):\nMemoryError\n")
    argv = ["--results-dir", str(results), "--models", "ghanet", "abmil", "--folds", *map(str, range(5))]
    assert report_main([*argv, "--failure-logs", str(logs)]) == 0

    md = (results / "report" / "cindex.md").read_text()
    assert md.splitlines()[2].startswith("**Incomplete: 6 of 10 (model, fold) runs did not finish")
    assert "ghanet fold(s) 3; abmil fold(s) 0, 1, 2, 3, 4" in md
    assert "fold 3 (training failed: ghanet-wf train: error: results/splits/fold_3.csv: the train split is empty" in md
    assert f"(log: {logs / 'ghanet_fold_3.log'})" in md
    assert "fold 0 (training failed: MemoryError" in md
    assert "fold 1 (metrics.json not found" not in md  # no files at all for abmil fold 1: no path to name
    table = pd.read_csv(results / "report" / "cindex.csv")
    abmil = table[(table["model"] == "abmil") & (table["kind"] == "fold")]
    assert len(abmil) == 5 and (abmil["status"] == "missing").all()
    assert "<strong>Incomplete:" in (results / "report" / "cindex.html").read_text()
    assert (results / "report" / "km.png").stat().st_size > 0  # the finished model is still drawn


def test_failed_slides_table_lists_the_broken_slide_and_cohort_qc(cohort_run, tmp_path):
    _, _, slides_csv, qc_files = cohort_run
    slides = qc.write_failed_slides(
        [slides_csv], tmp_path / "failed.md", tmp_path / "failed.csv", qc_jsons=qc_files, target_mpp=0.5
    )
    md = (tmp_path / "failed.md").read_text()
    assert "1 of 3 slides were not usable" in md
    assert (
        "| broken.svs" in md and "OpenSlide cannot open broken.svs: Unsupported or missing image file" in md
    )
    assert "Patches per usable slide: min 120, median 230, max 340" in md
    assert "Encoder: efficientnet_lite0" in md and "Target resolution: 0.5 µm/px" in md
    failed = pd.read_csv(tmp_path / "failed.csv")
    assert failed["slide_id"].tolist() == ["broken.svs"] and failed["status"].tolist() == ["failed"]
    assert len(slides) == 3  # QC JSON rows merge into the slides.csv rows (keys without extension aside)


def test_failed_slides_says_none_failed_when_all_slides_are_usable(tmp_path):
    slides = pd.DataFrame(
        {"slide_id": ["a.svs", "b.svs"], "status": ["ok", "ok"], "reason": ["", ""], "n_patches": [5, 9]}
    )
    slides.to_csv(tmp_path / "slides.csv", index=False)
    qc.write_failed_slides(
        [tmp_path / "slides.csv"], tmp_path / "f.md", tmp_path / "f.csv", encoder="resnet50_trunc"
    )
    assert "None failed: all 2 slides were usable." in (tmp_path / "f.md").read_text()
    assert pd.read_csv(tmp_path / "f.csv").empty


def test_tiling_qc_files_alone_give_the_failed_slides_and_three_risk_groups_work(tmp_path):
    no_mpp = {
        "slide_id": "TCGA-CR-7395-01A-01-TS1.svs",
        "status": "no_mpp",
        "reason": "no MPP in metadata; add it to the slide table",
    }
    (tmp_path / "TCGA-CR-7395-01A-01-TS1.qc.json").write_text(json.dumps(no_mpp))
    (tmp_path / "ok.qc.json").write_text(json.dumps({"slide_id": "ok.svs", "status": "ok", "n_patches": 7}))
    slides = qc.write_failed_slides(
        [], tmp_path / "f.md", tmp_path / "f.csv", qc_jsons=sorted(tmp_path.glob("*.qc.json"))
    )
    md = (tmp_path / "f.md").read_text()
    assert (
        "| TCGA-CR-7395-01A-01-TS1.svs | no_mpp" in md
        and "no MPP in metadata; add it to the slide table" in md
    )
    assert set(slides["status"]) == {"ok", "no_mpp"}

    predictions = fold_predictions(0, np.random.default_rng(1))
    grouped = cindex.assign_risk_groups(predictions, 3, tmp_path / "predictions.csv")
    cuts = np.quantile(predictions.loc[predictions["split"] != "test", "risk"], [1 / 3, 2 / 3])
    expected = np.array(["low risk", "intermediate risk", "high risk"])[
        np.digitize(grouped["risk"], cuts, right=True)
    ]
    assert (grouped["risk_group"] == expected).all()


def test_paper_table_bolds_the_best_model_per_cohort(tmp_path):
    cindex_csvs = []
    for cohort, seeds in (("blca", (1, 2)), ("ucec", (3, 4))):
        results = tmp_path / cohort
        for model, seed in zip(("ghanet", "abmil"), seeds):
            write_model_run(
                results, model, seed, failed_folds=(3,) if model == "abmil" and cohort == "ucec" else ()
            )
        metrics = sorted(results.glob("models/*/fold_*/metrics.json"))
        predictions = sorted(results.glob("models/*/fold_*/predictions.csv"))
        cindex.write_cindex_report(
            metrics, predictions, results / "c.md", results / "c.csv", cohort=cohort, folds=range(N_FOLDS)
        )
        cindex_csvs.append(results / "c.csv")
    cells = paper.write_paper_table(cindex_csvs, tmp_path / "p.md", tmp_path / "p.tex", tmp_path / "p.csv")

    means = cells.pivot(index="model", columns="cohort", values="mean")
    md = (tmp_path / "p.md").read_text()
    tex = (tmp_path / "p.tex").read_text()
    headers = [h.strip() for h in md.splitlines()[0].split("|")[1:-1]]
    assert headers == ["Model", "blca", "ucec", "Overall"]
    for cohort in ("blca", "ucec", "Overall"):
        best = means[cohort].idxmax()
        row = next(line for line in md.splitlines() if line.startswith(f"| {best}"))
        cell = row.split("|")[headers.index(cohort) + 1].strip()
        assert cell.startswith(f"**{means.at[best, cohort]:.3f}")
    assert md.count("**") == 2 * 3  # one bold cell per column (no ties in this data)
    stds = cells.pivot(index="model", columns="cohort", values="std")
    assert f"{means.at['ghanet', 'blca']:.3f} ± {stds.at['ghanet', 'blca']:.3f}" in md
    assert "†" in md and cells.query("model == 'abmil' and cohort == 'ucec'")["n_folds_ok"].item() == 4
    assert "\\textbf{" in tex and "$\\pm$" in tex and "\\begin{tabular}" in tex
    assert set(pd.read_csv(tmp_path / "p.csv")["cohort"]) == {"blca", "ucec", "Overall"}
    assert report_main(["paper", "--cindex", *map(str, cindex_csvs), "--out-dir", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "paper_table.md").read_text() == md
    page = (tmp_path / "cli" / "paper_table.html").read_text()
    assert page.count("<strong>") == 3 and "<table>" in page and "**" not in page


def test_reconstruction_table_averages_folds_and_names_top_genes(tmp_path):
    paths = []
    for fold, shift in ((0, 0.0), (1, 0.2)):
        fold_dir = tmp_path / "models" / "ghanet" / f"fold_{fold}"
        fold_dir.mkdir(parents=True)
        pd.DataFrame(
            {
                "group": ["Tumor Suppression"] * 3 + ["Oncogenesis"] * 2,
                "gene": ["TP53_mut", "RB1_cnv", "PTEN_rnaseq", "MYC_cnv", "KRAS_mut"],
                "pearson_r": [0.5 + shift, 0.1 + shift, 0.3 + shift, 0.4, np.nan],
                "group_r": [0.6 + shift] * 3 + [0.2 - shift] * 2,
            }
        ).to_csv(fold_dir / "reconstruction.csv", index=False)
        paths.append(fold_dir / "reconstruction.csv")
    paths.append(tmp_path / "models" / "ghanet" / "fold_2" / "reconstruction.csv")  # missing on disk
    table = reconstruction.write_reconstruction_report(
        paths, tmp_path / "r.md", tmp_path / "r.csv", options={"top_genes": 2}, out_png=tmp_path / "r.png"
    )
    assert mpimg.imread(tmp_path / "r.png").shape[1] > 300  # the group-score figure
    row = table.set_index("group").loc["Tumor Suppression"]
    assert row["mean_r"] == pytest.approx(0.4) and row["std_r"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
    assert row["top_genes"] == "TP53_mut (0.600), PTEN_rnaseq (0.400)"
    assert row["group_r"] == pytest.approx(0.7) and row["group_r_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert table.set_index("group").loc["Oncogenesis", "group_r"] == pytest.approx(0.1)
    md = (tmp_path / "r.md").read_text()
    assert "| Tumor Suppression" in md and "0.400 ± 0.141" in md and "fold 2 (not found:" in md
    assert "0.700 ± 0.141" in md and "Best reconstructed group (group-score r): Tumor Suppression." in md


def test_main_writes_tables_and_figures_from_explicit_lists(cohort_run, tmp_path):
    results, files, slides_csv, qc_files = cohort_run
    out = results / "report"
    argv = [
        "--metrics",
        *map(str, files["metrics"]),
        "--predictions",
        *map(str, files["predictions"]),
        "--training-logs",
        *map(str, files["training_logs"]),
        "--slides",
        str(slides_csv),
        "--qc",
        *map(str, qc_files),
        "--folds",
        *map(str, range(N_FOLDS)),
        "--out-dir",
        str(out),
        "--options",
        json.dumps({"decimals": 2, "formats": ["png", "svg"]}),
    ]
    assert report_main(argv) == 0
    for name in ("km", "cindex_strip", "training_curves", "qc_contact_sheet"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5_000, name
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    md = (out / "cindex.md").read_text()
    assert md.startswith("# C-index — demo_blca") and "Missing folds: fold 3" in md
    assert re.search(r"\| mean ± std +\| 0\.\d\d ± 0\.\d\d +\|", md)  # decimals=2 from --options
    assert "broken.svs" in (out / "failed_slides.md").read_text()


def test_main_finds_the_same_files_from_the_results_dir(cohort_run, tmp_path):
    results, files, _, _ = cohort_run
    explicit = tmp_path / "explicit"
    assert (
        report_main(
            [
                "--metrics",
                *map(str, files["metrics"]),
                "--predictions",
                *map(str, files["predictions"]),
                "--cohort",
                "demo_blca",
                "--out-dir",
                str(explicit),
            ]
        )
        == 0
    )
    assert (
        report_main(["--results-dir", str(results), "--models", "ghanet", "--folds", *map(str, range(5))])
        == 0
    )
    found = pd.read_csv(results / "report" / "cindex.csv")
    given = pd.read_csv(explicit / "cindex.csv")
    found = found[found["fold"] != "3"].reset_index(drop=True)
    pd.testing.assert_frame_equal(found.drop(columns="reason"), given.drop(columns="reason"))
    assert (results / "report" / "qc_contact_sheet.png").stat().st_size > 0


def test_bad_inputs_raise_errors_that_name_the_file_and_what_to_do(cohort_run, tmp_path, capsys):
    _, files, _, _ = cohort_run
    broken = tmp_path / "models" / "ghanet" / "fold_0" / "predictions.csv"
    broken.parent.mkdir(parents=True)
    pd.read_csv(files["predictions"][0]).drop(columns="risk").to_csv(broken, index=False)
    with pytest.raises(InputError, match=r"predictions\.csv: missing column\(s\) \['risk'\]"):
        cindex.write_cindex_report([], [broken], tmp_path / "c.md", tmp_path / "c.csv", cohort="x")
    with pytest.raises(InputError, match="unknown key"):
        options.resolve_options({"decimal": 2})
    with pytest.raises(InputError, match="cannot tell the fold"):
        inputs.model_and_fold(tmp_path / "metrics.json")
    assert report_main(["--predictions", str(broken), "--out-dir", str(tmp_path / "out")]) == 2
    assert "missing column(s) ['risk']" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ HTML pages


def test_every_table_page_has_an_html_twin_with_escaped_text(cohort_run, tmp_path):
    results, files, slides_csv, qc_files = cohort_run
    cindex.write_cindex_report(
        files["metrics"], files["predictions"], tmp_path / "c.md", tmp_path / "c.csv",
        cohort="demo_blca", folds=range(N_FOLDS), out_html=tmp_path / "c.html",
    )  # fmt: skip
    page = (tmp_path / "c.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == 1
    assert "<th>Harrell C" in page and "<td>mean ± std" in page and "Missing folds: fold 3" in page
    assert len(re.findall(r"<tr><td>\d ", page)) == N_FOLDS
    qc.write_failed_slides(
        [slides_csv], tmp_path / "f.md", tmp_path / "f.csv", qc_jsons=qc_files, out_html=tmp_path / "f.html"
    )
    failed = (tmp_path / "f.html").read_text()
    assert "<td>broken.svs" in failed and "<h2>Cohort QC</h2>" in failed and "<li>Target resolution" in failed
    assert text.html_page("t", "# a <b>\n\nx & y") == text.html_page("t", "# a <b>\n\nx & y")
    assert "<h1>a &lt;b&gt;</h1>" in text.html_page("t", "# a <b>\n\nx & y")


def test_a_model_without_reconstruction_is_named_not_tabulated(tmp_path):
    paths = []
    for model, rows in (("ghanet", [["Oncogenesis", "MYC_cnv", 0.4]]), ("abmil", [])):
        fold_dir = tmp_path / "models" / model / "fold_0"
        fold_dir.mkdir(parents=True)
        pd.DataFrame(rows, columns=["group", "gene", "pearson_r"]).to_csv(
            fold_dir / "reconstruction.csv", index=False
        )
        paths.append(fold_dir / "reconstruction.csv")
    table = reconstruction.write_reconstruction_report(
        paths, tmp_path / "r.md", tmp_path / "r.csv", out_html=tmp_path / "r.html"
    )
    assert table["model"].tolist() == ["ghanet"]
    assert "Models without gene reconstruction: abmil." in (tmp_path / "r.md").read_text()
    assert "<td>Oncogenesis" in (tmp_path / "r.html").read_text()


# ------------------------------------------------------------------------------------ attention


def write_attention_run(results: Path, slide: Path, n_folds: int = 2) -> tuple[list[Path], Path]:
    """attention.h5 per fold (fold.write_attention_h5) on a real slide's patch grid, and its QC JSON."""
    from ghanet_workflow.interpret import write_attention_h5

    rng = np.random.default_rng(1)
    xs, ys = np.meshgrid(np.arange(0, 2048, 256), np.arange(0, 2816, 256))
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    paths = []
    for fold in range(n_folds):
        patients = []
        for number, end in enumerate(["high", "high", "low", "low"]):
            tokens = rng.random((3, len(coords)))
            weights = rng.random(len(coords))
            patients.append(
                {
                    "token_attention": tokens / tokens.sum(1, keepdims=True),
                    "patch_weights": weights / weights.sum(),
                    "coords": coords,
                    "slide_index": np.zeros(len(coords), np.int32),
                    "case_id": f"TCGA-XX-{fold}{number:03d}",
                    "risk": float(3 - number),
                    "risk_end": end,
                    "time": 10.0,
                    "event": 1,
                    "slide_ids": [slide.name],
                    "patch_size_level0": [256],
                }
            )
        path = results / "models" / "ghanet" / f"fold_{fold}" / "attention.h5"
        write_attention_h5(path, "ghanet", fold, ["Tumor Suppression", "Oncogenesis", "Kinases"], patients)
        paths.append(path)
    qc_json = results / "tiles" / f"{slide.stem}.qc.json"
    qc_json.parent.mkdir(parents=True, exist_ok=True)
    qc_json.write_text(
        json.dumps({"slide_id": slide.name, "status": "ok", "reason": "", "slide_path": str(slide)})
    )
    return paths, qc_json


def test_attention_patients_come_from_both_risk_ends_and_different_folds(tmp_path, cmu_slide):
    paths, _ = write_attention_run(tmp_path, cmu_slide)
    patients = attention.read_attention_files(paths)
    assert len(patients) == 8 and patients[0]["groups"] == ["Tumor Suppression", "Oncogenesis", "Kinases"]
    chosen = attention.select_attention_patients(patients, 4)
    assert [(p["risk_end"], p["fold"], p["rank"]) for p in chosen] == [
        ("high", 0, 0), ("high", 1, 0), ("low", 0, 0), ("low", 1, 0)
    ]  # fmt: skip
    assert [p["case_id"] for p in chosen] == ["TCGA-XX-0000", "TCGA-XX-1000", "TCGA-XX-0002", "TCGA-XX-1002"]
    assert attention.select_attention_patients(patients, 0) == []


def test_attention_figure_draws_heatmaps_over_the_slide_thumbnail(tmp_path, cmu_slide, test_slides):
    paths, qc_json = write_attention_run(tmp_path, cmu_slide)
    slides = qc.load_slide_table([], [qc_json])
    panel = attention.attention_panel(attention.read_attention_files(paths)[0], qc.slide_paths(slides))
    assert panel.thumbnail is not None and max(panel.thumbnail.shape[:2]) == attention.THUMBNAIL_PX
    assert panel.size == (2220, 2967) and panel.token_attention.shape == (3, len(panel.coords))
    grid = plots.patch_grid(panel.coords, panel.patch_weights, 256, panel.size)
    assert grid.shape == (12, 9) and np.isnan(grid[-1, -1]) and np.isfinite(grid[0, 0])
    written = attention.write_attention_figure(paths, tmp_path / "a.png", options.resolve_options({}), slides)
    assert written == [tmp_path / "a.png"] and written[0].read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(written[0])
    assert image.shape[1] > image.shape[0]  # 4 rows of 5 panels (slide, 3 tokens, gated weights)
    assert attention.read_thumbnail(test_slides / "broken.svs") is None
    assert attention.read_thumbnail(None) is None


def test_main_draws_the_attention_figure_even_when_a_slide_cannot_be_read(cohort_run, tmp_path, test_slides):
    results, files, _, _ = cohort_run
    paths, qc_json = write_attention_run(results, test_slides / "broken.svs")
    out = tmp_path / "out"
    argv = ["--metrics", *map(str, files["metrics"]), "--predictions", *map(str, files["predictions"])]
    argv += ["--attention", *map(str, paths), "--qc", str(qc_json), "--out-dir", str(out)]
    assert report_main(argv) == 0
    assert (out / "attention_heatmaps.png").read_bytes()[:8] == PNG_MAGIC
    empty = tmp_path / "models" / "abmil" / "fold_0" / "attention.h5"
    from ghanet_workflow.interpret import write_attention_h5

    write_attention_h5(empty, "abmil", 0, [], [])
    assert attention.write_attention_figure([empty], tmp_path / "none.png", options.resolve_options({}))[
        0
    ].is_file()


def test_the_qc_sheet_finds_the_thumbnails_of_the_slide_table_in_their_folder(cohort_run, tmp_path):
    results, _, slides_csv, _ = cohort_run
    out = tmp_path / "sheet"
    argv = ["qc-sheet", "--slides", str(slides_csv), "--qc-png-dir", str(results / "tiles" / "qc"), "--out-dir", str(out)]
    assert report_main(argv) == 0
    slides = qc.load_slide_table([slides_csv])
    assert [p.name for p in inputs.qc_pngs_in(results / "tiles" / "qc", slides)] == [
        "TCGA-XX-0000-01Z.png", "TCGA-XX-0001-01Z.png"
    ]  # fmt: skip
    assert (out / "qc_contact_sheet.png").read_bytes()[:8] == PNG_MAGIC


def test_the_paper_table_of_the_ibs_bolds_the_lowest_error(cohort_run, tmp_path):
    results, files, _, _ = cohort_run
    better = tmp_path / "results" / "demo_blca"
    write_model_run(better, "abmil", seed=5)
    metrics = sorted(better.glob("models/*/fold_*/metrics.json"))
    for path in metrics:  # abmil's IBS is lower (better) than ghanet's in every fold
        values = json.loads(path.read_text())
        values["ibs"] -= 0.05 if "abmil" in str(path) else 0.0
        path.write_text(json.dumps(values))
    predictions = sorted(better.glob("models/*/fold_*/predictions.csv"))
    cindex.write_cindex_report(metrics, predictions, tmp_path / "c.md", tmp_path / "c.csv", cohort="blca")
    paper.write_paper_table([tmp_path / "c.csv"], tmp_path / "p.md", tmp_path / "p.tex", tmp_path / "p.csv", {"paper_metric": "ibs"})
    md = (tmp_path / "p.md").read_text()
    abmil = next(line for line in md.splitlines() if line.startswith("| abmil"))
    ghanet = next(line for line in md.splitlines() if line.startswith("| ghanet"))
    assert "**" in abmil and "**" not in ghanet and "Bold: best per column (lowest)" in md


def test_the_overall_mean_is_left_out_for_a_model_missing_a_cohort():
    cells = pd.DataFrame(
        {
            "model": ["ghanet", "ghanet", "coxnet"],
            "cohort": ["blca", "ucec", "ucec"],  # coxnet only on the genomic-only cohort
            "mean": [0.7, 0.6, 0.62],
            "std": [0.1, 0.1, 0.05],
            "n_folds_ok": [5, 5, 5],
            "n_folds": [5, 5, 5],
        }
    )
    overall = paper.overall_cells(cells).set_index("model")
    assert overall.loc["ghanet", "mean"] == pytest.approx(0.65) and np.isnan(overall.loc["coxnet", "mean"])


def test_the_paper_table_of_several_encoders_has_an_encoder_column(tmp_path):
    cindex_csvs = []
    for cohort, seeds in (("blca", (1, 2, 3)), ("ucec", (4, 5, 6))):
        results = tmp_path / cohort
        for model, seed in zip(("ghanet", "abmil", "ghanet@uni"), seeds):
            write_model_run(results, model, seed)
        metrics = sorted(results.glob("models/*/fold_*/metrics.json"))
        predictions = sorted(results.glob("models/*/fold_*/predictions.csv"))
        cindex.write_cindex_report(
            metrics, predictions, results / "c.md", results / "c.csv", cohort=cohort, folds=range(N_FOLDS)
        )
        cindex_csvs.append(results / "c.csv")
    cells = paper.write_paper_table(
        cindex_csvs, tmp_path / "p.md", tmp_path / "p.tex", tmp_path / "p.csv", default_encoder="efficientnet_lite0"
    )
    md = (tmp_path / "p.md").read_text().splitlines()
    assert [h.strip() for h in md[0].split("|")[1:-1]] == ["Model", "Encoder", "blca", "ucec", "Overall"]
    rows = [[c.strip() for c in line.split("|")[1:3]] for line in md[2:5]]
    # rows in the order of cindex.csv (its models' folders, sorted)
    assert rows == [["abmil", "efficientnet_lite0"], ["ghanet", "efficientnet_lite0"], ["ghanet", "uni"]]
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.columns[:3]) == ["model", "encoder", "cohort"]
    uni = table.query("encoder == 'uni' and cohort == 'blca'")
    folds = pd.read_csv(cindex_csvs[0]).query("kind == 'fold' and model == 'ghanet@uni' and status == 'ok'")
    assert uni["model"].item() == "ghanet" and uni["mean"].item() == pytest.approx(folds["cindex_harrell"].mean())
    assert cells is not None and "Model & Encoder & blca" in " ".join((tmp_path / "p.tex").read_text().split())


def test_the_paper_table_of_one_encoder_has_no_encoder_column(tmp_path):
    results = tmp_path / "blca"
    for model, seed in (("ghanet", 1), ("abmil", 2)):
        write_model_run(results, model, seed)
    cindex.write_cindex_report(
        sorted(results.glob("models/*/fold_*/metrics.json")), sorted(results.glob("models/*/fold_*/predictions.csv")),
        results / "c.md", results / "c.csv", cohort="blca", folds=range(N_FOLDS),
    )
    paper.write_paper_table([results / "c.csv"], tmp_path / "p.md", tmp_path / "p.tex", tmp_path / "p.csv", default_encoder="x")
    assert "Encoder" not in (tmp_path / "p.md").read_text()
    assert "encoder" not in pd.read_csv(tmp_path / "p.csv").columns
