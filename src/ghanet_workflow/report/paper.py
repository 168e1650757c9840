"""The paper table: models x cohorts, mean ± std over folds, overall mean, best per column in bold.

With several encoders (model labels ``<model>@<encoder label>``, see ``cohort_config``) the rows
are models x encoders, with an Encoder column.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..atomic import write_csv, write_text
from ..cohort_config import split_model_label
from ..errors import InputError
from .inputs import read_csv
from .options import resolve_options
from .text import booktabs, fmt_mean_std, fmt_number, html_page, latex_escape, std_name


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
    """Per model: the mean over cohorts of the per-cohort means (no std); only for a model that has a
    cell in every cohort (a genomic-only cohort's models beside slide models would otherwise be
    averaged over other cohorts than the rest)."""
    overall = cells.groupby("model", sort=False).agg(
        mean=("mean", "mean"), n_folds_ok=("n_folds_ok", "sum"), n_folds=("n_folds", "sum"),
        n_cohorts=("cohort", "nunique"),
    )
    overall.loc[overall["n_cohorts"] < cells["cohort"].nunique(), "mean"] = np.nan
    return overall.drop(columns="n_cohorts").reset_index().assign(cohort="Overall", std=np.nan)


#: cindex.csv metrics for which lower is better (the integrated Brier score)
LOWER_IS_BETTER = {"ibs"}


def _bold_mask(wide_means: pd.DataFrame, decimals: int, lower_is_better: bool = False) -> pd.DataFrame:
    """True where a cell holds its column's best mean (highest, or lowest for an error such as the
    IBS; after rounding); ties all bold."""
    rounded = wide_means.round(decimals)
    best = rounded.min() if lower_is_better else rounded.max()
    return rounded.eq(best) & rounded.notna()


def encoder_names(labels: Iterable[str], default_encoder: str | None) -> dict[str, tuple[str, str]] | None:
    """Model label -> (model, encoder) when some label names an encoder, else None (no Encoder column).

    A plain label is the default encoder's model (``default_encoder``, or "default" when not given).
    """
    split = {label: split_model_label(label) for label in labels}
    if not any(encoder for _, encoder in split.values()):
        return None
    return {label: (model, encoder or default_encoder or "default") for label, (model, encoder) in split.items()}


def paper_rows(
    cells: pd.DataFrame,
    decimals: int,
    style: str,
    lower_is_better: bool = False,
    encoders: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the paper table; ``style`` 'markdown', 'latex' or 'html' sets bold and ±.

    ``encoders`` (:func:`encoder_names`): split each model label into a Model and an Encoder column.
    """
    means = cells.pivot(index="model", columns="cohort", values="mean")
    stds = cells.pivot(index="model", columns="cohort", values="std")
    partial = cells.pivot(index="model", columns="cohort", values="n_folds_ok") < cells.pivot(
        index="model", columns="cohort", values="n_folds"
    )
    differs = cells.pivot(index="model", columns="cohort", values="differs").fillna(False).astype(bool)
    models = list(dict.fromkeys(cells["model"]))
    cohorts = list(dict.fromkeys(cells["cohort"]))
    bold = _bold_mask(means.loc[models, cohorts], decimals, lower_is_better)
    pm, wrap, esc, dagger, star = {
        "latex": ("$\\pm$", "\\textbf{{{}}}", latex_escape, "$^\\dagger$", "$^{*}$"),
        "html": ("±", "<strong>{}</strong>", html.escape, "†", "*"),
        "markdown": ("±", "**{}**", str, "†", "\\*"),
    }[style]
    rows = []
    for model in models:
        row = [esc(part) for part in encoders[model]] if encoders else [esc(model)]
        for cohort in cohorts:
            mean, std = means.at[model, cohort], stds.at[model, cohort]
            text = (
                fmt_number(mean, decimals) if cohort == "Overall" else fmt_mean_std(mean, std, decimals, pm)
            )
            text = wrap.format(text) if bold.at[model, cohort] else text
            marks = star * bool(differs.at[model, cohort]) + dagger * bool(partial.at[model, cohort])
            row.append(text + marks)
        rows.append(row)
    first = ["Model", "Encoder"] if encoders else ["Model"]
    return [*first, *(esc(c) for c in cohorts)], rows


def significant_cells(cells: pd.DataFrame, comparison_csvs: Iterable[str | Path]) -> pd.Series:
    """Per cell: True where a comparison.csv row says the model differs from the reference there."""
    frames = [read_csv(Path(p)) for p in comparison_csvs]
    if not frames:
        return pd.Series(False, index=cells.index)
    rows = pd.concat(frames, ignore_index=True)
    marked = {key for key, flag in zip(zip(rows["model"], rows["cohort"]), rows["significant"]) if _true(flag)}
    return pd.Series([(m, c) in marked for m, c in zip(cells["model"], cells["cohort"])], index=cells.index)


def _true(flag) -> bool:
    """A ``significant`` cell of comparison.csv (read back as bool or as text)."""
    return str(flag).strip().lower() == "true"


def write_paper_table(
    cindex_csvs: Iterable[str | Path],
    out_md: str | Path,
    out_tex: str | Path,
    out_csv: str | Path,
    options: Mapping | None = None,
    out_html: str | Path | None = None,
    comparison_csvs: Iterable[str | Path] = (),
    default_encoder: str | None = None,
) -> pd.DataFrame:
    """Models x cohorts table of mean ± std over folds (+ overall mean), best per column bold.

    Reads the ``cindex.csv`` of each cohort, and the ``comparison.csv`` files whose significant
    rows mark a cell with * (differs from the reference model); writes markdown, LaTeX (tabulate
    ``latex_raw`` with booktabs rules), a long CSV (model, cohort, mean, std, n_folds_ok,
    n_folds, differs; with several encoders model is the model label's model and an encoder
    column follows it) and, with ``out_html``, the markdown as an HTML page. Returns the long table.
    ``default_encoder``: the name shown for the models of the default encoder (plain labels).
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
    cells["differs"] = significant_cells(cells, comparison_csvs)
    lower = metric in LOWER_IS_BETTER
    encoders = encoder_names(cells["model"], default_encoder)
    note = (
        f"Cells: mean ± std of {metric} over folds ({std_name(ddof)}); "
        "Overall: mean over cohorts of the per-cohort means (— for a model not run on every cohort). "
        f"Bold: best per column ({'lowest' if lower else 'highest'}). "
        "† not every fold completed (see each cohort's cindex.md)."
    )
    if comparison_csvs:
        note += (
            f" * Harrell's C differs from {options['reference_model']}'s (paired comparison, corrected "
            f"resampled t-test, p < {1 - float(options['comparison_level']):g}; see comparison.md)."
        )
    headers, rows = paper_rows(cells, decimals, "markdown", lower, encoders)
    write_text(
        out_md,
        tabulate(rows, headers=headers, tablefmt=options["tablefmt"], disable_numparse=True)
        + f"\n\n{note}\n",
    )
    if out_html is not None:
        headers, rows = paper_rows(cells, decimals, "html", lower, encoders)
        table = tabulate(rows, headers=headers, tablefmt="unsafehtml", disable_numparse=True)
        write_text(out_html, html_page("Models x cohorts", f"# Models x cohorts\n\n{table}\n\n{note}\n"))
    headers, rows = paper_rows(cells, decimals, "latex", lower, encoders)
    latex = booktabs(tabulate(rows, headers=headers, tablefmt="latex_raw", disable_numparse=True))
    write_text(out_tex, f"{latex}\n% {note}\n")
    if encoders:
        split = cells["model"].map(encoders)
        cells.insert(1, "encoder", split.str[1])
        cells["model"] = split.str[0]
    write_csv(out_csv, cells)
    return cells
