"""The genomic-reconstruction product: how well each model recovers each signature group's genes
from the slides alone (Pearson r on the test folds), with the best-reconstructed genes.

Two group-level scores, both mean ± std over folds: ``mean_r``, the mean over the group's genes of
the per-gene r, and ``group_r``, the r of the group score (the mean of the group's selected scaled
genes, reconstructed against true; the ``group_r`` column of reconstruction.csv). A gene-morphology
link that moves many genes of a group together shows in ``group_r`` far more than in ``mean_r``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from .. import plots
from ..atomic import write_csv, write_text
from ..errors import InputError
from .inputs import expected_folds, index_fold_files, models_in, read_csv
from .options import resolve_options
from .text import as_html_tables, fmt_mean_std, fmt_number, html_page, std_name

RECONSTRUCTION_COLUMNS = ("group", "gene", "pearson_r")
#: columns of the report's reconstruction.csv (after ``model``)
RECONSTRUCTION_TABLE = ["group", "n_genes", "mean_r", "std_r", "group_r", "group_r_std", "n_folds", "top_genes"]


def write_reconstruction_report(
    reconstruction: Iterable[str | Path],
    out_md: str | Path,
    out_csv: str | Path,
    *,
    folds: Sequence[int] | None = None,
    default_model: str = "ghanet",
    options: Mapping | None = None,
    out_html: str | Path | None = None,
    out_png: str | Path | None = None,
) -> pd.DataFrame:
    """Genomic reconstruction per signature group: mean Pearson r on the test folds and the top genes.

    ``out_png``: the figure of the group-score r per group and model (``plots.plot_reconstruction``;
    the other formats of ``options['formats']`` beside it).

    Each ``reconstruction.csv`` (group, gene, pearson_r) is one fold; the group's r is the mean over
    its genes per fold, then mean ± std over folds. A missing file is listed, not an error; a model
    whose files hold no rows (no reconstruction head, e.g. ABMIL) is named as such.
    """
    options = resolve_options(options)
    files = index_fold_files(reconstruction, default_model)
    fold_ids = expected_folds(files, folds)
    sections, html_sections, tables, without = [], [], [], []
    for model in models_in(files):
        per_fold, missing = _reconstruction_folds(model, fold_ids, files)
        if per_fold.empty and len(missing) < len(fold_ids):
            without.append(model)
            continue
        table = _reconstruction_table(
            per_fold, int(options["std_ddof"]), int(options["top_genes"]), int(options["decimals"])
        )
        table.insert(0, "model", model)
        tables.append(table)
        sections.append(_reconstruction_markdown(model, table, missing, len(fold_ids), options))
        html_sections.append(
            _reconstruction_markdown(model, table, missing, len(fold_ids), as_html_tables(options))
        )
    note = f"Models without gene reconstruction: {', '.join(without)}.\n" if without else ""
    empty = "No reconstruction outputs were given.\n" if not sections and not without else ""
    write_text(out_md, "# Genomic reconstruction\n\n" + "\n".join(sections) + note + empty)
    if out_html is not None:
        page = "# Genomic reconstruction\n\n" + "\n".join(html_sections) + note + empty
        write_text(out_html, html_page("Genomic reconstruction", page))
    table = (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(columns=["model", *RECONSTRUCTION_TABLE])
    )
    write_csv(out_csv, table)
    if out_png is not None:
        plots.plot_reconstruction(table, out_png, options["formats"])
    return table


def _reconstruction_folds(model: str, folds: Sequence[int], files) -> tuple[pd.DataFrame, list[str]]:
    """Stacked reconstruction rows of the folds that have a file, and a note per fold that does not."""
    parts, missing = [], []
    for fold in folds:
        path = files.get((model, fold))
        if path is None or not path.is_file():
            missing.append(f"fold {fold} ({'not given' if path is None else f'not found: {path}'})")
            continue
        frame = read_csv(path)
        absent = [c for c in RECONSTRUCTION_COLUMNS if c not in frame.columns]
        if absent:
            raise InputError(
                f"{path}: missing column(s) {absent}; reconstruction.csv needs {list(RECONSTRUCTION_COLUMNS)}"
            )
        parts.append(frame.assign(fold=fold))
    empty = pd.DataFrame(columns=[*RECONSTRUCTION_COLUMNS, "fold"])
    return (pd.concat(parts, ignore_index=True) if parts else empty), missing


def _reconstruction_table(rows: pd.DataFrame, ddof: int, top: int, decimals: int) -> pd.DataFrame:
    """Per group: genes, mean/std over folds of the per-fold mean r, folds, and the top genes by mean r."""
    out = []
    for group, frame in rows.groupby("group", sort=False):
        per_fold = frame.groupby("fold")["pearson_r"].mean()
        # group_r is the same on every row of a (group, fold); files written before it have no column
        group_r = frame.groupby("fold")["group_r"].first() if "group_r" in frame else pd.Series(dtype=float)
        gene_r = frame.groupby("gene")["pearson_r"].mean().sort_values(ascending=False).dropna()
        out.append(
            {
                "group": group,
                "n_genes": frame["gene"].nunique(),
                "mean_r": per_fold.mean(),
                "std_r": per_fold.std(ddof=ddof),
                "group_r": group_r.mean(),
                "group_r_std": group_r.std(ddof=ddof),
                "n_folds": len(per_fold),
                "top_genes": ", ".join(
                    f"{g} ({fmt_number(r, decimals)})" for g, r in gene_r.head(top).items()
                ),
            }
        )
    return pd.DataFrame(out, columns=RECONSTRUCTION_TABLE)


def _reconstruction_markdown(
    model: str, table: pd.DataFrame, missing: list[str], n_folds: int, options: dict
) -> str:
    """Markdown section of one model's reconstruction table."""
    decimals = int(options["decimals"])
    rows = [
        [
            r.group,
            r.n_genes,
            fmt_mean_std(r.group_r, r.group_r_std, decimals),
            fmt_mean_std(r.mean_r, r.std_r, decimals),
            r.top_genes,
        ]
        for r in table.itertuples()
    ]
    body = tabulate(
        rows,
        headers=["Group", "Genes", "Group-score r", "Mean gene r", f"Top {options['top_genes']} genes (r)"],
        tablefmt=options["tablefmt"],
        disable_numparse=True,
    )
    scored = table.dropna(subset=["group_r"])
    best = (
        f"Best reconstructed group (group-score r): {scored.loc[scored['group_r'].idxmax(), 'group']}. "
        if len(scored)
        else ""
    )
    note = (
        f"Pearson r over the test patients of each fold, then mean ± std over {n_folds - len(missing)} fold(s) "
        f"({std_name(options['std_ddof'])}). Group-score r: r between the reconstructed and the true group score "
        f"(the mean of the group's selected, standardised genes). Mean gene r: each selected gene's r, averaged "
        f"over the group's genes. {best}Missing folds: {'; '.join(missing) or 'none.'}"
    )
    return f"## {model}\n\n{body}\n\n{note}\n"
