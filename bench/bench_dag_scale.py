"""Benchmark: dry run (`snakemake -n`) of a 10,000-slide cohort through the SLURM profiles.

Builds synthetic slides under ``--out`` (rebuilt each run): MCAT-style clinical tables of 5,000
patients with 2 slides each and a few gene columns from ``data/tcga/signatures.csv``, one empty
placeholder file per slide (a dry run never opens them), and configs with 5 folds and 3 models
(ghanet, abmil, snn), in two layouts of the same slides and patients:

* ``single``: one cohort of 10,000 slides, written with the single-cohort keys (``cohort``,
  ``clinical``, ``slides``);
* ``five``: the same patients split into 5 cohorts of 1,000 patients / 2,000 slides, each with its
  own clinical table and slide folder, written with the ``cohorts:`` form (the DAG then holds 5x
  the per-cohort jobs: splits, training, evaluation, reports, plus the paper table over all).

``--layout both`` (default) measures the two layouts on the current checkout, so their ratio is the
cost of the cohort dimension itself on the same code. For each layout, pinned to one CPU, it times
``snakemake -n --profile slurm`` (the site profile written by ``ghanet-wf slurm-profile`` into a
scratch XDG_CONFIG_HOME, the workflow profile profiles/default with its grouping), again with a copy
of the workflow profile whose ``groups``/``group-components`` are removed, and prints the seconds
and the number of SLURM jobs each would submit. A third, ``--quiet`` dry run (grouping on) times the
DAG alone, without printing the 10,000+ job descriptions. With ``--baseline REV`` the ``-n`` and
``-n --quiet`` dry runs are timed on a git worktree of an earlier commit (its own profiles) in the
same run, always on the single layout (older commits know only the single-cohort keys), and the
ratios printed against each layout measured. Wall seconds depend on what else runs on the machine;
CPU seconds (user + sys of the dry run) are the fair "one core" figure.

Counting: the dry run prints each job it would hand to the executor. A group job is printed once
as ``Group job <name> ...`` with its member rules indented under it; every other job is printed as
an unindented ``rule <name>:`` block. Submitted jobs = group jobs + unindented rule blocks, minus
the target rule ``all`` (it has no command and never leaves the submit host).

Not a test: ``python bench/bench_dag_scale.py [--slides 10000 --patients 5000]
[--layout single|five|both] [--baseline 8616000] [--out /tmp/dag_scale]``.
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
N_COHORTS = 5  # the "five" layout
LAYOUTS = ("single", "five")
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


def base_config(root: Path = ROOT) -> dict:
    """``root``'s demo config without its cohort keys, with the benchmark's folds and models."""
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    for key in ("cohort", "clinical", "slides", "filters"):
        config.pop(key, None)
    config["signatures"] = str(SIGNATURES)
    config["splits"]["k"] = FOLDS
    config["training"]["models"] = MODELS
    return config


def place_slides(table: pd.DataFrame, slides: Path) -> None:
    """One empty placeholder file per slide of ``table`` under ``slides``."""
    slides.mkdir(parents=True, exist_ok=True)
    for slide_id in table["slide_id"]:
        (slides / slide_id).touch()


def write_single(out: Path, table: pd.DataFrame) -> None:
    """The whole table as one cohort under ``out``: its clinical csv and slide folder."""
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "clinical.csv", index=False)
    place_slides(table, out / "slides")


def single_config(out: Path, n_slides: int, root: Path = ROOT, name: str = "cohort.yaml") -> Path:
    """Config of the cohort :func:`write_single` wrote, single-cohort keys over ``root``'s demo config
    (an older commit's schema may not know the current config's keys); returns its path."""
    config = {
        "cohort": f"synthetic_{n_slides}",
        "clinical": str(out / "clinical.csv"),
        "slides": {"dir": str(out / "slides"), "table": None},
        "filters": {},
        **base_config(root),
    }
    path = out / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_five(out: Path, table: pd.DataFrame, n_cohorts: int = N_COHORTS) -> Path:
    """The table's patients split into ``n_cohorts`` equal cohorts (``cohorts:`` form), each with
    its own clinical table and slide folder under ``out/<name>/``; returns the config's path."""
    patients = pd.unique(table["case_id"])
    cohorts = {}
    for index, chunk in enumerate(np.array_split(patients, n_cohorts)):
        name = f"synthetic_{index + 1}"
        part = table[table["case_id"].isin(set(chunk))]
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        part.to_csv(folder / "clinical.csv", index=False)
        place_slides(part, folder / "slides")
        cohorts[name] = {"clinical": str(folder / "clinical.csv"), "slides": {"dir": str(folder / "slides"), "table": None}}
    config = {"cohorts": cohorts, **base_config()}
    path = out / "cohorts.yaml"
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


@dataclass(frozen=True)
class Layout:
    """The three dry runs of one layout on the current checkout."""

    name: str
    description: str
    grouped: DryRun
    ungrouped: DryRun
    quiet: DryRun


def measure(name: str, workdir: Path, config: Path, site: dict, description: str) -> Layout:
    """Grouped, ungrouped and quiet dry runs of one layout's config on the current checkout."""
    common = ["--profile", "slurm", "--configfile", str(config)]
    grouped = dry_run(workdir, common, env=site)
    ungrouped = dry_run(workdir, [*common, "--workflow-profile", str(ungrouped_profile(workdir))], env=site)
    quiet = dry_run(workdir, [*common, "--quiet"], env=site)
    return Layout(name, description, grouped, ungrouped, quiet)


def print_layout(layout: Layout) -> None:
    """Seconds and SLURM job counts of one layout, grouped vs ungrouped."""
    grouped, ungrouped, quiet = layout.grouped, layout.ungrouped, layout.quiet
    print(f"\nlayout {layout.name}: {layout.description}, {FOLDS} folds x {len(MODELS)} models")
    print("jobs per rule:", ", ".join(f"{rule} {n}" for rule, n in sorted(grouped.jobs_per_rule.items())))
    print(f"{'dry run (one CPU)':<40}{'wall [s]':>10}{'CPU [s]':>10}{'SLURM jobs':>12}{'group jobs':>12}")
    rows = (
        ("-n, profile slurm (grouping on)", grouped, grouped.submitted, grouped.group_jobs),
        ("-n, grouping off", ungrouped, ungrouped.submitted, ungrouped.group_jobs),
        ("-n --quiet, grouping on (DAG only)", quiet, "", ""),
    )
    for name, run, submitted, group_jobs in rows:
        print(f"{name:<40}{run.seconds:>10.1f}{run.cpu_seconds:>10.1f}{submitted:>12}{group_jobs:>12}")
    print(f"grouping submits {ungrouped.submitted / grouped.submitted:.1f}x fewer SLURM jobs "
          f"({ungrouped.submitted} -> {grouped.submitted}); target: dry run < 25 s CPU on one CPU")  # fmt: skip


def print_ratios(layouts: dict[str, Layout], old: DryRun | None, old_quiet: DryRun | None, baseline: str | None) -> None:
    """CPU ratios: five cohorts vs one on the current code, and each layout vs the baseline."""
    print()
    if len(layouts) == 2:
        single, five = layouts["single"], layouts["five"]
        print(f"cohort dimension (same code): five cohorts take {five.grouped.cpu_seconds / single.grouped.cpu_seconds:.2f}x "
              f"the CPU of one with -n ({five.grouped.cpu_seconds:.1f} vs {single.grouped.cpu_seconds:.1f} s), "
              f"{five.quiet.cpu_seconds / single.quiet.cpu_seconds:.2f}x with --quiet "
              f"({five.quiet.cpu_seconds:.1f} vs {single.quiet.cpu_seconds:.1f} s); "
              f"SLURM jobs {five.grouped.submitted} vs {single.grouped.submitted}, "
              f"Snakemake jobs {sum(five.grouped.jobs_per_rule.values())} vs {sum(single.grouped.jobs_per_rule.values())}")  # fmt: skip
    if old is None:
        return
    print(f"{'-n at ' + baseline + ' (single)':<40}{old.seconds:>10.1f}{old.cpu_seconds:>10.1f}{old.submitted:>12}{old.group_jobs:>12}")
    print(f"{'-n --quiet at ' + baseline + ' (single)':<40}{old_quiet.seconds:>10.1f}{old_quiet.cpu_seconds:>10.1f}")
    print(f"jobs per rule at {baseline}:", ", ".join(f"{rule} {n}" for rule, n in sorted(old.jobs_per_rule.items())))
    for name, layout in layouts.items():
        print(f"{name} layout now vs single at {baseline}: {layout.grouped.cpu_seconds / old.cpu_seconds:.2f}x the CPU with -n "
              f"({layout.grouped.cpu_seconds:.1f} vs {old.cpu_seconds:.1f} s), "
              f"{layout.quiet.cpu_seconds / old_quiet.cpu_seconds:.2f}x with --quiet "
              f"({layout.quiet.cpu_seconds:.1f} vs {old_quiet.cpu_seconds:.1f} s); "
              f"SLURM jobs {layout.grouped.submitted} vs {old.submitted}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", type=int, default=10_000, help="slides in all (spread evenly over the patients)")
    parser.add_argument("--patients", type=int, default=5_000, help="patients in all")
    parser.add_argument("--layout", choices=[*LAYOUTS, "both"], default="both",
                        help=f"current checkout: one cohort, {N_COHORTS} cohorts (cohorts: form), or both (default)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT, help="scratch folder (rebuilt each run)")
    parser.add_argument("--baseline", metavar="REV", help="also time the dry runs of this earlier commit (single layout)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    table = clinical_table(args.patients, args.slides)
    site = {"XDG_CONFIG_HOME": str(install_site_profile(args.out))}
    wanted = LAYOUTS if args.layout == "both" else (args.layout,)
    per_cohort = f"{args.patients // N_COHORTS} patients / {args.slides // N_COHORTS} slides"
    layouts = {}
    if "single" in wanted or args.baseline:
        write_single(args.out / "single", table)
    if "single" in wanted:
        description = f"1 cohort, {args.slides} slides / {args.patients} patients (single-cohort keys)"
        config = single_config(args.out / "single", args.slides)
        layouts["single"] = measure("single", args.out / "single", config, site, description)
        print_layout(layouts["single"])
    if "five" in wanted:
        config = write_five(args.out / "five", table)
        description = f"{N_COHORTS} cohorts of {per_cohort} each ({args.slides} slides in all, cohorts: form)"
        layouts["five"] = measure("five", args.out / "five", config, site, description)
        print_layout(layouts["five"])
    old = old_quiet = None
    if args.baseline:
        tree = baseline_worktree(args.out, args.baseline)
        workdir = args.out / "single"
        (workdir / "config").mkdir(exist_ok=True)  # older Snakefiles read config/config.yaml first
        shutil.copy(tree / "config" / "config.yaml", workdir / "config" / "config.yaml")
        config = single_config(workdir, args.slides, root=tree, name=f"cohort-{args.baseline}.yaml")
        then = ["--profile", str(tree / "profiles" / "slurm"), "--configfile", str(config)]
        env = {"PYTHONPATH": str(tree / "src")}
        old = dry_run(workdir, then, snakefile=tree / "Snakefile", env=env)
        old_quiet = dry_run(workdir, [*then, "--quiet"], snakefile=tree / "Snakefile", env=env)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    print_ratios(layouts, old, old_quiet, args.baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
