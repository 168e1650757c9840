"""Benchmark: dry run (`snakemake -n`) of a 10,000-slide cohort through the SLURM profiles.

Builds a synthetic cohort under ``bench/out/dag_scale/`` (rebuilt each run): an MCAT-style
clinical table of 5,000 patients with 2 slides each and a few gene columns from
``data/tcga/signatures.csv``, one empty placeholder file per slide (a dry run never opens them),
and a config with 5 folds and 3 models (ghanet, abmil, snn). Then, pinned to one CPU, it
times ``snakemake -n --profile slurm`` (the site profile written by ``ghanet-wf slurm-profile``
into a scratch XDG_CONFIG_HOME, the workflow profile profiles/default with its grouping), again
with a copy of the workflow profile whose ``groups``/``group-components`` are removed, and prints
the seconds and the number of SLURM jobs each would submit. A third, ``--quiet`` dry run (grouping
on) times the DAG alone, without printing the 10,000+ job descriptions. With ``--baseline REV``
the same quiet dry run is timed on a git worktree of an earlier commit (its own profiles) in the
same run, and the ratio printed. Wall seconds depend on what else runs on the machine; CPU seconds
(user + sys of the dry run) are the fair "one core" figure.

Counting: the dry run prints each job it would hand to the executor. A group job is printed once
as ``Group job <name> ...`` with its member rules indented under it; every other job is printed as
an unindented ``rule <name>:`` block. Submitted jobs = group jobs + unindented rule blocks, minus
the target rule ``all`` (it has no command and never leaves the submit host).

Not a test: ``python bench/bench_dag_scale.py [--slides 10000 --patients 5000] [--baseline 12bf727]``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "dag_scale"
WORKFLOW_PROFILE = ROOT / "profiles" / "default"
SIGNATURES = ROOT / "data" / "tcga" / "signatures.csv"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
MODELS = ["ghanet", "abmil", "snn"]
FOLDS = 5
GENES_PER_GROUP = 3
LOCAL_RULES = {"all"}  # rules the dry run lists but the submit host runs itself


@dataclass(frozen=True)
class DryRun:
    """One timed dry run and what it would submit."""

    seconds: float  # wall clock
    cpu_seconds: float  # user + sys of the dry run process
    submitted: int  # SLURM jobs: group jobs count once
    group_jobs: int
    jobs_per_rule: Counter  # Snakemake jobs per rule (members of group jobs included)


def signature_genes(per_group: int) -> list[str]:
    """The first ``per_group`` gene symbols of each signature group, without repeats."""
    signatures = pd.read_csv(SIGNATURES)
    genes = [gene for column in signatures for gene in signatures[column].dropna().head(per_group)]
    return list(dict.fromkeys(genes))


def clinical_table(n_patients: int, n_slides: int, seed: int = 0) -> pd.DataFrame:
    """MCAT-style table, one row per slide: case_id, slide_id, survival, censorship, gene columns."""
    rng = np.random.default_rng(seed)
    patient = np.arange(n_slides) % n_patients
    cases = [f"SYN-{p:05d}" for p in range(n_patients)]
    months = rng.exponential(30.0, n_patients).round(2) + 0.1
    censored = rng.random(n_patients) < 0.6
    table = pd.DataFrame(
        {
            "case_id": [cases[p] for p in patient],
            "slide_id": [f"SYN-{p:05d}-{i:05d}.svs" for i, p in enumerate(patient)],
            "survival_months": months[patient],
            "censorship": censored[patient].astype(int),
        }
    )
    for gene in signature_genes(GENES_PER_GROUP):
        table[f"{gene}_rnaseq"] = rng.normal(size=n_patients).round(4)[patient]
    return table


def write_cohort(out: Path, n_patients: int, n_slides: int) -> Path:
    """Clinical csv + placeholder slides + config under ``out``; returns the config's path."""
    slides = out / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    table = clinical_table(n_patients, n_slides)
    table.to_csv(out / "clinical.csv", index=False)
    for slide_id in table["slide_id"]:
        (slides / slide_id).touch()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        cohort=f"synthetic_{n_slides}",
        clinical=str(out / "clinical.csv"),
        signatures=str(SIGNATURES),
        slides={"dir": str(slides), "table": None},
    )
    config["splits"]["k"] = FOLDS
    config["training"]["models"] = MODELS
    path = out / "cohort.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def install_site_profile(out: Path) -> Path:
    """XDG_CONFIG_HOME holding the site profile `slurm`, as `ghanet-wf slurm-profile` writes it."""
    sys.path.insert(0, str(ROOT / "src"))
    from ghanet_workflow.slurm_profile import profile_text

    home = out / "xdg"
    (home / "snakemake" / "slurm").mkdir(parents=True, exist_ok=True)
    (home / "snakemake" / "slurm" / "config.yaml").write_text(profile_text("bench", "batch"))
    return home


def ungrouped_profile(out: Path) -> Path:
    """A copy of the workflow profile without job grouping."""
    profile = yaml.safe_load((WORKFLOW_PROFILE / "config.yaml").read_text())
    profile.pop("groups", None)
    profile.pop("group-components", None)
    folder = out / "profile-ungrouped"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def baseline_worktree(out: Path, rev: str) -> Path:
    """A git worktree of ``rev`` under ``out`` (removed and made again each run)."""
    tree = out / f"baseline-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True, capture_output=True)
    return tree


def pin_to_one_cpu() -> None:
    """preexec_fn: run the dry run on a single CPU."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def count_jobs(output: str) -> tuple[int, int, Counter]:
    """(submitted jobs, group jobs, jobs per rule) from a dry run's printed job list."""
    group_jobs = len(re.findall(r"^\[[^\]]+\] Group job ", output, flags=re.MULTILINE))
    top_level = Counter(re.findall(r"^rule (\S+):$", output, flags=re.MULTILINE))
    all_rules = Counter(re.findall(r"^\s*rule (\S+):$", output, flags=re.MULTILINE))
    submitted = group_jobs + sum(n for rule, n in top_level.items() if rule not in LOCAL_RULES)
    return submitted, group_jobs, all_rules


def children_cpu_seconds() -> float:
    """CPU seconds (user + sys) used so far by finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dry_run(workdir: Path, args: list[str], snakefile: Path = ROOT / "Snakefile", env: dict | None = None) -> DryRun:
    """Time ``snakemake -n ARGS`` on one CPU and count what it would submit."""
    command = [str(SNAKEMAKE), "-n", "--snakefile", str(snakefile), "--directory", str(workdir), *args]
    cpu_before, started = children_cpu_seconds(), time.perf_counter()
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, preexec_fn=pin_to_one_cpu, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    seconds, cpu_seconds = time.perf_counter() - started, children_cpu_seconds() - cpu_before
    if result.returncode != 0:
        raise SystemExit(f"dry run failed (exit {result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    submitted, group_jobs, per_rule = count_jobs(result.stdout + result.stderr)
    return DryRun(seconds, cpu_seconds, submitted, group_jobs, per_rule)


def print_comparison(grouped: DryRun, ungrouped: DryRun, quiet: DryRun, n_slides: int, n_patients: int) -> None:
    """Seconds and SLURM job counts, grouped vs ungrouped."""
    print(f"cohort: {n_slides} slides / {n_patients} patients, {FOLDS} folds x {len(MODELS)} models")
    print("jobs per rule:", ", ".join(f"{rule} {n}" for rule, n in sorted(grouped.jobs_per_rule.items())))
    print(f"{'dry run (one CPU)':<36}{'wall [s]':>10}{'CPU [s]':>10}{'SLURM jobs':>12}{'group jobs':>12}")
    rows = (
        ("-n, profile slurm (grouping on)", grouped, grouped.submitted, grouped.group_jobs),
        ("-n, grouping off", ungrouped, ungrouped.submitted, ungrouped.group_jobs),
        ("-n --quiet, grouping on (DAG only)", quiet, "", ""),
    )
    for name, run, submitted, group_jobs in rows:
        print(f"{name:<36}{run.seconds:>10.1f}{run.cpu_seconds:>10.1f}{submitted:>12}{group_jobs:>12}")
    print(f"grouping submits {ungrouped.submitted / grouped.submitted:.1f}x fewer SLURM jobs "
          f"({ungrouped.submitted} -> {grouped.submitted}); target: dry run < 25 s CPU on one CPU")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", type=int, default=10_000, help="slides in the synthetic cohort")
    parser.add_argument("--patients", type=int, default=5_000, help="patients (slides are spread evenly)")
    parser.add_argument("--out", type=Path, default=OUT, help="scratch folder (rebuilt each run)")
    parser.add_argument("--baseline", metavar="REV", help="also time the quiet dry run of this earlier commit")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    config = write_cohort(args.out, args.patients, args.slides)
    site = {"XDG_CONFIG_HOME": str(install_site_profile(args.out))}
    common = ["--profile", "slurm", "--configfile", str(config)]
    grouped = dry_run(args.out, common, env=site)
    ungrouped = dry_run(args.out, [*common, "--workflow-profile", str(ungrouped_profile(args.out))], env=site)
    quiet = dry_run(args.out, [*common, "--quiet"], env=site)
    print_comparison(grouped, ungrouped, quiet, args.slides, args.patients)
    if args.baseline:
        tree = baseline_worktree(args.out, args.baseline)
        (args.out / "config").mkdir(exist_ok=True)  # older Snakefiles read config/config.yaml first
        shutil.copy(tree / "config" / "config.yaml", args.out / "config" / "config.yaml")
        then = ["--profile", str(tree / "profiles" / "slurm"), "--configfile", str(config)]
        env = {"PYTHONPATH": str(tree / "src")}
        old = dry_run(args.out, then, snakefile=tree / "Snakefile", env=env)
        old_quiet = dry_run(args.out, [*then, "--quiet"], snakefile=tree / "Snakefile", env=env)
        print(f"{'-n at ' + args.baseline:<36}{old.seconds:>10.1f}{old.cpu_seconds:>10.1f}{old.submitted:>12}")
        print(f"{'-n --quiet at ' + args.baseline:<36}{old_quiet.seconds:>10.1f}{old_quiet.cpu_seconds:>10.1f}")
        print(f"dry run: {old.cpu_seconds / grouped.cpu_seconds:.2f}x less CPU than {args.baseline}, "
              f"quiet: {old_quiet.cpu_seconds / quiet.cpu_seconds:.2f}x")  # fmt: skip
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
