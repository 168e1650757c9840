"""`ghanet-wf slurm-profile`: the site profile that makes `snakemake --profile slurm` work from the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from ghanet_workflow.slurm_profile import GPU_RULES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def install(config_home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "XDG_CONFIG_HOME": str(config_home), "HOME": str(config_home)}
    return subprocess.run(
        [str(BIN / "ghanet-wf"), "slurm-profile", *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def test_writes_the_site_profile_where_snakemake_looks_for_slurm(tmp_path):
    done = install(tmp_path, "--account", "lab_7", "--partition", "batch", "--jobs", "40")
    assert done.returncode == 0, done.stderr
    profile = yaml.safe_load((tmp_path / "snakemake" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["jobs"] == 40
    assert profile["default-resources"] == {"slurm_account": "lab_7", "slurm_partition": "batch"}
    assert "set-resources" not in profile and "retries" not in profile  # the workflow profile's, not the site's

    def dry_run(config_home: Path) -> subprocess.CompletedProcess:
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "XDG_CONFIG_HOME": str(config_home), "HF_HUB_OFFLINE": "1"}
        command = [str(BIN / "snakemake"), "--profile", "slurm", "-n", "--quiet", "rules"]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)

    dry = dry_run(tmp_path)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in dry.stderr
    assert "train_fold" in dry.stdout
    without = dry_run(tmp_path / "empty")  # the same command before the install step
    assert without.returncode != 0 and "slurm" in without.stderr


def test_gpu_partition_and_qos_reach_only_what_they_are_for(tmp_path):
    done = install(tmp_path, "--account", "lab", "--partition", "cpu", "--gpu-partition", "gpu", "--qos", "long")
    assert done.returncode == 0, done.stderr
    profile = yaml.safe_load((tmp_path / "snakemake" / "slurm" / "config.yaml").read_text())
    assert profile["default-resources"]["slurm_extra"] == "'--qos=long'"
    assert profile["set-resources"] == {rule: {"slurm_partition": "gpu"} for rule in GPU_RULES}


def test_gpu_rules_are_the_rules_that_ask_for_a_gpu():
    asking = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=(?:use )?rule )", smk.read_text()):
            name = re.match(r"(?:use rule \w+ as |rule )(\w+)", block)
            inherits_gpu = block.startswith("use rule extract_features")
            if name and ("gpu=1" in block or inherits_gpu):
                asking.add(name.group(1))
    assert asking == set(GPU_RULES)


def test_an_existing_profile_is_kept_and_bad_names_are_refused(tmp_path):
    assert install(tmp_path, "--account", "a", "--partition", "p").returncode == 0
    again = install(tmp_path, "--account", "b", "--partition", "p")
    assert again.returncode == 2 and "exists already; pass --force" in again.stderr
    assert "slurm_account: a" in (tmp_path / "snakemake" / "slurm" / "config.yaml").read_text()
    assert install(tmp_path, "--account", "b", "--partition", "p", "--force").returncode == 0
    bad = install(tmp_path / "other", "--account", "lab; rm -rf /", "--partition", "p")
    assert bad.returncode == 2 and "--account 'lab; rm -rf /' is not a SLURM name" in bad.stderr
    assert "Traceback" not in bad.stderr
    zero = install(tmp_path / "fourth", "--account", "a", "--partition", "p", "--jobs", "0")
    assert zero.returncode == 2 and "--jobs 0: give at least 1" in zero.stderr
    missing = install(tmp_path / "third")
    assert missing.returncode == 2 and "give --account and --partition" in missing.stderr
