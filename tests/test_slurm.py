"""The SLURM profile against a real SLURM (tools/slurm-cluster.sh), on a tiny stand-in workflow.

tests/slurm/Snakefile has the real workflow's rule names and GPU requests, so the workflow profile
(profiles/default: slide grouping, resource scopes) applies unchanged; the site profile is the one
`ghanet-wf slurm-profile` installs (slurm.fixtures), and the command is the user's,
`snakemake --profile slurm`.
One full run is shared; the kill/resume and keep-going tests continue from copies of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from slurm.fixtures import (  # noqa: F401  (slurm_cluster is a fixture)
    BIN,
    CLUSTER_SCRIPT,
    SlurmCluster,
    SnakemakeRun,
    launch_snakemake,
    run_snakemake,
    sacct_jobs,
    slurm_cluster,
    snakemake_env,
    wait_snakemake,
)

pytestmark = pytest.mark.slurm

WORKFLOW = Path(__file__).parent / "slurm"
REPO = Path(__file__).resolve().parents[1]
FOLDS = ["0", "1"]
SLIDES = ["s1", "s2"]
EPOCHS = 4  # the Snakefile's default; 3 s each


def snakemake_args(cluster: SlurmCluster, *extra: str) -> list[str]:
    """The user's command, `snakemake --profile slurm` (no retries in CI), on the stand-in workflow."""
    return ["--snakefile", "Snakefile", *cluster.profile_args(), "--executor", "slurm", *extra]


def read_job_id(path: Path) -> str:
    """The SLURM job ID a stand-in rule recorded in its output (`job=<id>`)."""
    return path.read_text().split("job=")[1].split()[0]


def metrics(workdir: Path, fold: str) -> dict:
    """The stand-in training's final metrics for one fold."""
    return json.loads((workdir / "models" / f"fold_{fold}" / "metrics.json").read_text())


def copy_run(source: Path, dest: Path) -> Path:
    """A copy of a finished run (timestamps and .snakemake metadata kept) without its models."""
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns("slurm_logs", "*.out"))
    shutil.rmtree(dest / "models")
    (dest / "report.txt").unlink()
    return dest


@pytest.fixture(scope="module")
def full_run(slurm_cluster: SlurmCluster, tmp_path_factory) -> tuple[Path, SnakemakeRun]:
    """The stand-in workflow run once to the end through sbatch, from a scratch directory."""
    workdir = tmp_path_factory.mktemp("full")
    shutil.copy(WORKFLOW / "Snakefile", workdir)
    shutil.copy(WORKFLOW / "train_stub.py", workdir)
    shutil.copytree(REPO / "profiles" / "default", workdir / "profiles" / "default")  # the workflow profile
    return workdir, run_snakemake(workdir, snakemake_args(slurm_cluster), timeout_s=600)


def test_every_job_goes_through_sbatch_and_gpu_rules_get_a_gpu(full_run):
    workdir, run = full_run
    assert run.returncode == 0, run.output
    assert run.run_id, run.output
    jobs = sacct_jobs(run.run_id)
    by_comment = {job.comment: job for job in jobs}
    group = [job for job in jobs if job.comment.startswith("rule_tiles")]
    # 2 slides' tile_slide in ONE group job, one extraction job per slide, 2 folds, the report.
    assert len(jobs) == 6 and len(group) == 1, jobs
    assert {"rule_train_fold_wildcards_0", "rule_train_fold_wildcards_1", "rule_report"} <= set(by_comment), jobs
    assert all(job.state == "COMPLETED" for job in jobs), jobs
    # Each output was written inside a job of this run (not by a local process).
    job_ids = {job.job_id for job in jobs}
    for slide in SLIDES:
        assert read_job_id(workdir / "tiles" / f"{slide}.txt") == group[0].job_id
        features = (workdir / "features" / f"{slide}.txt").read_text()
        extract_job = by_comment[f"rule_extract_features_wildcards_{slide}"]
        assert read_job_id(workdir / "features" / f"{slide}.txt") == extract_job.job_id
        assert features.startswith("cuda=") and features.split()[0].removeprefix("cuda=").isdigit(), features
    for fold in FOLDS:
        assert metrics(workdir, fold)["slurm_job_id"] == by_comment[f"rule_train_fold_wildcards_{fold}"].job_id
    assert read_job_id(workdir / "report.txt") in job_ids
    # GPU rules asked SLURM for exactly one GPU; tiling and the report for none.
    gpu_jobs = [job for job in jobs if job.comment.startswith(("rule_extract_features", "rule_train_fold"))]
    assert len(gpu_jobs) == 4, jobs
    for job in gpu_jobs:
        assert "gres/gpu=1" in job.alloc_tres, job
    for job in [*group, by_comment["rule_report"]]:
        assert "gres/gpu" not in job.alloc_tres, job


def wait_for_checkpoint(path: Path, min_epoch: int, timeout_s: float = 180) -> dict:
    """Poll a training checkpoint until it has reached `min_epoch` epochs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            saved = json.loads(path.read_text())
            if saved["next_epoch"] >= min_epoch:
                return saved
        time.sleep(0.3)
    raise AssertionError(f"{path} did not reach epoch {min_epoch} within {timeout_s} s")


def test_cancelled_training_job_resumes_from_its_checkpoint_on_rerun(full_run, slurm_cluster, tmp_path):
    reference, first = full_run
    assert first.returncode == 0, first.output
    workdir = copy_run(reference, tmp_path / "b")
    # Plugin 2.8.0 reads sacct's "CANCELLED by <uid>" as still running and would wait forever
    # for a job cancelled with scancel; squeue reports plain CANCELLED (README: "When something fails").
    args = snakemake_args(slurm_cluster, "--slurm-status-command", "squeue")
    process = launch_snakemake(workdir, args, timeout_s=600, log_name="run1.out")
    checkpoint = workdir / "models" / "fold_1" / "checkpoint.json"
    saved = wait_for_checkpoint(checkpoint, min_epoch=2)
    subprocess.run(["scancel", saved["slurm_job_id"]], check=True)
    killed = wait_snakemake(process, workdir, log_name="run1.out")

    assert killed.returncode != 0, killed.output
    assert (workdir / "models" / "fold_0" / "metrics.json").exists()  # keep-going finished the other fold
    assert not (workdir / "models" / "fold_1" / "metrics.json").exists()
    epochs_done = json.loads(checkpoint.read_text())["next_epoch"]
    assert 2 <= epochs_done < EPOCHS

    unlock = subprocess.run(
        [str(BIN / "snakemake"), *args, "--unlock"], cwd=workdir, env=snakemake_env(), capture_output=True
    )
    assert unlock.returncode == 0, unlock.stderr
    rerun = run_snakemake(workdir, args, timeout_s=600, log_name="run2.out")

    assert rerun.returncode == 0, rerun.output
    assert {job.comment for job in sacct_jobs(rerun.run_id)} == {"rule_train_fold_wildcards_1", "rule_report"}
    resumed = metrics(workdir, "1")
    assert resumed["resumed_from_epoch"] == epochs_done
    uninterrupted = metrics(reference, "1")
    assert uninterrupted["resumed_from_epoch"] == 0
    assert (resumed["state"], resumed["epochs"]) == (uninterrupted["state"], uninterrupted["epochs"])


def test_keep_going_finishes_the_other_jobs_when_one_fails(full_run, slurm_cluster, tmp_path):
    reference, first = full_run
    assert first.returncode == 0, first.output
    workdir = copy_run(reference, tmp_path / "c")
    run = run_snakemake(workdir, snakemake_args(slurm_cluster, "--config", "fail_fold=1"), timeout_s=600)

    assert run.returncode != 0
    jobs = {job.comment: job for job in sacct_jobs(run.run_id)}
    assert set(jobs) == {"rule_train_fold_wildcards_0", "rule_train_fold_wildcards_1"}, jobs
    assert jobs["rule_train_fold_wildcards_0"].state == "COMPLETED"
    assert jobs["rule_train_fold_wildcards_1"].state == "FAILED"
    assert metrics(workdir, "0")["slurm_job_id"] == jobs["rule_train_fold_wildcards_0"].job_id
    assert not (workdir / "models" / "fold_1" / "metrics.json").exists()
    assert not (workdir / "report.txt").exists()
    # The failed job's SLURM log is kept where the README says, and explains the failure.
    failed_id = jobs["rule_train_fold_wildcards_1"].job_id
    failed_log = workdir / ".snakemake" / "slurm_logs" / "rule_train_fold" / "1" / f"{failed_id}.log"
    assert "failed on purpose" in failed_log.read_text()
    assert "rule_train_fold" in run.output and str(failed_log) in run.output


def test_a_failed_job_is_retried_with_twice_the_memory_by_the_workflow_profile(full_run, slurm_cluster, tmp_path):
    """profiles/default's `retries: 2` with the rule's attempt-scaled mem_mb: a fold that needs more
    memory than its first request fails once, is resubmitted with twice the memory and finishes."""
    reference, first = full_run
    assert first.returncode == 0, first.output
    workdir = copy_run(reference, tmp_path / "d")
    args = ["--snakefile", "Snakefile", "--profile", "slurm", "--executor", "slurm", "--config", "flaky_fold=1"]
    run = run_snakemake(workdir, args, timeout_s=600)

    assert run.returncode == 0, run.output
    attempts = [job for job in sacct_jobs(run.run_id) if job.comment == "rule_train_fold_wildcards_1"]
    assert [job.state for job in attempts] == ["FAILED", "COMPLETED"], attempts
    assert "mem=300M" in attempts[0].alloc_tres and "mem=600M" in attempts[1].alloc_tres, attempts
    assert metrics(workdir, "1")["slurm_job_id"] == attempts[1].job_id


def test_cluster_script_is_idempotent(slurm_cluster):
    again = subprocess.run([str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr
    status = subprocess.run([str(CLUSTER_SCRIPT), "status"], capture_output=True, text=True)
    assert status.returncode == 0, status.stdout
    state, gres = subprocess.run(
        ["sinfo", "-h", "-o", "%T %G"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert state == "idle" and gres.startswith("gpu:"), (state, gres)
