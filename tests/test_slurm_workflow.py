"""The REAL workflow (demo cohort) through a real single-node SLURM, as users run it.

A scratch copy of the repository runs the user's command, `snakemake --profile slurm`, with the
site profile that `ghanet-wf slurm-profile` installed (slurm.fixtures: test partition/account, 2
CPUs, fast status checks) and the workflow profile profiles/default; the copy's config/config.yaml
has tests/slurm/demo-ci.yaml merged in (4 epochs, a narrower model, smaller synthetic slides). The copy's
demo cohort gets one more slide, `unreadable.svs` (OpenSlide's own corrupt-tile fixture: it opens,
its pixels do not decode), next to the demo's `broken.svs` (not a slide at all).

One full run is shared by the module (15 minutes on 2 busy cores; 18 for the whole file). Every
workflow command of that run is traced through BASH_ENV (a file bash sources before each rule's
shell command): the SLURM job it ran in and the CUDA_VISIBLE_DEVICES it saw. The kill/resume test
continues from a copy of it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from slurm.fixtures import (  # noqa: F401  (slurm_cluster is a fixture)
    BIN,
    REPO,
    SlurmCluster,
    SlurmJob,
    SnakemakeRun,
    launch_snakemake,
    run_snakemake,
    sacct_jobs,
    slurm_cluster,
    snakemake_env,
    wait_snakemake,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CI_DEMO_CONFIG = REPO / "tests" / "slurm" / "demo-ci.yaml"
EPOCHS = yaml.safe_load(CI_DEMO_CONFIG.read_text())["training"]["epochs"]
COHORT = "demo_blca"
MODEL = "ghanet"
FOLDS = range(5)
KILLED_FOLD = 2
FOLD_RULES = ("train_fold", "evaluate_fold", "interpret_fold")
RETRAINED_FOLD = 4  # retrained from scratch next to the killed fold: keep-going must finish it
BAD_SLIDE = "unreadable.svs"
BAD_SLIDE_FILE = "tests/data/slides/unreadable.svs"
BAD_SLIDE_CASE_OF = "CMU-1-Small-Region.svs"  # the extra slide joins this slide's patient
#: repository entries never copied to the scratch run (outputs, caches, VCS, other runs)
NOT_COPIED = {"results", "logs", ".snakemake", ".git", ".venv", ".pytest_cache", "test-artifacts", "__pycache__"}
#: workflow commands (`python -m ghanet_workflow.cli <subcommand>`) of the demo run, with the
#: demo's 40 synthetic slides, 43 slide files + unreadable.svs, 3 feature chunks and 5 folds
EXPECTED_COMMANDS = {
    **{"demo-slide": 40, "tile": 44, "extract": 3, "cohort": 1, "pack-features": 1, "splits": 1},
    **{"train": 5, "evaluate": 5, "interpret": 5, "report": 8},
}
GPU_COMMANDS = {"extract", "train"}
FOLD_REPORT_PRODUCTS = ("cindex", "comparison", "training_curves", "reconstruction", "attention")  # those that read the folds
REPORT_PRODUCTS = (*FOLD_REPORT_PRODUCTS, "failed_slides", "qc_sheet")
#: the sbatch comment of each SLURM job the run submits ("rule_<rule>_wildcards_<values>", the
#: cohort first): tiling in 2 group jobs (44 slides, up to 30 per group job), extraction in 3 chunks
#: of 16 slides, the cohort's table and its feature store, three jobs per fold (train on a GPU,
#: evaluate and interpret on CPUs), one job per report product, the run's paper table
EXPECTED_JOBS = Counter(
    {
        "rule_tiles_demo_slide_tile_slide": 2,
        **{f"rule_extract_features_wildcards_{COHORT}_efficientnet_lite0_chunk{i:04d}": 1 for i in range(3)},
        f"rule_build_cohort_wildcards_{COHORT}": 1,
        f"rule_pack_features_wildcards_{COHORT}": 1,
        f"rule_make_splits_wildcards_{COHORT}": 1,
        **{f"rule_{rule}_wildcards_{COHORT}_{MODEL}_{fold}": 1 for fold in FOLDS for rule in FOLD_RULES},
        **{f"rule_report_{product}_wildcards_{COHORT}": 1 for product in REPORT_PRODUCTS},
        "rule_paper_table": 1,
    }
)
GPU_JOB_PREFIXES = ("rule_extract_features", "rule_train_fold")
#: sourced by bash before every command it runs (BASH_ENV); logs the workflow's own commands
TRACE_SCRIPT = """\
case ${{BASH_EXECUTION_STRING-}} in
*ghanet_workflow.cli*)
    printf '%s\\t%s\\t%.300s\\n' "${{SLURM_JOB_ID-}}" "${{CUDA_VISIBLE_DEVICES-unset}}" \\
        "${{BASH_EXECUTION_STRING#*ghanet_workflow.cli }}" >>'{trace}' ;;
esac
"""


@dataclass(frozen=True)
class TracedCommand:
    """One `ghanet_workflow.cli` command as bash saw it when it started."""

    slurm_job_id: str  # "" when it ran outside SLURM
    cuda_visible_devices: str  # "unset" when the variable was not set
    arguments: str  # "<subcommand> <options...>", cut at 300 characters

    @property
    def subcommand(self) -> str:
        return self.arguments.split()[0]


@dataclass(frozen=True)
class DemoRun:
    """The module's full run: where it ran, what Snakemake said, what SLURM ran, what bash saw."""

    workdir: Path
    run: SnakemakeRun
    jobs: list[SlurmJob]
    commands: list[TracedCommand]

    def results(self, *parts: str) -> Path:
        return self.workdir.joinpath("results", COHORT, *parts)


def ignore_outputs(folder: str, names: list[str]) -> set[str]:
    """shutil.copytree filter: leave out NOT_COPIED everywhere and bench/out."""
    skipped = {name for name in names if name in NOT_COPIED}
    if Path(folder) == REPO / "bench" and "out" in names:
        skipped.add("out")
    return skipped


def copy_repository(dest: Path) -> Path:
    """The repository without outputs, caches and VCS data: a clean checkout to run in."""
    shutil.copytree(REPO, dest, symlinks=True, ignore=ignore_outputs)
    return dest


def add_unreadable_slide(workdir: Path) -> None:
    """One more slide for an existing patient: a clinical row and a slide-table row for unreadable.svs."""
    clinical = workdir / "data" / "demo" / "tcga_blca_demo.csv"
    row = next(line for line in clinical.read_text().splitlines() if f",{BAD_SLIDE_CASE_OF}," in line)
    with clinical.open("a") as table:
        table.write(row.replace(f",{BAD_SLIDE_CASE_OF},", f",{BAD_SLIDE},") + "\n")
    with (workdir / "config" / "demo_slides.tsv").open("a") as table:
        table.write(f"{BAD_SLIDE}\t{BAD_SLIDE_FILE}\t\n")


def read_trace(path: Path) -> list[TracedCommand]:
    """The traced workflow commands, in start order."""
    if not path.exists():
        return []
    return [TracedCommand(*line.split("\t", 2)) for line in path.read_text().splitlines() if line]


def demo_args(cluster: SlurmCluster, *extra: str) -> list[str]:
    """The user's command, `snakemake --profile slurm` (no retries in CI)."""
    return [*cluster.profile_args(), *extra]


def shorten_demo(workdir: Path) -> None:
    """Merge tests/slurm/demo-ci.yaml into the copy's config/config.yaml, section by section."""
    config_file = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    for section, values in yaml.safe_load(CI_DEMO_CONFIG.read_text()).items():
        config[section] = {**config.get(section, {}), **values}
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def demo_run(slurm_cluster: SlurmCluster, tmp_path_factory) -> DemoRun:
    """The demo cohort run once to the end through sbatch, in a scratch copy of the repository."""
    scratch = tmp_path_factory.mktemp("workflow")
    workdir = copy_repository(scratch / "repo")
    add_unreadable_slide(workdir)
    shorten_demo(workdir)
    trace = scratch / "commands.tsv"
    bash_env = scratch / "trace.sh"
    bash_env.write_text(TRACE_SCRIPT.format(trace=trace))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BASH_ENV", str(bash_env))  # sbatch exports the environment to the jobs
        run = run_snakemake(workdir, demo_args(slurm_cluster), timeout_s=2400)
    jobs = sacct_jobs(run.run_id) if run.run_id else []
    return DemoRun(workdir, run, jobs, read_trace(trace))


def fold_dir(workdir: Path, fold: int) -> Path:
    return workdir / "results" / COHORT / "models" / MODEL / f"fold_{fold}"


def job_of_fold(jobs: list[SlurmJob], fold: int) -> SlurmJob:
    (job,) = [job for job in jobs if job.comment == f"rule_train_fold_wildcards_{COHORT}_{MODEL}_{fold}"]
    return job


# ---------------------------------------------------------------- (1) the full run


def test_every_workflow_command_ran_inside_a_slurm_job_of_the_run(demo_run: DemoRun):
    assert demo_run.run.returncode == 0, demo_run.run.output[-5000:]
    assert demo_run.run.run_id, demo_run.run.output[-5000:]
    assert Counter(job.comment for job in demo_run.jobs) == EXPECTED_JOBS, demo_run.jobs
    assert all(job.state == "COMPLETED" for job in demo_run.jobs), demo_run.jobs
    # Nothing ran on the submit host: every command started inside one of this run's jobs.
    assert Counter(command.subcommand for command in demo_run.commands) == EXPECTED_COMMANDS
    job_ids = {job.job_id for job in demo_run.jobs}
    assert {command.slurm_job_id for command in demo_run.commands} <= job_ids, demo_run.commands
    # ...and each fold trained inside the job SLURM lists for that fold.
    for fold in FOLDS:
        (train,) = [c for c in demo_run.commands if c.subcommand == "train" and f"/fold_{fold}.csv" in c.arguments]
        assert train.slurm_job_id == job_of_fold(demo_run.jobs, fold).job_id


def test_gpu_rules_get_one_gpu_and_see_cuda_visible_devices(demo_run: DemoRun):
    assert demo_run.run.returncode == 0, demo_run.run.output[-5000:]
    gpu_jobs = [job for job in demo_run.jobs if job.comment.startswith(GPU_JOB_PREFIXES)]
    assert len(gpu_jobs) == 3 + len(FOLDS), demo_run.jobs
    for job in demo_run.jobs:
        assert ("gres/gpu=1" in job.alloc_tres) == (job in gpu_jobs), job
    # SLURM exported the allocated GPU to the command itself (through the job step and Snakemake).
    for command in demo_run.commands:
        if command.subcommand in GPU_COMMANDS:
            assert command.cuda_visible_devices.isdigit(), command
        else:
            assert command.cuda_visible_devices == "unset", command
    # ...and each fold recorded it, with its SLURM job, in its own outputs.
    for fold in FOLDS:
        runtime = json.loads(demo_run.results("models", MODEL, f"fold_{fold}", "metrics.json").read_text())["runtime"]
        assert runtime["cuda_visible_devices"].isdigit(), runtime
        assert runtime["slurm_job_id"] == job_of_fold(demo_run.jobs, fold).job_id, runtime


def test_report_has_all_five_folds_and_lists_the_broken_slide(demo_run: DemoRun):
    assert demo_run.run.returncode == 0, demo_run.run.output[-5000:]
    cindex = pd.read_csv(demo_run.results("report", "cindex.csv"))
    folds = cindex[(cindex["model"] == MODEL) & (cindex["kind"] == "fold")]
    assert sorted(folds["fold"].astype(int)) == list(FOLDS)
    assert (folds["status"] == "ok").all() and folds["cindex_harrell"].between(0, 1).all(), folds
    for fold in FOLDS:
        log = pd.read_csv(fold_dir(demo_run.workdir, fold) / "training_log.csv")
        assert list(log["epoch"]) == list(range(1, EPOCHS + 1))
    failed = pd.read_csv(demo_run.results("report", "failed_slides.csv")).set_index("slide_id")
    assert "not a whole-slide image" in failed.loc["broken.svs", "reason"]
    assert "broken.svs" in demo_run.results("report", "failed_slides.md").read_text()


# ---------------------------------------------------------------- (3) a slide that fails


def test_unreadable_slide_is_reported_with_its_reason_and_the_rest_of_the_cohort_finishes(demo_run: DemoRun):
    assert demo_run.run.returncode == 0, demo_run.run.output[-5000:]
    failed = pd.read_csv(demo_run.results("report", "failed_slides.csv")).set_index("slide_id")
    assert set(failed.index) == {"broken.svs", BAD_SLIDE}
    assert failed.loc[BAD_SLIDE, "status"] == "failed"
    assert "pixels cannot be decoded" in failed.loc[BAD_SLIDE, "reason"], failed.loc[BAD_SLIDE]
    report = demo_run.results("report", "failed_slides.md").read_text()
    assert BAD_SLIDE in report and "pixels cannot be decoded" in report
    # Every other slide went through to features, and the bad slide's patient kept its good one.
    slides = pd.read_csv(demo_run.results("cohort", "slides.csv")).set_index("slide_id")
    assert len(slides) == 44 and (slides.drop(["broken.svs", BAD_SLIDE])["status"] == "ok").all(), slides
    patients = pd.read_csv(demo_run.results("cohort", "patients.csv")).set_index("case_id")
    case = slides.loc[BAD_SLIDE, "case_id"]
    assert BAD_SLIDE_CASE_OF in patients.loc[case, "slides"] and BAD_SLIDE not in patients.loc[case, "slides"]
    predicted = pd.read_csv(demo_run.results("report", "predictions.csv"))
    assert case in set(predicted["case_id"])


# ---------------------------------------------------------------- (2) a cancelled fold resumes


def copy_run(demo_run: DemoRun, dest: Path) -> Path:
    """A copy of the finished run (timestamps and .snakemake metadata kept)."""
    shutil.copytree(demo_run.workdir, dest, symlinks=True)
    return dest


def squeue_job_id(comment: str) -> str | None:
    """The ID of the queued or running job with this sbatch comment, if any."""
    listing = subprocess.run(["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True, check=True).stdout
    ids = [line.split("|")[0] for line in listing.splitlines() if line.split("|")[-1] == comment]
    return ids[0] if ids else None


def wait_for_epochs(training_log: Path, comment: str, epochs: int, process: subprocess.Popen) -> str:
    """Poll a fold's training_log.csv until it lists `epochs` epochs; return its running job's ID."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        if training_log.exists() and len(pd.read_csv(training_log)) >= epochs:
            job_id = squeue_job_id(comment)
            assert job_id, f"{training_log} has {epochs} epochs but no job with comment {comment} is queued"
            return job_id
        time.sleep(0.2)
    raise AssertionError(f"{training_log} never reached {epochs} epochs (Snakemake exit: {process.poll()})")


def unlock(workdir: Path, args: list[str]) -> None:
    """`snakemake --unlock` after an interrupted run."""
    result = subprocess.run(
        [str(BIN / "snakemake"), *args, "--unlock"], cwd=workdir, env=snakemake_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def assert_same_predictions(actual: Path, expected: Path) -> None:
    """Same patients and splits; risks and survival curves equal to 1e-6."""
    left, right = pd.read_csv(actual), pd.read_csv(expected)
    assert list(left.columns) == list(right.columns)
    assert left[["case_id", "split", "fold"]].equals(right[["case_id", "split", "fold"]])
    numbers = [column for column in left if column == "risk" or column.startswith("surv_")]
    assert (left[numbers] - right[numbers]).abs().to_numpy().max() <= 1e-6


def test_cancelled_fold_resumes_from_its_checkpoint_and_ends_as_the_uninterrupted_run(
    demo_run: DemoRun, slurm_cluster: SlurmCluster, tmp_path
):
    assert demo_run.run.returncode == 0, demo_run.run.output[-5000:]
    workdir = copy_run(demo_run, tmp_path / "repo")
    # As if the run were still training these two folds: no report yet (Snakemake does not redo a
    # deleted intermediate file while the final outputs are up to date).
    for fold in (KILLED_FOLD, RETRAINED_FOLD):
        shutil.rmtree(fold_dir(workdir, fold))  # outputs and checkpoint.pt
    shutil.rmtree(workdir / "results" / COHORT / "report")
    # Plugin 2.8.0 waits forever on a job cancelled by scancel when it asks sacct (profiles/slurm/README.md).
    args = demo_args(slurm_cluster, "--slurm-status-command", "squeue")
    killed_fold = fold_dir(workdir, KILLED_FOLD)
    comment = f"rule_train_fold_wildcards_{COHORT}_{MODEL}_{KILLED_FOLD}"

    process = launch_snakemake(workdir, args, timeout_s=900, log_name="killed.out")
    job_id = wait_for_epochs(killed_fold / "training_log.csv", comment, epochs=2, process=process)
    subprocess.run(["scancel", job_id], check=True)
    killed = wait_snakemake(process, workdir, log_name="killed.out")

    assert killed.returncode != 0, killed.output[-5000:]
    cancelled = {job.comment: job for job in sacct_jobs(killed.run_id)}
    assert cancelled[comment].state.startswith("CANCELLED"), cancelled
    # keep-going: the other fold of that run finished, retrained from scratch to the same result.
    assert cancelled[f"rule_train_fold_wildcards_{COHORT}_{MODEL}_{RETRAINED_FOLD}"].state == "COMPLETED", cancelled
    assert_same_predictions(
        fold_dir(workdir, RETRAINED_FOLD) / "predictions.csv",
        fold_dir(demo_run.workdir, RETRAINED_FOLD) / "predictions.csv",
    )
    assert not (killed_fold / "metrics.json").exists()
    partial = (workdir / "results" / COHORT / "report_partial" / "cindex.md").read_text()  # by onerror
    assert f"({MODEL} fold(s) {KILLED_FOLD})" in partial and "training did not finish" in partial, partial
    epochs_done = torch.load(killed_fold / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"]
    assert 2 <= epochs_done < EPOCHS

    unlock(workdir, args)
    rerun = run_snakemake(workdir, args, timeout_s=900, log_name="rerun.out")

    assert rerun.returncode == 0, rerun.output[-5000:]
    assert {job.comment for job in sacct_jobs(rerun.run_id)} == {
        *(f"rule_{rule}_wildcards_{COHORT}_{MODEL}_{KILLED_FOLD}" for rule in FOLD_RULES),
        *(f"rule_report_{product}_wildcards_{COHORT}" for product in FOLD_REPORT_PRODUCTS),  # the slides products ran in the killed run
        "rule_paper_table",
    }
    train_log = (workdir / "logs" / COHORT / "train_fold" / f"{MODEL}_fold_{KILLED_FOLD}.log").read_text()
    assert f"resuming {MODEL} from epoch {epochs_done}" in train_log, train_log
    trained = [int(epoch) for epoch in re.findall(r"epoch (\d+): total", train_log)]
    assert trained == list(range(epochs_done + 1, EPOCHS + 1)), train_log
    assert_same_predictions(
        killed_fold / "predictions.csv", fold_dir(demo_run.workdir, KILLED_FOLD) / "predictions.csv"
    )
    resumed = json.loads((killed_fold / "metrics.json").read_text())
    uninterrupted = json.loads((fold_dir(demo_run.workdir, KILLED_FOLD) / "metrics.json").read_text())
    assert resumed["cindex"] == pytest.approx(uninterrupted["cindex"], abs=1e-9)
    assert len(pd.read_csv(killed_fold / "training_log.csv")) == EPOCHS
    cindex = pd.read_csv(workdir / "results" / COHORT / "report" / "cindex.csv")
    assert sorted(cindex.loc[cindex["kind"] == "fold", "fold"].astype(int)) == list(FOLDS)
    assert not (workdir / "results" / COHORT / "report_partial").exists()  # the complete report replaced it
