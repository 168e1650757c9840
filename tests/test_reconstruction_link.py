"""The demo's planted gene-morphology link is what G-HANet's reconstruction recovers, and nothing else.

Slow (about 8 minutes on 2 CPU cores, half of it for the demo build without the link and its
training; the build with it is shared with test_learning). The demo slides plant a second link
next to the survival one (ghanet_workflow.demo): the share of cell-dense crops follows a score of
one signature group's real RNA columns (``demo.genomic_group``, Tumor Suppressor Genes by default;
independent of the risk). G-HANet is trained on the 5 folds of the demo cohort (tests/demo_features.py) once with
the link and once on slides generated with ``genomic_strength: 0``, and the reconstruction report
(ghanet_workflow.report.reconstruction) scores each group by its group-score r: the Pearson r over
the test patients between the reconstructed and the true mean of the group's scaled genes, mean
over folds.

Gene selection is switched off (``genomics.select_genes: false``): the workflow's selection keeps
per group only the genes that separate short from long survival in the training fold, so the
reconstruction heads would see only survival-linked genes, not the planted group score (which is
independent of survival by construction). The training is longer than test_learning's (20 epochs,
one patient per optimizer step): in 20 optimizer steps the reconstruction heads learn next to nothing.

Real RNA groups co-vary (the demo's Tumor Suppressor score correlates 0.4-0.6 with the Oncogenes,
Protein Kinases and Transcription Factors scores), so those groups follow the planted one partly;
the margin asserted below is below the one measured (see MARGIN).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from demo_features import DemoRun, build_demo_features, run_folds
from ghanet_workflow.demo import DEFAULTS
from ghanet_workflow.report.reconstruction import write_reconstruction_report

pytestmark = pytest.mark.slow

OPTIONS = {
    "training": {"epochs": 20, "grad_accum": 1, "lr": 5e-4, "hidden_dim": 128, "device": "cpu", "seed": 1},
    "genomics": {"select_genes": False},
    "evaluation": {"bootstrap": 10},
}
PLANTED = DEFAULTS["genomic_group"]
#: the planted group's group-score r is at least this much above every other group's. Measured
#: (seeded, 2026-12-01, CPU) on two machines with the same lock file: Tumor Suppressor Genes
#: 0.751 ± 0.063 over the 5 folds against Oncogenes 0.419 (a margin of 0.33), and 0.680 ± 0.156
#: against Oncogenes 0.560 (0.12): the CPUs' float rounding changes the 20-epoch trajectories, and
#: with 8 test patients per fold a group's r varies by 0.15-0.2 between folds, so only the order
#: is asserted with a small margin. The link's size shows in the planted group's r: > 0.5 with the
#: link, -0.15 and 0.03 without it on the same two machines (every group in [-0.21, 0.08]).
MARGIN = 0.05
#: without the link no group's r reaches this, nor stands this far above the median of the others
NO_STANDOUT = 0.3


def group_scores(run: DemoRun, out: Path) -> dict[str, float]:
    """Mean group-score r over the folds per signature group, from the reconstruction report."""
    jobs = [(run.cohort_dir, fold_csv, "ghanet", out / fold_csv.stem, OPTIONS) for fold_csv in run.fold_csvs]
    run_folds(jobs)
    files = [out / fold_csv.stem / "reconstruction.csv" for fold_csv in run.fold_csvs]
    table = write_reconstruction_report(files, out / "reconstruction.md", out / "reconstruction.csv")
    print((out / "reconstruction.md").read_text())
    return dict(zip(table["group"], table["group_r"]))


@pytest.fixture(scope="module")
def without_link(tmp_path_factory) -> DemoRun:
    return build_demo_features(tmp_path_factory.mktemp("demo_no_link"), {"genomic_strength": 0.0})


def test_the_planted_group_is_reconstructed_best(demo_features_run, tmp_path):
    scores = group_scores(demo_features_run, tmp_path)
    others = {group: r for group, r in scores.items() if group != PLANTED}
    assert scores[PLANTED] > 0.5, scores
    assert scores[PLANTED] >= max(others.values()) + MARGIN, scores


def test_without_the_link_no_group_stands_out(without_link, tmp_path):
    scores = group_scores(without_link, tmp_path)
    ranked = sorted(scores.values(), reverse=True)
    assert ranked[0] < NO_STANDOUT, scores
    assert ranked[0] - ranked[1:][len(ranked[1:]) // 2] < NO_STANDOUT, scores
