"""The Snakemake wiring: config validation, DAG, lint and formatting, and the demo end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
#: scenario configs of config/test/ (tests/test_scenarios.py dry-runs each with its own command)
BYO_FEATURES = "config/test/byo_features/config.yaml"
PREDICT = "config/test/predict/config.yaml"
PAPER_TABLE = "config/test/paper_table/config.yaml"


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_dry_run_lists_every_stage():
    result = run([SNAKEMAKE, "-n", "--forceall", "--quiet", "rules"], REPO)
    assert result.returncode == 0, result.stderr
    for rule in ["demo_slide", "tile_slide", "extract_features", "build_cohort", "make_splits", "train_fold", "report_cindex"]:
        assert rule in result.stdout, f"{rule} missing from the DAG:\n{result.stdout}"


def test_unknown_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("splits:\n  k: 5\n  sead: 3\n")
    result = run([SNAKEMAKE, "-n", "--configfile", "config/config.yaml", str(bad)], REPO)
    assert result.returncode != 0
    assert "sead" in result.stderr + result.stdout


def test_invalid_config_value_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  models: [ghanet, resnet_magic]\n")
    result = run([SNAKEMAKE, "-n", "--configfile", "config/config.yaml", str(bad)], REPO)
    assert result.returncode != 0
    assert "resnet_magic" in result.stderr + result.stdout


def test_a_target_naming_an_unknown_encoder_label_matches_no_rule():
    # the {encoder} wildcard takes only the run's labels: a mistyped label in a target is Snakemake's
    # "no rule to produce" naming the file, not a KeyError traceback from an input function
    target = "results/demo_blca/features/no_such_label/chunks/chunk0000.txt"
    result = run([SNAKEMAKE, "-n", target], REPO)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"No rule to produce {target}" in output, output[-2000:]
    assert "KeyError" not in output and "Traceback" not in output, output[-2000:]


def test_lint_is_clean():
    result = run([SNAKEMAKE, "--lint"], REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout, result.stdout


def test_snakefmt_is_clean():
    result = run([str(BIN / "snakefmt"), "--check", "."], REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_demo_end_to_end(demo_run):
    """README command 1 minus the install: the whole demo on 2 cores, every stage for real."""
    report = demo_run / "results" / "demo_blca" / "report"
    table = pd.read_csv(report / "cindex.csv")
    assert set(table["model"]) == {"ghanet", "abmil", "snn", "abmil_snn"}  # the paper's comparison, same folds
    assert (table.loc[table["kind"] == "fold", "status"] == "ok").all()
    fold_rows = table[(table["kind"] == "fold") & (table["model"] == "ghanet")]
    assert len(fold_rows) == 5 and fold_rows["n_patients"].sum() == 40
    assert fold_rows["cindex_harrell"].between(0, 1).all()
    markdown = (report / "cindex.md").read_text()
    assert "±" in markdown
    failed = (report / "failed_slides.md").read_text()
    assert "broken.svs" in failed
    predictions = pd.read_csv(report / "predictions.csv")
    assert predictions["case_id"].nunique() == 40
    # The planted signal of the simulation is learned (a property of the demo, not a result).
    assert fold_rows["cindex_harrell"].mean() >= 0.65


def linked_copy(src: Path, dest: Path) -> Path:
    """A copy of a finished run: results/ hard-linked (Snakemake and the stages replace files, never
    rewrite them in place), everything else (logs, .snakemake metadata) copied."""
    import shutil

    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("results"))
    shutil.copytree(src / "results", dest / "results", symlinks=True, copy_function=os.link)
    return dest


@pytest.mark.slow
def test_a_failed_fold_leaves_a_partial_report_and_a_rerun_retries_only_that_fold(demo_run, tmp_path):
    """A fold whose job fails: the other work is kept, a partial report names the fold and the error,
    and rerunning the same command after the fix retrains that fold alone and completes the report."""
    from e2e_fixtures import DEMO_COMMAND

    work = linked_copy(demo_run, tmp_path / "wf")
    results = work / "results" / "demo_blca"
    fold_csv = results / "splits" / "fold_2.csv"
    good = fold_csv.read_text()
    fold_csv.unlink()  # a new file, so the shared run's hard link is untouched
    fold_csv.write_text(good.replace(",train", ",test").replace(",val", ",test"))
    kept = {p: p.stat().st_mtime_ns for p in results.glob("models/*/fold_[0134]/metrics.json")}

    complete_report = (results / "report" / "cindex.md").read_text()

    failed = run(DEMO_COMMAND, work, timeout=900)
    assert failed.returncode != 0
    assert "Partial report of the finished folds" in failed.stderr + failed.stdout
    partial = results / "report_partial"
    cindex = (partial / "cindex.md").read_text()
    assert "**Incomplete: 4 of 20 (model, fold) runs did not finish (ghanet fold(s) 2; abmil fold(s) 2;" in cindex
    assert f"fold 2 (training failed: ghanet-wf train: error: {Path('results/demo_blca/splits/fold_2.csv')}" in cindex
    assert "the train split is empty" in cindex
    table = pd.read_csv(partial / "cindex.csv")
    folds = table[table["kind"] == "fold"].set_index("fold")
    assert (folds.loc["2", "status"] == "missing").all() and (folds.drop(index="2")["status"] == "ok").all()
    assert "†" in (partial / "paper_table.md").read_text()
    assert (partial / "km.png").stat().st_size > 0 and (partial / "failed_slides.md").is_file()
    assert (results / "report" / "cindex.md").read_text() == complete_report  # report/ is Snakemake's
    assert kept == {p: p.stat().st_mtime_ns for p in kept}  # finished folds were not retrained

    fold_csv.unlink()
    fold_csv.write_text(good)
    rerun = run(DEMO_COMMAND, work, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert job_counts(rerun.stdout + rerun.stderr) == {
        **{"train_fold": 4, "evaluate_fold": 4, "interpret_fold": 4},
        **{"report_cindex": 1, "report_comparison": 1, "report_training_curves": 1, "report_reconstruction": 1},
        **{"report_attention": 1, "paper_table": 1, "all": 1, "total": 19},
    }
    assert kept == {p: p.stat().st_mtime_ns for p in kept}
    assert "Incomplete" not in (results / "report" / "cindex.md").read_text()
    assert not partial.exists()  # the complete report replaced the partial one
    folds = pd.read_csv(results / "report" / "cindex.csv").query("kind == 'fold'")
    assert (folds["status"] == "ok").all() and len(folds) == 20


def job_counts(output: str) -> dict[str, int]:
    """Rule -> number of jobs, from the first 'Job stats' table of a run's or a dry run's output."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.split() == ["job", "count"]), None)
    for line in lines[start + 2 :] if start is not None else []:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_bring_your_own_features_skip_tiling_and_extraction():
    """config/test/byo_features: one CLAM h5 (demo-TCGA-2F-A9KP) in features.external_dir."""
    plain = job_counts(run([SNAKEMAKE, "-n", "--forceall", "--quiet", "rules"], REPO).stdout)
    result = run(
        [SNAKEMAKE, "-n", "--forceall", "--quiet", "rules", "--configfile", "config/config.yaml", BYO_FEATURES], REPO
    )
    assert result.returncode == 0, result.stderr
    byo = job_counts(result.stdout)
    assert byo["import_features"] == 1
    assert byo["tile_slide"] == plain["tile_slide"] - 1


def fake_trained_cohort(folder: Path) -> Path:
    """A results/<cohort> folder of another run: two fold models (model.pt files are inputs of predict_risks only)."""
    for fold in range(2):
        (folder / "models" / "ghanet" / f"fold_{fold}").mkdir(parents=True)
        (folder / "models" / "ghanet" / f"fold_{fold}" / "model.pt").write_bytes(b"")
    return folder


def test_predict_target_tiles_featurises_and_scores_only_the_new_slides(tmp_path):
    """config/test/predict (one new slide, data/slides/CMU-1-Small-Region.svs) with models from another run."""
    trained = fake_trained_cohort(tmp_path / "trained")
    setting = f"predict={{models_from: {trained}}}"  # merged into the scenario's predict section
    scenario = ["--configfile", "config/config.yaml", PREDICT]
    result = run([SNAKEMAKE, "-n", "predict", "--quiet", "rules", *scenario, "--config", setting], REPO)
    assert result.returncode == 0, result.stderr
    for rule in ("predict_tile_slide", "predict_extract_features", "predict_risks"):
        assert rule in result.stdout, result.stdout
    for rule in ("train_fold", "build_cohort", "demo_slide"):  # no training, no clinical table, no demo
        assert rule not in result.stdout, result.stdout


def test_paper_table_takes_other_cohorts_tables_and_names_a_missing_one(tmp_path):
    """config/test/paper_table: a committed tcga_ucec cindex.csv beside the demo's; then a missing one."""
    (other,) = yaml.safe_load((REPO / PAPER_TABLE).read_text())["paper_table"]["other_cohorts"]
    scenario = ["--configfile", "config/config.yaml", PAPER_TABLE]
    result = run([SNAKEMAKE, "-n", "--forceall", "paper_table", *scenario], REPO)
    assert result.returncode == 0, result.stderr
    assert str(other) in result.stdout
    missing = tmp_path / "tcga_brca" / "report" / "cindex.csv"
    result = run([SNAKEMAKE, "-n", "paper_table", "--config", f"paper_table={{other_cohorts: [{missing}]}}"], REPO)
    assert result.returncode != 0
    assert str(missing) in result.stdout + result.stderr


def test_predict_slide_table_with_a_slide_twice_names_the_table_and_slide(tmp_path):
    table = tmp_path / "new_slides.csv"
    slide = REPO / "data" / "slides" / "CMU-1-Small-Region.svs"
    table.write_text(f"case_id,slide_id,path\nNEW-1,CMU-1-Small-Region.svs,{slide}\nNEW-2,CMU-1-Small-Region.svs,{slide}\n")
    result = run([SNAKEMAKE, "-n", "predict", "--config", f"predict={{slides: {table}}}"], REPO)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{table}: slide_id(s) ['CMU-1-Small-Region.svs'] listed twice" in output


def test_every_job_declares_a_constant_disk_mb():
    """Without it Snakemake sizes every job's inputs for its default disk_mb (a third of a large dry run)."""
    result = run([SNAKEMAKE, "-n", "--forceall"], REPO)
    assert result.returncode == 0, result.stderr
    jobs = [block for block in result.stdout.split("\nrule ")[1:] if not block.startswith("all:")]
    assert jobs and all("disk_mb=1000," in block for block in jobs), [b[:300] for b in jobs if "disk_mb=1000," not in b]


def test_predict_without_a_slide_table_names_the_key():
    result = run([SNAKEMAKE, "-n", "predict"], REPO)
    assert result.returncode != 0
    assert "predict.slides" in result.stderr + result.stdout


def test_every_rule_shell_execs_its_command():
    """`exec`: the job's process is the stage itself, so a kill of the job (scancel, Ctrl-C) reaches it."""
    import re

    shells = [
        match.group(1)
        for smk in sorted((REPO / "workflow" / "rules").glob("*.smk"))
        for match in re.finditer(r"\n    shell:\n        \"([^\n]*)", smk.read_text())
    ]
    assert len(shells) >= 12
    assert all(line.startswith("exec ") for line in shells), [line for line in shells if not line.startswith("exec ")]
