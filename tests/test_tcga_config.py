"""config/tcga_genomic.yaml: the real TCGA-BLCA and TCGA-UCEC tables run by the workflow agree with
bench/bench_genomic_baselines.py fold by fold (same preprocessing, same published folds).

The workflow runs in a clean copy of the repository, two genomic-only cohorts in one run. The Cox
elastic net is compared on all ten folds; the SNN (gradient-trained, minutes per fold at the
config's 20 epochs) on every fold at 2 epochs, the same for both sides.
"""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
from e2e_fixtures import REPO, SNAKEMAKE, copy_repo, run

pytestmark = pytest.mark.slow

sys.path.insert(0, str(REPO / "bench"))
import bench_genomic_baselines as bench  # noqa: E402

from ghanet_workflow import splits, train  # noqa: E402

COHORTS = ("blca", "ucec")
EPOCHS = 2  # the SNN on both sides (the config's 20 give the README table)


@pytest.fixture(scope="module")
def tcga_run(tmp_path_factory):
    work = copy_repo(tmp_path_factory.mktemp("tcga") / "wf")
    (work / "short.yaml").write_text(f"training:\n  epochs: {EPOCHS}\n")
    result = run([SNAKEMAKE, "--cores", "2", "--configfile", "config/tcga_genomic.yaml", "short.yaml"], work, timeout=1800)
    assert result.returncode == 0, result.stderr[-5000:]
    return work


def workflow_cindex(work, cohort: str, model: str) -> list[float]:
    folder = work / "results" / f"tcga_{cohort}" / "models" / model
    return [json.loads((folder / f"fold_{k}" / "metrics.json").read_text())["cindex"] for k in range(5)]


@pytest.mark.parametrize("cohort", COHORTS)
def test_the_workflow_and_the_bench_give_the_same_folds(tcga_run, cohort):
    patients, genomics, groups = bench.load_cohort(cohort)
    folds = splits.make_splits(patients, k=5, published_dir=REPO / "data" / "tcga" / "splits" / f"tcga_{cohort}")
    cox = [bench.run_cox_fold(patients, genomics, groups, frame, bootstrap=0)[0]["cindex"] for frame in folds]
    assert workflow_cindex(tcga_run, cohort, "coxnet") == pytest.approx(cox, abs=1e-12)
    training = train.resolve_options({"epochs": EPOCHS})  # the workflow's training defaults, 2 epochs
    snn = [bench.run_snn_fold(patients, genomics, groups, frame, 0, training)[0]["cindex"] for frame in folds]
    assert workflow_cindex(tcga_run, cohort, "snn") == pytest.approx(snn, abs=1e-9)


def test_the_paper_table_has_both_cohorts_and_both_models(tcga_run):
    table = pd.read_csv(tcga_run / "results" / "report" / "paper_table.csv")
    assert {"tcga_blca", "tcga_ucec"} <= set(table["cohort"]) and {"coxnet", "snn"} <= set(table["model"])
    comparison = pd.read_csv(tcga_run / "results" / "report" / "comparison.csv")
    assert set(comparison["cohort"]) == {"tcga_blca", "tcga_ucec", "Overall"}
    assert (comparison["reference"] == "coxnet").all() and set(comparison["model"]) == {"snn"}
    # no slide product for a cohort without slides
    assert not (tcga_run / "results" / "tcga_blca" / "report" / "failed_slides.md").exists()
