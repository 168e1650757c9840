"""The second run: after a complete demo run, each change reruns only the jobs whose outputs it changes.

Every test starts from a hard-linked copy of the session's finished demo run (tests/e2e_fixtures.py)
and asserts on the jobs `snakemake -n` lists, rule by rule, as a user sees them before a cluster
run. Two tests then run the jobs for real: more epochs resume the finished training, and a damaged
per-slide file is made again while the other slides are kept.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import pytest
from e2e_fixtures import SNAKEMAKE, run
from test_workflow import job_counts, linked_copy

pytestmark = pytest.mark.slow

COHORT = "demo_blca"
#: the demo's four models (config/config.yaml training.models) x 5 folds
FOLD_JOBS = {"train_fold": 20, "evaluate_fold": 20, "interpret_fold": 20}
#: the report products that read the folds' outputs (the slides products do not)
FOLD_REPORT_JOBS = {
    **{"report_cindex": 1, "report_comparison": 1, "report_training_curves": 1, "report_reconstruction": 1},
    **{"report_attention": 1, "paper_table": 1, "all": 1},
}


@pytest.fixture
def finished(demo_run, tmp_path) -> Path:
    """A private copy of the finished demo run (results hard-linked, metadata copied)."""
    return linked_copy(demo_run, tmp_path / "wf")


def overlay(work: Path, text: str) -> list[str]:
    """``--configfile`` arguments: the demo's config and an overlay (nested --config values are text)."""
    path = work / "overlay.yaml"
    path.write_text(text)
    return ["--configfile", "config/config.yaml", str(path)]


def planned(work: Path, *args: str) -> dict[str, int]:
    """Rule -> job count of `snakemake -n` with ``args`` (empty: nothing to do)."""
    result = run([SNAKEMAKE, "-n", *args], work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    if not counts:
        assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]
    counts.pop("total", None)
    return counts


def test_a_finished_run_has_nothing_to_do(finished):
    assert planned(finished) == {}


def test_adding_a_model_adds_only_that_models_jobs(finished):
    more = overlay(finished, "training:\n  models: [ghanet, abmil, snn, abmil_snn, coxnet]\n")
    jobs = planned(finished, *more, "--quiet", "rules")
    assert jobs == {"train_fold_cpu": 5, "evaluate_fold": 5, "interpret_fold": 5, **FOLD_REPORT_JOBS}
    dry = run([SNAKEMAKE, "-n", *more], finished).stdout
    assert "model=coxnet" in dry and "model=ghanet" not in dry, dry[-3000:]


def test_evaluation_settings_rerun_evaluation_and_report_only(finished):
    jobs = planned(finished, *overlay(finished, "evaluation:\n  bootstrap: 50\n  auc_times_months: [24]\n"))
    assert jobs == {"evaluate_fold": 20, "report_cindex": 1, "paper_table": 1, "all": 1}


def test_a_report_option_reruns_only_the_products_that_show_it(finished):
    decimals = {"report_cindex": 1, "report_comparison": 1, "report_reconstruction": 1, "paper_table": 1, "all": 1}
    assert planned(finished, *overlay(finished, "report:\n  decimals: 2\n")) == decimals
    assert planned(finished, *overlay(finished, "report:\n  top_genes: 3\n")) == {"report_reconstruction": 1, "all": 1}
    assert planned(finished, *overlay(finished, "report:\n  max_thumbnails: 10\n")) == {"report_qc_sheet": 1, "all": 1}


def test_loader_and_device_settings_rerun_nothing(finished):
    settings = "config/test/run_settings/config.yaml"  # every loader and device setting changed
    assert planned(finished, "--configfile", "config/config.yaml", settings) == {}


def test_a_tiling_setting_reruns_tiling_and_everything_after_it(finished):
    jobs = planned(finished, *overlay(finished, "tiling: {min_tissue_fraction: 0.5}\n"), "--quiet", "rules")
    assert jobs["tile_slide"] == 43 and jobs["extract_features"] == 3 and jobs["train_fold"] == 20
    assert "demo_slide" not in jobs  # the synthetic slides themselves do not change


def test_more_epochs_retrain_and_resume_from_the_finished_epoch(finished):
    assert planned(finished, *overlay(finished, "training: {epochs: 30}\n"), "--quiet", "rules") == {
        **FOLD_JOBS,
        **FOLD_REPORT_JOBS,
    }
    fold = f"results/{COHORT}/models/ghanet/fold_0"
    more = overlay(finished, "training: {epochs: 21}\n")
    result = run([SNAKEMAKE, "--cores", "2", f"{fold}/metrics.json", *more], finished)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (finished / "logs" / COHORT / "train_fold" / "ghanet_fold_0.log").read_text()
    assert "resuming ghanet from epoch 20" in log, log[-2000:]
    assert [int(e) for e in re.findall(r"epoch (\d+): total", log)] == [21], log[-2000:]


def damage(path: Path) -> None:
    """Truncate a hard-linked file without touching the shared run's copy: a new, shorter file."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 3])


def test_a_truncated_features_file_is_noticed_and_only_that_slide_is_extracted_again(finished):
    slide = "demo-TCGA-2F-A9KP"
    features = finished / "results" / COHORT / "features" / "efficientnet_lite0" / f"{slide}.h5"
    damage(features)
    dry = run([SNAKEMAKE, "-n", "--quiet", "rules"], finished)
    assert f"results/{COHORT}/features/efficientnet_lite0/{slide}.h5 was size changed" in dry.stdout + dry.stderr
    jobs = job_counts(dry.stdout)
    assert jobs["extract_features"] == 1 and "tile_slide" not in jobs, jobs  # its chunk, nothing before
    manifests = sorted((finished / "results" / COHORT / "features" / "efficientnet_lite0" / "chunks").glob("*.txt"))
    (manifest,) = [m for m in manifests if f"{slide}.h5" in m.read_text()]
    result = run([SNAKEMAKE, "--cores", "2", str(manifest.relative_to(finished))], finished)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (finished / "logs" / COHORT / "extract_features" / "efficientnet_lite0" / f"{manifest.stem}.log").read_text()
    redone = [line for line in log.splitlines() if " patches, " in line and "(up to date)" not in line]
    assert len(redone) == 1 and redone[0].startswith(f"{slide}"), log
    with h5py.File(features, "r") as handle:
        assert handle["features"].shape[0] > 0
    markers = list(manifest.parent.glob(f"{manifest.name}.redo-*"))
    assert len(markers) == 1 and "size changed" in markers[0].read_text()  # the record of what happened
    # The remade slide is byte for byte what it was, so is the manifest: nothing downstream reruns.
    assert planned(finished) == {}


def test_a_truncated_coords_file_is_noticed_and_that_slide_is_tiled_again(finished):
    slide = "demo-TCGA-4Z-AA7O"
    damage(finished / "results" / COHORT / "tiles" / f"{slide}.h5")
    dry = run([SNAKEMAKE, "-n", "--quiet", "rules"], finished)
    assert f"results/{COHORT}/tiles/{slide}.h5 was size changed" in dry.stdout + dry.stderr
    jobs = job_counts(dry.stdout)
    assert jobs["tile_slide"] == 1 and jobs["record_damaged_file"] == 1 and "demo_slide" not in jobs, jobs
    coords = f"results/{COHORT}/tiles/{slide}.h5"
    result = run([SNAKEMAKE, "--cores", "2", coords], finished)
    assert result.returncode == 0, result.stderr[-3000:]
    with h5py.File(finished / coords, "r") as handle:
        assert handle["coords"].shape[0] > 0
    # Same patches again: no extraction or training; only the QC tables (timings) of the report.
    assert set(planned(finished)) <= {"report_failed_slides", "report_qc_sheet", "all"}


def cohorts_config(work: Path, **extra: dict) -> list[str]:
    """``--configfile`` of the demo's config moved to the ``cohorts:`` form, with ``extra`` cohorts beside it."""
    import yaml

    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    demo = {key: config.pop(key) for key in ("clinical", "slides", "filters")}
    config["cohorts"] = {config.pop("cohort"): demo, **extra}
    path = work / "cohorts.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return ["--configfile", str(path)]


#: the real TCGA-UCEC table with its published folds, without slides: a genomic-only cohort
UCEC = {
    "clinical": "data/tcga/tcga_ucec_all_clean.csv.zip",
    "splits": {"published_dir": "data/tcga/splits/tcga_ucec"},
    "models": ["coxnet"],
}


def test_the_demo_as_one_of_cohorts_reruns_nothing_and_a_slide_model_without_slides_is_refused(finished):
    assert planned(finished, *cohorts_config(finished)) == {}  # the same cohort, written the other way
    refused = run([SNAKEMAKE, "-n", *cohorts_config(finished, tcga_ucec={**UCEC, "models": ["ghanet", "coxnet"]})], finished)
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Traceback" not in output
    assert "cohorts.tcga_ucec.models: ['ghanet'] need slides, and cohort 'tcga_ucec' has none" in output, output[-2000:]


def test_adding_a_cohort_adds_only_its_jobs_and_a_failed_fold_of_it_stops_nothing_else(finished):
    """A genomic-only cohort beside the finished demo: only its jobs and the run's tables; one of its
    folds fails, the rest runs, its partial report names the fold; the rerun retrains that fold."""
    import pandas as pd

    config = cohorts_config(finished, tcga_ucec=UCEC)
    jobs = planned(finished, *config, "--quiet", "rules")
    ucec_fold_jobs = {"train_fold_cpu": 5, "evaluate_fold": 5, "interpret_fold": 5}
    ucec_reports = {"report_cindex": 1, "report_comparison": 1, "report_training_curves": 1}
    ucec_reports |= {"report_reconstruction": 1, "report_attention": 1, "report_comparison_all": 1, "paper_table": 1}
    assert jobs == {"build_genomic_cohort": 1, "make_splits": 1, **ucec_fold_jobs, **ucec_reports, "all": 1}
    dry = run([SNAKEMAKE, "-n", *config], finished).stdout
    outputs = [line for line in dry.splitlines() if line.strip().startswith("output:")]
    assert outputs and not [line for line in outputs if "results/demo_blca/" in line], dry[-3000:]  # demo: no job

    demo_files = {p: p.stat().st_mtime_ns for p in (finished / "results" / COHORT).rglob("*") if p.is_file()}
    # the cohort's table and folds first, then one fold that cannot train: every patient in its test split
    made = run([SNAKEMAKE, "--cores", "2", "results/tcga_ucec/splits/fold_0.csv", *config], finished)
    assert made.returncode == 0, made.stderr[-3000:]
    fold_csv = finished / "results" / "tcga_ucec" / "splits" / "fold_3.csv"
    good = fold_csv.read_text()
    fold_csv.write_text(good.replace(",train", ",test").replace(",val", ",test"))
    failed = run([SNAKEMAKE, "--cores", "2", *config], finished, timeout=900)
    assert failed.returncode != 0
    partial = (finished / "results" / "tcga_ucec" / "report_partial" / "cindex.md").read_text()
    assert "coxnet fold(s) 3" in partial, partial[:2000]
    done = pd.read_csv(finished / "results" / "tcga_ucec" / "report_partial" / "cindex.csv").query("kind == 'fold'")
    assert (done.set_index("fold").drop(index="3")["status"] == "ok").all()

    fold_csv.write_text(good)
    rerun = run([SNAKEMAKE, "--cores", "2", *config], finished, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert job_counts(rerun.stdout + rerun.stderr)["train_fold_cpu"] == 1
    assert demo_files == {p: p.stat().st_mtime_ns for p in demo_files}  # the demo cohort: untouched
    table = pd.read_csv(finished / "results" / "report" / "paper_table.csv")
    assert {"demo_blca", "tcga_ucec"} <= set(table["cohort"]) and "coxnet" in set(table["model"])
    comparison = (finished / "results" / "report" / "comparison.md").read_text()
    assert "Not compared, ghanet is not trained there: tcga_ucec." in comparison


def random_lite0_checkpoint(path: Path) -> Path:
    """A second, different checkpoint of the default architecture (random initialisation, seed 0):
    the classic untrained-encoder baseline, and real other features at the demo's cost."""
    import timm
    import torch

    from ghanet_workflow.encoders import get_spec

    spec = get_spec("efficientnet_lite0")
    torch.manual_seed(0)
    model = timm.create_model(spec.architecture, pretrained=False, **dict(spec.timm_kwargs))
    torch.save(model.state_dict(), path)
    return path


def test_adding_an_encoder_adds_only_its_jobs_on_the_same_tiles_and_folds(finished):
    """A second encoder beside the finished demo: its extraction, cohort table and G-HANet folds, on
    the demo's tiles and splits; the paper table gains an Encoder column; nothing else reruns."""
    import pandas as pd

    weights = random_lite0_checkpoint(finished / "lite0_random.pth")
    config = overlay(
        finished,
        f"features:\n  encoders:\n    lite0_random: {{encoder: efficientnet_lite0, weights: {weights}, models: [ghanet]}}\n",
    )
    jobs = planned(finished, *config, "--quiet", "rules")
    fold_jobs = {"train_fold": 5, "evaluate_fold": 5, "interpret_fold": 5}
    assert jobs == {
        "extract_features": 3, "build_encoder_cohort": 1, "pack_encoder_features": 1, **fold_jobs, **FOLD_REPORT_JOBS,
    }  # fmt: skip
    results = finished / "results" / COHORT
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    made = run([SNAKEMAKE, "--cores", "2", *config], finished, timeout=1200)
    assert made.returncode == 0, made.stderr[-3000:]
    changed = {p.relative_to(results).parts[0] for p, t in before.items() if p.stat().st_mtime_ns != t}
    assert changed <= {"report"}, changed  # tiles, default features, cohort table, models: untouched

    # its features: the same patches as the default encoder's, other values
    default_h5 = sorted((results / "features" / "efficientnet_lite0").glob("demo-*.h5"))[0]
    with h5py.File(default_h5) as a, h5py.File(results / "features" / "lite0_random" / default_h5.name) as b:
        assert (a["coords"][:] == b["coords"][:]).all() and a["features"].shape == b["features"].shape
        assert not (a["features"][:] == b["features"][:]).all()
    slides = pd.read_csv(results / "cohort@lite0_random" / "slides.csv")
    assert slides.loc[slides["used"], "features_path"].str.contains("/features/lite0_random/").all()
    # trained on the cohort's splits: the same test patients as the default G-HANet, fold by fold
    for fold in range(5):
        tests = [
            set(pd.read_csv(results / "models" / model / f"fold_{fold}" / "predictions.csv").query("split == 'test'")["case_id"])
            for model in ("ghanet", "ghanet@lite0_random")
        ]
        assert tests[0] == tests[1]
    table = pd.read_csv(finished / "results" / "report" / "paper_table.csv")
    rows = set(zip(table["model"], table["encoder"]))
    assert {("ghanet", "efficientnet_lite0"), ("ghanet", "lite0_random"), ("snn", "efficientnet_lite0")} <= rows
    assert "| Model " in (finished / "results" / "report" / "paper_table.md").read_text().splitlines()[0]
    assert "Encoder" in (finished / "results" / "report" / "paper_table.md").read_text().splitlines()[0]
    comparison = pd.read_csv(results / "report" / "comparison.csv")
    assert "ghanet@lite0_random" in set(comparison["model"]) and set(comparison["reference"]) == {"ghanet"}
    assert planned(finished, *config) == {}
    # the encoder taken out again: its rows leave the tables, nothing trains
    assert set(planned(finished, "--quiet", "rules")) <= set(FOLD_REPORT_JOBS)
