"""The LaTeX tables compile as they are: pdflatex on the paper table and the comparison table.

Each table is made from the fold files of two synthetic cohorts (tests/test_report.py's writers)
with every feature a paper table can carry: bold, ±, a partial-fold dagger, significance stars,
an Encoder column, underscores and a model label with ``@``. Its ``.tex`` goes, as written, into
a document that loads only ``booktabs``. pdflatex is the Debian package ``texlive-latex-base``
(booktabs: ``texlive-latex-recommended``); .ci/run installs both, elsewhere the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import N_FOLDS, write_model_run

from ghanet_workflow.report import cindex, comparison, paper

DOCUMENT = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n\\input{%s}\n\\end{document}\n"


def pdflatex() -> str:
    path = shutil.which("pdflatex")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("pdflatex is not installed on CI; .ci/run must install texlive-latex-base texlive-latex-recommended")
        pytest.skip("pdflatex is not installed (Debian: apt-get install texlive-latex-base texlive-latex-recommended)")
    return path


def compiles(tex: Path) -> None:
    """pdflatex the table inside a booktabs document; fail with the LaTeX error."""
    doc = tex.with_name(f"doc_{tex.stem}.tex")
    doc.write_text(DOCUMENT % tex.name)
    result = subprocess.run(
        [pdflatex(), "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tex.parent, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    errors = [line for line in result.stdout.splitlines() if line.startswith("!")]
    assert result.returncode == 0 and not errors, f"{tex.name}: {errors or result.stdout[-2000:]}"
    assert doc.with_suffix(".pdf").stat().st_size > 0


def test_the_paper_table_and_the_comparison_compile_with_booktabs(tmp_path):
    cindex_csvs, predictions = [], {}
    for cohort, seeds in (("tcga_blca", (1, 2, 3)), ("tcga_ucec", (4, 5, 6))):
        results = tmp_path / cohort
        for model, seed in zip(("ghanet", "abmil_snn", "ghanet@uni_2"), seeds):
            write_model_run(results, model, seed, failed_folds=(3,) if model == "abmil_snn" else ())
        predictions[cohort] = sorted(results.glob("models/*/fold_*/predictions.csv"))
        cindex.write_cindex_report(
            sorted(results.glob("models/*/fold_*/metrics.json")), predictions[cohort],
            results / "cindex.md", results / "cindex.csv", cohort=cohort, folds=range(N_FOLDS),
        )  # fmt: skip
        cindex_csvs.append(results / "cindex.csv")
    out = tmp_path / "report"
    out.mkdir()
    # a level of 0.5 marks some differences, so the stars are in the table too
    options = {"comparison_level": 0.5, "comparison_bootstrap": 50}
    table = comparison.write_comparison(predictions, out, options)
    cells = paper.write_paper_table(
        cindex_csvs, out / "paper_table.md", out / "paper_table.tex", out / "paper_table.csv", options,
        comparison_csvs=[out / "comparison.csv"], default_encoder="resnet50_trunc",
    )  # fmt: skip
    tex = (out / "paper_table.tex").read_text()
    assert "\\toprule" in tex and "\\textbf{" in tex and "$\\pm$" in tex and "$^\\dagger$" in tex
    assert cells["differs"].any() and "$^{*}$" in tex and "Encoder" in tex and "uni\\_2" in tex
    assert table["significant"].any() and "$\\Delta C$" in (out / "comparison.tex").read_text()
    compiles(out / "paper_table.tex")
    compiles(out / "comparison.tex")
