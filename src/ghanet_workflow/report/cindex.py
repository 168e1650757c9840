"""The C-index product: per-fold metrics of every model, mean ± std, pooled out-of-fold C,
out-of-fold predictions with risk groups, Kaplan-Meier curves and the per-fold C-index figure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from .. import plots
from ..atomic import write_csv, write_text
from ..errors import InputError
from ..metrics import pooled_cindex
from .inputs import (
    PREDICTION_COLUMNS,
    expected_folds,
    failure_reason,
    index_fold_files,
    models_in,
    read_fold_metrics,
    read_predictions,
)
from .options import resolve_options
from .text import DASH, as_html_tables, fmt_ci, fmt_count, fmt_mean_std, fmt_number, html_page, std_name

#: metrics.json key -> column title (td-AUC keys ``auc_<months>m`` are found per file).
METRIC_TITLES = {"cindex_harrell": "Harrell C", "cindex_uno": "Uno C", "ibs": "IBS"}
CI_KEYS = ("cindex_ci_low", "cindex_ci_high")
#: td-AUC keys of metrics.json: ``auc_12m`` (also accepted: ``auc_12``).
AUC_KEY = re.compile(r"auc_(\d+(?:\.\d+)?)m?")
COUNT_TITLES = {"n_patients": "Patients", "n_events": "Events"}
GROUP_NAMES = {2: ["low risk", "high risk"], 3: ["low risk", "intermediate risk", "high risk"]}


def auc_keys(metric_dicts: Iterable[dict]) -> list[str]:
    """td-AUC keys (``auc_<months>m``) present in any fold, by horizon."""
    keys = {k for m in metric_dicts for k in m if AUC_KEY.fullmatch(k)}
    return sorted(keys, key=lambda k: float(AUC_KEY.fullmatch(k).group(1)))


def fold_metrics_frame(
    model: str,
    folds: Sequence[int],
    metrics_files: Mapping[tuple[str, int], Path],
    failure_logs: Path | None = None,
) -> pd.DataFrame:
    """One row per expected fold of ``model``: status ok/missing, reason, and every metric (NaN if undefined).

    The reason of a missing fold comes from its training log in ``failure_logs`` when there is one.
    """
    rows = []
    for fold in folds:
        metrics, reason = read_fold_metrics(metrics_files.get((model, fold)))
        if reason and not metrics:
            reason = failure_reason(failure_logs, model, fold) or reason
        values = {k: _as_float(v) for k, v in metrics.items() if not reason and _is_number(v)}
        rows.append(
            {
                **values,
                "model": model,
                "fold": fold,
                "status": "missing" if reason else "ok",
                "reason": reason,
                "notes": "" if reason else _undefined_notes(metrics),
            }
        )
    frame = pd.DataFrame(rows)
    metric_keys = [*METRIC_TITLES, *auc_keys(rows), *CI_KEYS, *COUNT_TITLES]
    return frame.reindex(columns=["model", "fold", "status", "reason", "notes", *metric_keys])


def _undefined_notes(metrics: dict) -> str:
    """The evaluate stage's reasons for undefined (null) metrics, its ``notes`` {key: reason}, as one line."""
    notes = metrics.get("notes")
    if isinstance(notes, dict):
        return "; ".join(f"{key}: {why}" for key, why in notes.items())
    if isinstance(notes, list):  # tolerated: a plain list of reasons
        return "; ".join(str(why) for why in notes)
    return ""


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _as_float(value) -> float:
    return float("nan") if value is None else float(value)


def summary_rows(folds: pd.DataFrame, ddof: int) -> pd.DataFrame:
    """``mean`` and ``std`` rows over the completed folds (NaN values left out), counts as totals."""
    done = folds[folds["status"] == "ok"]
    metric_keys = [
        c for c in folds.columns if c not in ("model", "fold", "status", "reason", "notes", *COUNT_TITLES)
    ]
    values = done[metric_keys].astype(float)
    mean = {"fold": "mean", **values.mean().to_dict(), **done[list(COUNT_TITLES)].sum(min_count=1).to_dict()}
    std = {"fold": "std", **values.std(ddof=ddof).to_dict()}
    return pd.DataFrame([mean, std])


def risk_group_labels(n_groups: int) -> list[str]:
    """Names of the predicted risk groups, lowest risk first."""
    return GROUP_NAMES.get(n_groups, [f"risk Q{i + 1}" for i in range(n_groups)])


def assign_risk_groups(predictions: pd.DataFrame, n_groups: int, source: Path) -> pd.DataFrame:
    """Test rows of one fold with ``cutoff`` and ``risk_group`` from that fold's training risks.

    The training fold is every non-test row (train + inner val), as in the evaluate stage. Cut-offs
    are its risk quantiles at 1/g, ..., (g-1)/g (the median for two groups); a risk equal to a
    cut-off falls in the lower group.
    """
    train = predictions.loc[predictions["split"] != "test", "risk"].to_numpy(float)
    if train.size == 0:
        raise InputError(
            f"{source}: no training-fold rows (split train/val); the risk-group cut-off needs them"
        )
    cutoffs = np.quantile(train, np.arange(1, n_groups) / n_groups)
    test = predictions[predictions["split"] == "test"].copy()
    labels = np.array(risk_group_labels(n_groups))
    test["cutoff"] = ";".join(f"{c:.6g}" for c in cutoffs)
    test["risk_group"] = labels[np.digitize(test["risk"].to_numpy(float), cutoffs, right=True)]
    return test


def out_of_fold_predictions(
    model: str, folds: Sequence[int], prediction_files: Mapping[tuple[str, int], Path], n_groups: int
) -> pd.DataFrame:
    """Test rows of every fold of ``model`` whose predictions exist, with risk groups and a model column."""
    parts = []
    for fold in folds:
        path = prediction_files.get((model, fold))
        if path is not None and path.is_file():
            parts.append(assign_risk_groups(read_predictions(path), n_groups, path))
    if not parts:
        return pd.DataFrame(columns=["model", *PREDICTION_COLUMNS, "cutoff", "risk_group"])
    test = pd.concat(parts, ignore_index=True)
    test.insert(0, "model", model)
    return test


def cindex_markdown(model: str, cohort: str, table: pd.DataFrame, test: pd.DataFrame, options: dict) -> str:
    """Markdown section for one model: the per-fold table and footnotes naming missing folds."""
    decimals = options["decimals"]
    folds = table[table["kind"] == "fold"]
    mean, std, pooled = (table[table["kind"] == kind].iloc[0] for kind in ("mean", "std", "pooled"))
    metric_keys = [c for c in table.columns if c in METRIC_TITLES or AUC_KEY.fullmatch(c)]
    headers = ["Fold", *(_title(k) for k in metric_keys), "C 95% CI", *COUNT_TITLES.values()]
    rows = [_fold_cells(row, metric_keys, decimals) for _, row in folds.iterrows()]
    rows.append(
        [
            "mean ± std",
            *(fmt_mean_std(mean[k], std[k], decimals) for k in metric_keys),
            DASH,
            fmt_count(mean["n_patients"]),
            fmt_count(mean["n_events"]),
        ]
    )
    rows.append(
        [
            "pooled out-of-fold",
            fmt_number(pooled["cindex_harrell"], decimals),
            *[DASH] * len(metric_keys),
            fmt_count(pooled["n_patients"]),
            fmt_count(pooled["n_events"]),
        ]
    )
    done = folds[folds["status"] == "ok"]
    missing = folds[folds["status"] != "ok"]
    pooled_folds = sorted(test["fold"].unique()) if len(test) else []
    notes = [
        f"Mean ± std over the {len(done)} completed fold(s) of {len(folds)}: {std_name(options['std_ddof'])}; "
        f"{DASH} marks a value undefined for a fold, left out of the mean. "
        "Patients and events in the summary rows are totals.",
        "Pooled out-of-fold: Harrell's C-index (scikit-survival) of all test-fold predictions together "
        f"(folds {', '.join(map(str, pooled_folds)) or 'none'}).",
        "Missing folds: "
        + (
            "; ".join(f"fold {r.fold} ({r.reason})" for r in missing.itertuples())
            if len(missing)
            else "none."
        ),
    ]
    undefined = [
        f"fold {r.fold}: {r.notes}" for r in done.itertuples() if isinstance(r.notes, str) and r.notes
    ]
    if undefined:
        notes.append(
            "Undefined values (reasons from the evaluate stage):\n\n" + "\n".join(f"- {u}" for u in undefined)
        )
    body = tabulate(rows, headers=headers, tablefmt=options["tablefmt"], disable_numparse=True)
    return f"## {model} — {cohort}\n\n{body}\n\n" + "\n\n".join(notes) + "\n"


def incomplete_banner(table: pd.DataFrame) -> str:
    """A warning paragraph naming the missing folds of every model ("" when every fold completed)."""
    folds = table[table["kind"] == "fold"]
    missing = folds[folds["status"] != "ok"]
    if missing.empty:
        return ""
    listed = "; ".join(
        f"{model} fold(s) {', '.join(str(int(f)) for f in group['fold'])}"
        for model, group in missing.groupby("model", sort=False)
    )
    return (
        f"**Incomplete: {len(missing)} of {len(folds)} (model, fold) runs did not finish ({listed}).** "
        "Means and pooled values below use the completed folds only; the reasons are under each table. "
        "Rerun the workflow to retry the failed folds (finished folds are kept).\n\n"
    )


def _title(key: str) -> str:
    """Column title of a metric key (``auc_36m`` -> ``AUC 36 mo``)."""
    return METRIC_TITLES.get(key) or f"AUC {AUC_KEY.fullmatch(key).group(1)} mo"


def _fold_cells(row: pd.Series, metric_keys: list[str], decimals: int) -> list[str]:
    """Cells of one fold row; a missing fold says so in its first metric cell."""
    if row["status"] != "ok":
        return [str(row["fold"]), "missing", *[DASH] * (len(metric_keys) + 2)]
    return [
        str(row["fold"]),
        *(fmt_number(row[k], decimals) for k in metric_keys),
        fmt_ci(row["cindex_ci_low"], row["cindex_ci_high"], decimals),
        fmt_count(row["n_patients"]),
        fmt_count(row["n_events"]),
    ]


def model_cindex_table(
    model: str,
    folds: Sequence[int],
    metrics_files,
    test: pd.DataFrame,
    ddof: int,
    failure_logs: Path | None = None,
) -> pd.DataFrame:
    """Machine-readable C-index table of one model: fold rows, then mean, std and pooled rows (``kind``)."""
    fold_rows = fold_metrics_frame(model, folds, metrics_files, failure_logs)
    summary = summary_rows(fold_rows, ddof).assign(kind=["mean", "std"])
    fold_rows = fold_rows.assign(kind="fold")
    pooled = pd.DataFrame([{"fold": "pooled", **pooled_cindex(test)}]).assign(kind="pooled")
    table = pd.concat([fold_rows, summary, pooled], ignore_index=True)
    table["model"] = model
    return table[["model", "kind", "fold", *[c for c in table.columns if c not in ("model", "kind", "fold")]]]


def write_cindex_report(
    metrics: Iterable[str | Path],
    predictions: Iterable[str | Path],
    out_md: str | Path,
    out_csv: str | Path,
    out_predictions: str | Path | None = None,
    *,
    cohort: str,
    folds: Sequence[int] | None = None,
    default_model: str = "ghanet",
    options: Mapping | None = None,
    out_html: str | Path | None = None,
    models: Sequence[str] | None = None,
    failure_logs: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cohort C-index report of every model found in the file lists (and of ``models``).

    Writes ``out_md`` (a section per model: one row per fold with Harrell C, Uno C, IBS, td-AUC,
    bootstrap 95% CI, patients, events; ``mean ± std``; pooled out-of-fold C), ``out_csv`` (the
    same numbers, with ``kind`` in fold/mean/std/pooled), ``out_predictions`` (every fold's
    test rows with their risk group) and ``out_html`` (the markdown page as HTML). A model in
    ``models`` without any file is listed with every fold missing; the reason of a missing fold
    comes from ``failure_logs/<model>_fold_<k>.log`` when that log exists. Returns
    (table, out-of-fold predictions).
    """
    options = resolve_options(options)
    metrics_files = index_fold_files(metrics, default_model)
    prediction_files = index_fold_files(predictions, default_model)
    fold_ids = expected_folds([*metrics_files, *prediction_files], folds)
    tables, tests, sections, html_sections = [], [], [], []
    log_dir = Path(failure_logs) if failure_logs is not None else None
    for model in dict.fromkeys([*(models or []), *models_in(metrics_files, prediction_files)]):
        test = out_of_fold_predictions(model, fold_ids, prediction_files, int(options["km_groups"]))
        table = model_cindex_table(model, fold_ids, metrics_files, test, int(options["std_ddof"]), log_dir)
        sections.append(cindex_markdown(model, cohort, table, test, options))
        html_sections.append(cindex_markdown(model, cohort, table, test, as_html_tables(options)))
        tables.append(table)
        tests.append(test)
    if not tables or not fold_ids:
        raise InputError("report: no metrics.json or predictions.csv given; pass --metrics/--predictions")
    table = pd.concat(tables, ignore_index=True)
    table.insert(0, "cohort", cohort)
    test = pd.concat(tests, ignore_index=True)
    head = f"# C-index — {cohort}\n\n{incomplete_banner(table)}"
    write_text(out_md, head + "\n".join(sections))
    if out_html is not None:
        write_text(out_html, html_page(f"C-index — {cohort}", head + "\n".join(html_sections)))
    write_csv(out_csv, table)
    if out_predictions is not None:
        write_csv(out_predictions, test)
    return table, test


def write_survival_figures(table: pd.DataFrame, test: pd.DataFrame, out_dir: Path, options: dict) -> list[Path]:
    """km.png (pooled out-of-fold risk groups per model) and cindex_strip.png (C per fold) into ``out_dir``."""
    formats = options["formats"]
    folds = table[table["kind"] == "fold"]
    labels = risk_group_labels(int(options["km_groups"]))
    panels = {
        f"{model} (pooled out-of-fold)": frame
        for model, frame in test.groupby("model", sort=False)
        if len(frame)
    }
    written = plots.plot_km(panels, labels, out_dir / "km.png", formats)
    strip = {
        m: f.loc[f["status"] == "ok"].set_index("fold")["cindex_harrell"].astype(float)
        for m, f in folds.groupby("model", sort=False)
    }
    pooled = table[table["kind"] == "pooled"].set_index("model")["cindex_harrell"].astype(float).to_dict()
    return written + plots.plot_cindex_strip(
        strip, out_dir / "cindex_strip.png", folds["fold"].nunique(), pooled, formats
    )
