"""The paper table: models x cohorts, mean ± std over folds, overall mean, best per column in bold."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..atomic import write_csv, write_text
from ..errors import InputError
from .inputs import read_csv
from .options import resolve_options
from .text import fmt_mean_std, fmt_number, html_page, std_name


def paper_cells(cindex_tables: Sequence[pd.DataFrame], metric: str, ddof: int) -> pd.DataFrame:
    """Long table (model, cohort, mean, std, n_folds_ok, n_folds) from per-cohort cindex.csv frames."""
    folds = pd.concat(cindex_tables, ignore_index=True)
    folds = folds[folds["kind"] == "fold"]
    if metric not in folds.columns:
        raise InputError(
            f"paper table: metric {metric!r} is not a column of cindex.csv; use one of {list(folds.columns)}"
        )
    cells = []
    for (model, cohort), group in folds.groupby(["model", "cohort"], sort=False):
        values = group.loc[group["status"] == "ok", metric].astype(float).dropna()
        cells.append(
            {
                "model": model,
                "cohort": cohort,
                "mean": values.mean(),
                "std": values.std(ddof=ddof),
                "n_folds_ok": len(values),
                "n_folds": len(group),
            }
        )
    return pd.DataFrame(cells)


def overall_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Per model: the mean over cohorts of the per-cohort means (no std)."""
    overall = cells.groupby("model", sort=False).agg(
        mean=("mean", "mean"), n_folds_ok=("n_folds_ok", "sum"), n_folds=("n_folds", "sum")
    )
    return overall.reset_index().assign(cohort="Overall", std=np.nan)


def _bold_mask(wide_means: pd.DataFrame, decimals: int) -> pd.DataFrame:
    """True where a cell holds its column's best (highest, after rounding) mean; ties all bold."""
    rounded = wide_means.round(decimals)
    return rounded.eq(rounded.max()) & rounded.notna()


def paper_rows(cells: pd.DataFrame, decimals: int, style: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the paper table; ``style`` 'markdown', 'latex' or 'html' sets bold and ±."""
    means = cells.pivot(index="model", columns="cohort", values="mean")
    stds = cells.pivot(index="model", columns="cohort", values="std")
    partial = cells.pivot(index="model", columns="cohort", values="n_folds_ok") < cells.pivot(
        index="model", columns="cohort", values="n_folds"
    )
    models = list(dict.fromkeys(cells["model"]))
    cohorts = list(dict.fromkeys(cells["cohort"]))
    bold = _bold_mask(means.loc[models, cohorts], decimals)
    pm, wrap, esc = {
        "latex": ("$\\pm$", "\\textbf{{{}}}", _latex_escape),
        "html": ("±", "<strong>{}</strong>", html.escape),
        "markdown": ("±", "**{}**", str),
    }[style]
    rows = []
    for model in models:
        row = [esc(model)]
        for cohort in cohorts:
            mean, std = means.at[model, cohort], stds.at[model, cohort]
            text = (
                fmt_number(mean, decimals) if cohort == "Overall" else fmt_mean_std(mean, std, decimals, pm)
            )
            text = wrap.format(text) if bold.at[model, cohort] else text
            row.append(text + ("$^\\dagger$" if style == "latex" else "†") * bool(partial.at[model, cohort]))
        rows.append(row)
    return ["Model", *(esc(c) for c in cohorts)], rows


def _latex_escape(text: str) -> str:
    """Escape LaTeX special characters in a model or cohort name."""
    return re.sub(r"([_&%#$])", r"\\\1", str(text))


def write_paper_table(
    cindex_csvs: Iterable[str | Path],
    out_md: str | Path,
    out_tex: str | Path,
    out_csv: str | Path,
    options: Mapping | None = None,
    out_html: str | Path | None = None,
) -> pd.DataFrame:
    """Models x cohorts table of mean ± std over folds (+ overall mean), best per column bold.

    Reads the ``cindex.csv`` of each cohort; writes markdown, LaTeX (tabulate ``latex_raw``), a
    long CSV (model, cohort, mean, std, n_folds_ok, n_folds) and, with ``out_html``, the markdown
    as an HTML page. Returns the long table.
    """
    options = resolve_options(options)
    metric, decimals, ddof = options["paper_metric"], int(options["decimals"]), int(options["std_ddof"])
    tables = [read_csv(Path(p)) for p in cindex_csvs]
    if not tables:
        raise InputError(
            "paper table: no cindex.csv given; pass --cindex results/<cohort>/report/cindex.csv ..."
        )
    cells = paper_cells(tables, metric, ddof)
    cells = pd.concat([cells, overall_cells(cells)], ignore_index=True)
    note = (
        f"Cells: mean ± std of {metric} over folds ({std_name(ddof)}); "
        "Overall: mean over cohorts of the per-cohort means. Bold: best per column. "
        "† not every fold completed (see each cohort's cindex.md)."
    )
    headers, rows = paper_rows(cells, decimals, "markdown")
    write_text(
        out_md,
        tabulate(rows, headers=headers, tablefmt=options["tablefmt"], disable_numparse=True)
        + f"\n\n{note}\n",
    )
    if out_html is not None:
        headers, rows = paper_rows(cells, decimals, "html")
        table = tabulate(rows, headers=headers, tablefmt="unsafehtml", disable_numparse=True)
        write_text(out_html, html_page("Models x cohorts", f"# Models x cohorts\n\n{table}\n\n{note}\n"))
    headers, rows = paper_rows(cells, decimals, "latex")
    latex = tabulate(rows, headers=headers, tablefmt="latex_raw", disable_numparse=True)
    write_text(out_tex, f"{latex}\n% {note}\n")
    write_csv(out_csv, cells)
    return cells
