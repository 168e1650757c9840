"""A real single-node SLURM for tests, and helpers to drive Snakemake through it.

The session fixture `slurm_cluster` starts the cluster with tools/slurm-cluster.sh (installing
the Debian packages on first use) and stops it after the session if it started it. Use it from
any test module under tests/:

    import pytest
    from slurm.fixtures import SlurmCluster, run_snakemake, sacct_jobs, slurm_cluster  # noqa: F401

    @pytest.mark.slurm
    def test_demo(slurm_cluster: SlurmCluster, tmp_path):
        run = run_snakemake(tmp_path, slurm_cluster.profile_args(), timeout_s=900)
        assert run.returncode == 0, run.output
        jobs = sacct_jobs(run.run_id)

Without root or apt-get the fixture skips; with CI=true it fails instead when root (CI must run it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "tools" / "slurm-cluster.sh"
BIN = Path(sys.executable).parent
#: what the test cluster needs on top of the installed site profile (2 CPUs, fast status checks)
CI_SITE_SETTINGS = {
    "cores": 2,
    # First status check after 2 s instead of 40 s; the plugin then waits 10 s longer after each
    # check that finds no finished job (it derives the interval from this value).
    "slurm-init-seconds-before-status-checks": 2,
}
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETING"}


@dataclass(frozen=True)
class SlurmCluster:
    """The running test cluster: where to submit and how long it took to come up."""

    account: str
    partition: str
    startup_seconds: float
    startup_log: str
    config_home: Path  #: XDG_CONFIG_HOME of the Snakemake runs: holds snakemake/slurm/config.yaml

    def profile_args(self) -> list[str]:
        """The user's command, `snakemake --profile slurm`, without retries (a CI failure must show)."""
        return ["--profile", "slurm", "--retries", "0"]


def install_site_profile(config_home: Path, account: str, partition: str) -> Path:
    """The README's install step, `ghanet-wf slurm-profile --account A --partition P`, with
    XDG_CONFIG_HOME=config_home; then the test cluster's settings, as a site would edit its copy."""
    import yaml

    env = dict(os.environ, XDG_CONFIG_HOME=str(config_home))
    command = [str(BIN / "ghanet-wf"), "slurm-profile", "--account", account, "--partition", partition]
    done = subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        pytest.fail(f"ghanet-wf slurm-profile failed:\n{done.stdout}{done.stderr}")
    profile = config_home / "snakemake" / "slurm" / "config.yaml"
    settings = yaml.safe_load(profile.read_text())
    profile.write_text(yaml.safe_dump({**settings, **CI_SITE_SETTINGS}, sort_keys=False))
    return profile


@dataclass(frozen=True)
class SnakemakeRun:
    """A finished Snakemake invocation."""

    returncode: int
    output: str
    run_id: str | None  # the plugin's SLURM run ID: the job name of every job it submitted


@dataclass(frozen=True)
class SlurmJob:
    """One SLURM job as recorded by the accounting database."""

    job_id: str
    comment: str  # the plugin writes rule_<rule>[_wildcards_<values>] here
    state: str
    exit_code: str
    alloc_tres: str


def cannot_run_reason() -> str | None:
    """Why this machine cannot host the test cluster, or None when it can."""
    if os.geteuid() != 0:
        return "the SLURM tests need root (tools/slurm-cluster.sh installs packages and starts daemons)"
    if shutil.which("apt-get") is None or not Path("/etc/debian_version").exists():
        return "the SLURM tests need Debian with apt-get"
    return None


def _cluster_is_running() -> bool:
    status = subprocess.run([str(CLUSTER_SCRIPT), "status"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return status.returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """Start the single-node SLURM cluster for the session; stop it afterwards if we started it."""
    reason = cannot_run_reason()
    if reason is not None:
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    was_running = _cluster_is_running()
    started = time.monotonic()
    start = subprocess.run(
        [str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900
    )
    if start.returncode != 0:
        pytest.fail(f"tools/slurm-cluster.sh start failed (exit {start.returncode}):\n{start.stdout}{start.stderr}")
    account = os.environ.get("GHANET_SLURM_ACCOUNT", "ci")
    config_home = tmp_path_factory.mktemp("xdg_config")
    install_site_profile(config_home, account, "debug")
    os.environ["XDG_CONFIG_HOME"] = str(config_home)  # every Snakemake of the session finds `slurm` there
    yield SlurmCluster(
        account=account,
        partition="debug",
        startup_seconds=time.monotonic() - started,
        startup_log=start.stderr,
        config_home=config_home,
    )
    if not was_running:
        subprocess.run([str(CLUSTER_SCRIPT), "stop"], capture_output=True, stdin=subprocess.DEVNULL, timeout=300)


def snakemake_env() -> dict[str, str]:
    """Environment for Snakemake and its jobs: this venv first on PATH, no inherited SLURM job."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}  # XDG_CONFIG_HOME kept
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def launch_snakemake(
    workdir: Path, args: list[str], timeout_s: int, log_name: str = "snakemake.out"
) -> subprocess.Popen:
    """Start Snakemake in `workdir` (sbatch writes there) under `timeout -s INT`; output to a log file."""
    log = (workdir / log_name).open("w")
    command = ["timeout", "-s", "INT", "-k", "60", str(timeout_s), str(BIN / "snakemake"), *args]
    return subprocess.Popen(
        command, cwd=workdir, env=snakemake_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )


def wait_snakemake(process: subprocess.Popen, workdir: Path, log_name: str = "snakemake.out") -> SnakemakeRun:
    """Wait for a launched Snakemake and collect its output and SLURM run ID."""
    returncode = process.wait()
    output = (workdir / log_name).read_text()
    match = re.search(r"SLURM run ID: (\S+)", output)
    return SnakemakeRun(returncode=returncode, output=output, run_id=match.group(1) if match else None)


def run_snakemake(
    workdir: Path, args: list[str], timeout_s: int = 600, log_name: str = "snakemake.out"
) -> SnakemakeRun:
    """Run Snakemake to the end in `workdir` and return what happened."""
    return wait_snakemake(launch_snakemake(workdir, args, timeout_s, log_name), workdir, log_name)


def _query_sacct(run_id: str) -> list[SlurmJob]:
    command = [
        "sacct", "-X", "-n", "-P", "--name", run_id, "--starttime", "now-2days",
        "--format", "JobIDRaw,Comment,State,ExitCode,AllocTRES",
    ]  # fmt: skip
    listing = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    jobs = [SlurmJob(*line.split("|")) for line in listing.splitlines() if line]
    return sorted(jobs, key=lambda job: int(job.job_id))


def sacct_jobs(run_id: str, settle_s: float = 15.0) -> list[SlurmJob]:
    """All jobs of one Snakemake run (job name = run ID), once accounting shows none still active."""
    deadline = time.monotonic() + settle_s
    jobs = _query_sacct(run_id)
    while any(job.state.split()[0] in ACTIVE_STATES for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.5)
        jobs = _query_sacct(run_id)
    return jobs
