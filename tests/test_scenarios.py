"""The test scenarios of config/test/: one folder per scenario, each dry-run with its own command.

Each folder holds a ``config.yaml`` (an overlay over config/config.yaml, or a user's config alone)
and the small tables it names. Its header is one paragraph, ``# Scenario <folder>: ...``, on what
the scenario exercises, then ``# Run: snakemake -n ...``, the exact command that runs it. Here that
command runs as written (plus ``--forceall``, so results left in the repository do not matter) and
the plan must hold the jobs the scenario is about. A new folder needs its entry in EXPECTED.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

import pytest
from test_workflow import REPO, SNAKEMAKE, job_counts, run

SCENARIOS = REPO / "config" / "test"
FOLDERS = sorted(path.name for path in SCENARIOS.iterdir() if path.is_dir())
RUN_PREFIX = "# Run: snakemake "
FOLD_RULES = ("train_fold", "evaluate_fold", "interpret_fold")


def command(name: str) -> list[str]:
    """The ``# Run: snakemake ...`` line of the scenario's header, as arguments (this venv's snakemake)."""
    header = (SCENARIOS / name / "config.yaml").read_text().splitlines()
    assert header[0].startswith(f"# Scenario {name}: "), f"config/test/{name}/config.yaml: first line {header[0]!r}"
    runs = [line for line in header if line.startswith(RUN_PREFIX)]
    assert len(runs) == 1, f"config/test/{name}/config.yaml: one '{RUN_PREFIX}...' line, found {runs}"
    args = shlex.split(runs[0].removeprefix(RUN_PREFIX))
    assert args[0] == "-n" and f"config/test/{name}/config.yaml" in args, runs[0]
    return [SNAKEMAKE, *args]


@pytest.fixture(scope="module")
def demo_plan() -> dict[str, int]:
    """Rule -> job count of the demo's own plan (no --configfile)."""
    result = run([SNAKEMAKE, "-n", "--forceall", "--quiet", "rules"], REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return job_counts(result.stdout)


def byo_features(jobs: dict[str, int], output: str, demo: dict[str, int]) -> None:
    assert jobs["import_features"] == 1
    assert jobs["tile_slide"] == demo["tile_slide"] - 1 and jobs["demo_slide"] == demo["demo_slide"] - 1
    assert "tiles/demo-TCGA-2F-A9KP.h5" not in output  # the slide with features is not tiled
    assert "config/test/byo_features/clam_features/h5_files/demo-TCGA-2F-A9KP.h5" in output  # ...but imported


def predict(jobs: dict[str, int], output: str, demo: dict[str, int]) -> None:
    assert jobs["predict_tile_slide"] == jobs["predict_extract_features"] == jobs["predict_risks"] == 1
    assert "results/demo_blca/predict/tiles/CMU-1-Small-Region.h5" in output
    # models_from null: the demo's folds of predict.model (ghanet) are trained first, not the other models'
    assert jobs["train_fold"] == 5 and "models/abmil/" not in output
    assert "report_cindex" not in jobs  # the predict target, not the report


def baselines(jobs: dict[str, int], output: str, demo: dict[str, int]) -> None:
    # the demo's four models plus coxnet, trained on CPUs by train_fold_cpu (no GPU request)
    assert jobs["train_fold"] == demo["train_fold"] == 20 and jobs["train_fold_cpu"] == 5
    assert jobs["evaluate_fold"] == jobs["interpret_fold"] == 25
    for model in ("ghanet", "abmil", "snn", "abmil_snn", "coxnet"):
        assert f"model={model}," in output, model


def paper_table(jobs: dict[str, int], output: str, demo: dict[str, int]) -> None:
    assert jobs["paper_table"] == 1 and "all" not in jobs  # the paper_table target alone
    assert "config/test/paper_table/tcga_ucec/cindex.csv" in output  # an input of the paper_table job


def minimal(jobs: dict[str, int], output: str, demo: dict[str, int]) -> None:
    assert "demo_slide" not in jobs and jobs["tile_slide"] == 3  # the 3 files of data/slides, no demo slide
    assert all(jobs[rule] == 3 for rule in FOLD_RULES)  # splits.k: 3
    assert "results/mine/" in output and "results/demo_blca/" not in output  # the user's cohort only


def run_settings(jobs: dict[str, int], output: str, demo: dict[str, int]) -> None:
    assert jobs == demo  # how the jobs run, not which jobs


def two_cohorts(jobs: dict[str, int], output: str, demo: dict[str, int]) -> None:
    # the demo cohort as the demo plans it, with two models; the genomic-only cohort builds its table
    # without slides and trains only the SNN
    assert jobs["tile_slide"] == demo["tile_slide"] and jobs["build_cohort"] == 1 and jobs["build_genomic_cohort"] == 1
    assert all(jobs[rule] == 15 for rule in FOLD_RULES), jobs  # demo: ghanet + snn, ucec: snn (5 folds each)
    assert "results/tcga_ucec/models/snn/fold_4/model.pt" in output and "results/tcga_ucec/models/ghanet" not in output
    assert "--genomic-only --out-dir results/tcga_ucec/cohort" in output
    assert jobs["report_cindex"] == 2 and jobs["report_comparison"] == 2 and jobs["report_comparison_all"] == 1
    assert "--out-dir results/report" in output and jobs["paper_table"] == 1  # the run's table over both
    assert jobs["report_failed_slides"] == jobs["report_qc_sheet"] == 1  # no slides products without slides


def two_encoders(jobs: dict[str, int], output: str, demo: dict[str, int]) -> None:
    # tiles once; each encoder's extraction chunks; the second one's cohort table and G-HANet folds
    assert jobs["tile_slide"] == demo["tile_slide"] and jobs["extract_features"] == 2 * demo["extract_features"]
    assert jobs["build_cohort"] == jobs["build_encoder_cohort"] == jobs["pack_encoder_features"] == 1
    assert all(jobs[rule] == demo[rule] + 5 for rule in FOLD_RULES), jobs  # + ghanet@lite0_copy x 5 folds
    assert "results/demo_blca/models/ghanet@lite0_copy/fold_4/model.pt" in output
    assert "--cohort-dir results/demo_blca/cohort@lite0_copy" in output and "make_splits" in jobs
    assert "results/demo_blca/features/lite0_copy/chunks/chunk0000.txt" in output


EXPECTED: dict[str, Callable[[dict[str, int], str, dict[str, int]], None]] = {
    check.__name__: check for check in (byo_features, predict, baselines, paper_table, minimal, run_settings, two_cohorts, two_encoders)
}


def test_every_scenario_folder_has_its_expected_plan():
    assert FOLDERS == sorted(EXPECTED), "config/test/ folders and EXPECTED differ"


@pytest.mark.parametrize("name", FOLDERS)
def test_a_scenario_dry_runs_with_its_command_and_plans_its_jobs(name, demo_plan):
    result = run([*command(name), "--forceall"], REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    jobs = job_counts(result.stdout)
    jobs.pop("total", None)
    assert jobs, result.stdout[-3000:]
    EXPECTED[name](jobs, output, {rule: count for rule, count in demo_plan.items() if rule != "total"})
