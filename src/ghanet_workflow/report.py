"""Report stage: aggregate every fold of every model into tables (markdown, LaTeX, CSV) and figures.

Inputs are the per-fold files of docs/CONTRACTS.md, passed as explicit lists (Snakemake passes the
exact files); each file's model and fold come from its path ``.../models/<model>/fold_<k>/<file>``.
Nothing here trains or predicts: rerunning the report after changing a table option is cheap.
A fold or a slide that failed is listed, with its reason, never silently dropped. Every table is
written as markdown, CSV and a standalone HTML page (the form the Snakemake report shows inline).

Commands::

    ghanet-wf report --metrics M... --predictions P... [--training-logs L...] [--slides slides.csv]
                     [--qc Q.qc.json...] [--reconstruction R...] [--attention A.h5...]
                     [--folds 0 1 2 3 4] --out-dir results/<cohort>/report [--options JSON]
    ghanet-wf report --results-dir results/<cohort> --models ghanet      # finds the same files
    ghanet-wf report paper --cindex results/*/report/cindex.csv --out-dir results/report
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sksurv.metrics import concordance_index_censored
from tabulate import tabulate, tabulate_formats

from . import plots
from .atomic import write_csv, write_text
from .cohort import parse_options, read_id_csv
from .errors import InputError

#: Config options (config section ``report``).
DEFAULTS: dict = {
    "decimals": 3,  # digits after the decimal point in every table
    "std_ddof": 1,  # delta degrees of freedom of the std over folds (1 = sample std, 0 = population)
    "tablefmt": "github",  # tabulate format of the markdown tables
    "km_groups": 2,  # predicted risk groups in the KM plot (2 = median cut; g = training-risk g-quantiles)
    "formats": ["png"],  # figure formats (png always; add svg and/or pdf)
    "paper_metric": "cindex_harrell",  # cindex.csv column summarised in the paper table
    "top_genes": 5,  # best-reconstructed genes named per signature group
    "max_thumbnails": 48,  # thumbnails on the tiling QC contact sheet (failed slides first)
    "attention_patients": 4,  # patients in the G-HANet attention figure (half highest-, half lowest-risk)
}
FIGURE_FORMATS = {"png", "svg", "pdf"}

#: Placeholder for an undefined value in human-readable tables.
DASH = "—"
#: longest failure reason (characters) quoted from a training log
MAX_REASON_CHARS = 300

#: metrics.json key -> column title (td-AUC keys ``auc_<months>m`` are found per file).
METRIC_TITLES = {"cindex_harrell": "Harrell C", "cindex_uno": "Uno C", "ibs": "IBS"}
CI_KEYS = ("cindex_ci_low", "cindex_ci_high")
#: td-AUC keys of metrics.json: ``auc_12m`` (also accepted: ``auc_12``).
AUC_KEY = re.compile(r"auc_(\d+(?:\.\d+)?)m?")
#: metrics.json names read as the report's names.
KEY_ALIASES = {"cindex": "cindex_harrell"}
COUNT_TITLES = {"n_patients": "Patients", "n_events": "Events"}
PREDICTION_COLUMNS = ("case_id", "time", "event", "risk", "split", "fold")
RECONSTRUCTION_COLUMNS = ("group", "gene", "pearson_r")
#: columns of the report's reconstruction.csv (after ``model``)
RECONSTRUCTION_TABLE = ["group", "n_genes", "mean_r", "std_r", "n_folds", "top_genes"]
SLIDE_COLUMNS = ("slide_id", "status")
#: columns read as exact text from every CSV the report reads
ID_COLUMNS = ("case_id", "slide_id", "slide_key")
SLIDE_EXTENSIONS = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".dcm", ".bif", ".vms", ".svslide"}
GROUP_NAMES = {2: ["low risk", "high risk"], 3: ["low risk", "intermediate risk", "high risk"]}
#: attention.h5 datasets per patient (see ghanet_workflow.fold.write_attention_h5)
ATTENTION_DATASETS = ("token_attention", "patch_weights", "coords", "slide_index")
#: longest side of the slide thumbnails under the attention heatmaps, in pixels (a panel is ~2 in at 150 dpi)
THUMBNAIL_PX = 320
HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}"
    "table{border-collapse:collapse;margin:.8em 0;font-size:.9em}"
    "th,td{border:1px solid #bbb;padding:.2em .5em;text-align:right}"
    "th{background:#eee}th:first-child,td:first-child{text-align:left}p,li{max-width:65em}"
)
_FOLD_DIR = re.compile(r"fold_(\d+)$")


# ------------------------------------------------------------------------------------ options


def resolve_options(options: Mapping | None) -> dict:
    """DEFAULTS overridden by ``options``; an unknown key or a bad value raises InputError."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise InputError(f"report options: unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    if merged["tablefmt"] not in tabulate_formats:
        raise InputError(
            f"report option tablefmt={merged['tablefmt']!r}: use one of tabulate's {tabulate_formats}"
        )
    if not set(merged["formats"]) <= FIGURE_FORMATS:
        raise InputError(f"report option formats={merged['formats']}: use some of {sorted(FIGURE_FORMATS)}")
    if int(merged["attention_patients"]) < 0:
        raise InputError(f"report option attention_patients={merged['attention_patients']}: use 0 or more")
    if int(merged["km_groups"]) < 2:
        raise InputError(f"report option km_groups={merged['km_groups']}: use 2 (median) or more")
    return merged


# ------------------------------------------------------------------------------------ inputs


def model_and_fold(path: str | Path, default_model: str = "ghanet") -> tuple[str, int]:
    """(model, fold) of a per-fold file laid out as ``.../models/<model>/fold_<k>/<file>``.

    A file outside a ``models/`` folder belongs to ``default_model``.
    """
    path = Path(path)
    match = _FOLD_DIR.search(path.parent.name)
    if match is None:
        raise InputError(f"{path}: cannot tell the fold; expected .../models/<model>/fold_<k>/{path.name}")
    model_dir = path.parent.parent
    model = model_dir.name if model_dir.parent.name == "models" else default_model
    return model, int(match.group(1))


def index_fold_files(
    paths: Iterable[str | Path], default_model: str = "ghanet"
) -> dict[tuple[str, int], Path]:
    """Map (model, fold) -> file for a list of per-fold files; a duplicate key raises InputError."""
    index: dict[tuple[str, int], Path] = {}
    for path in paths:
        key = model_and_fold(path, default_model)
        if key in index:
            raise InputError(f"two files for model {key[0]!r} fold {key[1]}: {index[key]} and {path}")
        index[key] = Path(path)
    return index


def failure_reason(log_dir: Path | None, model: str, fold: int) -> str:
    """Why a fold's training job failed, from its log ``<log_dir>/<model>_fold_<k>.log``.

    The last line naming an error (the stage's own ``error:`` message or a traceback's last line),
    else the last non-empty line (a job killed from outside says nothing); "" without a log.
    """
    if log_dir is None:
        return ""
    path = Path(log_dir) / f"{model}_fold_{fold}.log"
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.search(r"error|exception|killed|cancelled", line, re.IGNORECASE)]
    if errors:
        return f"training failed: {errors[-1][:MAX_REASON_CHARS]} (log: {path})"
    if lines:  # killed from outside (time limit, scancel, OOM killer) before it could say why
        return f"training did not finish; last log line: {lines[-1][:MAX_REASON_CHARS]} (log: {path})"
    return ""


def read_fold_metrics(path: Path | None) -> tuple[dict, str]:
    """(metrics, reason) of one fold; reason is "" when the fold completed, else why it did not.

    A null value (strict JSON) is an undefined metric: NaN in the fold table, its reason in ``notes``.
    """
    if path is None:
        return {}, "no metrics.json given"
    if not path.is_file():
        return {}, f"metrics.json not found: {path}"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {}, f"unreadable metrics.json {path}: {exc}"
    if not isinstance(metrics, dict):
        return {}, f"{path}: expected a JSON object"
    if metrics.get("status", "ok") != "ok":
        return metrics, f"{metrics.get('status')}: {metrics.get('reason') or 'no reason given'}"
    return {KEY_ALIASES.get(key, key): value for key, value in metrics.items()}, ""


def read_predictions(path: Path) -> pd.DataFrame:
    """One fold's predictions.csv, checked for the CONTRACTS columns."""
    frame = _read_csv(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {missing}; predictions.csv needs {list(PREDICTION_COLUMNS)}"
        )
    undefined = frame[["time", "event", "risk"]].isna().any(axis=1)
    if undefined.any():
        rows = [int(i) + 2 for i in frame.index[undefined][:5]]
        raise InputError(f"{path}: empty time/event/risk on line(s) {rows}; rerun that fold's training")
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV, turning a missing or malformed file into an InputError naming it.

    Identifier columns (``ID_COLUMNS``) stay text exactly as written ('0001', '1e5', 'NA');
    other columns get pandas' usual parsing (empty/NA cells -> NaN).
    """
    try:
        return read_id_csv(path, id_columns=ID_COLUMNS)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def expected_folds(keys: Iterable[tuple[str, int]], folds: Sequence[int] | None) -> list[int]:
    """The folds every model should have: ``folds`` when given, else every fold seen in any file."""
    return sorted(set(folds) if folds is not None else {fold for _, fold in keys})


def models_in(*indexes: Mapping[tuple[str, int], Path]) -> list[str]:
    """Models in order of first appearance across the file indexes."""
    return list(dict.fromkeys(model for index in indexes for model, _ in index))


# ------------------------------------------------------------------------------------ formatting


def fmt_number(value, decimals: int) -> str:
    """A number rounded to ``decimals``; a dash for None/NaN."""
    if value is None or not np.isfinite(float(value)):
        return DASH
    return f"{float(value):.{decimals}f}"


def fmt_count(value) -> str:
    """An integer count; a dash for None/NaN."""
    if value is None or not np.isfinite(float(value)):
        return DASH
    return str(int(value))


def fmt_mean_std(mean, std, decimals: int, pm: str = "±") -> str:
    """``0.652 ± 0.031``; the std part is a dash when undefined (a single fold)."""
    if mean is None or not np.isfinite(mean):
        return DASH
    return f"{fmt_number(mean, decimals)} {pm} {fmt_number(std, decimals)}"


def fmt_ci(low, high, decimals: int) -> str:
    """``0.551–0.712``; a dash when either end is undefined."""
    if DASH in (lo := fmt_number(low, decimals), hi := fmt_number(high, decimals)):
        return DASH
    return f"{lo}–{hi}"


def std_name(ddof: int) -> str:
    """How the footnotes name the std convention: ``sample standard deviation (ddof=1)``."""
    kind = {0: "population", 1: "sample"}.get(int(ddof), "")
    return f"{kind} standard deviation (ddof={ddof})".lstrip()


def as_html_tables(options: dict) -> dict:
    """``options`` with tabulate's escaping ``html`` table format, for the HTML twin of a markdown page."""
    return {**options, "tablefmt": "html"}


def html_page(title: str, text: str) -> str:
    """A standalone HTML page from one of this module's markdown pages whose tables are already HTML.

    Blocks are separated by blank lines: a ``<table`` block is kept as is, ``#``/``##`` lines become
    headings, ``- `` lines list items and other lines paragraphs (all text HTML-escaped).
    """
    blocks = [
        b if b.lstrip().startswith("<table") else _html_block(b) for b in re.split(r"\n\s*\n", text.strip())
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head><body>\n" + "\n".join(blocks) + "\n</body></html>\n"
    )


def _html_block(block: str) -> str:
    """HTML of one non-table markdown block (headings, list items, paragraphs)."""
    out, items = [], []
    for line in block.splitlines():
        if line.startswith("- "):
            items.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if items:
            out.append(f"<ul>{''.join(items)}</ul>")
            items = []
        heading = re.match(r"(#{1,3}) (.*)", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{html.escape(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if items:
        out.append(f"<ul>{''.join(items)}</ul>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """HTML-escaped text with markdown ``**bold**`` as <strong>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


# ------------------------------------------------------------------------------------ C-index table


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


def pooled_cindex(test: pd.DataFrame) -> dict:
    """Harrell's C-index (sksurv) of all test-fold predictions pooled, with patients and events."""
    if test.empty or not test["event"].astype(bool).any():
        return {
            "fold": "pooled",
            "cindex_harrell": float("nan"),
            "n_patients": len(test),
            "n_events": int(test["event"].sum()) if len(test) else 0,
        }
    cindex = concordance_index_censored(
        test["event"].astype(bool).to_numpy(), test["time"].to_numpy(float), test["risk"].to_numpy(float)
    )[0]
    return {
        "fold": "pooled",
        "cindex_harrell": float(cindex),
        "n_patients": len(test),
        "n_events": int(test["event"].sum()),
    }


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
    pooled = pd.DataFrame([pooled_cindex(test)]).assign(kind="pooled")
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


# ------------------------------------------------------------------------------------ paper table


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
    tables = [_read_csv(Path(p)) for p in cindex_csvs]
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


# ------------------------------------------------------------------------------------ slides / QC


def load_slide_table(
    slides_csvs: Iterable[str | Path] = (), qc_jsons: Iterable[str | Path] = ()
) -> pd.DataFrame:
    """One row per slide from the cohort slides.csv and/or tiling QC JSONs (slides.csv wins on conflicts)."""
    frames = []
    for path in map(Path, slides_csvs):
        frame = _checked_slides(_read_csv(path), path)
        frames.append(frame.assign(slide_key=frame["slide_id"].astype(str).map(slide_key)))
    qc_rows = [_read_qc_json(Path(p)) for p in qc_jsons]
    if qc_rows:
        frames.append(pd.DataFrame(qc_rows))
    if not frames:
        raise InputError("failed-slides table: no slides.csv or QC JSON given; pass --slides and/or --qc")
    merged = pd.concat(frames, ignore_index=True).groupby("slide_key", sort=False).first().reset_index()
    merged["reason"] = merged["reason"].fillna("") if "reason" in merged else ""
    return merged


def _checked_slides(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A slides table with its required columns, else InputError naming the file."""
    missing = [c for c in SLIDE_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; a slides table needs {list(SLIDE_COLUMNS)}")
    return frame


def _read_qc_json(path: Path) -> dict:
    """One tiling QC row keyed by its file name; a missing or unreadable file becomes a failed row saying so."""
    key = path.name.removesuffix(".qc.json")
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {
            "slide_key": key,
            "slide_id": key,
            "status": "failed",
            "reason": f"QC file unreadable: {path} ({exc})",
        }
    fields = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
    return {"slide_id": key, **fields, "slide_key": key}


def qc_summary_markdown(
    slides: pd.DataFrame, encoder: str | None, target_mpp: float | None, tablefmt: str
) -> str:
    """Cohort QC: slides per status, patches per usable slide (min/median/max), encoder and resolution."""
    counts = slides["status"].value_counts().rename_axis("Status").reset_index(name="Slides")
    lines = [
        tabulate(
            counts.values.tolist(), headers=["Status", "Slides"], tablefmt=tablefmt, disable_numparse=True
        ),
        "",
    ]
    patches = (
        pd.to_numeric(slides.loc[slides["status"] == "ok", "n_patches"], errors="coerce").dropna()
        if "n_patches" in slides
        else pd.Series(dtype=float)
    )
    if len(patches):
        lines.append(
            f"- Patches per usable slide: min {int(patches.min())}, median {patches.median():g}, max {int(patches.max())}"
        )
    lines.append(f"- Encoder: {encoder or _encoder_from_paths(slides) or 'not given'}")
    lines.append(f"- Target resolution: {f'{target_mpp:g} µm/px' if target_mpp else 'not given'}")
    if "mpp_source" in slides:
        sources = slides["mpp_source"].dropna().value_counts()
        lines.append(
            "- Slide MPP source: " + (", ".join(f"{k}: {v}" for k, v in sources.items()) or "not recorded")
        )
    return "\n".join(lines) + "\n"


def _encoder_from_paths(slides: pd.DataFrame) -> str | None:
    """Encoder name from CONTRACTS feature paths ``.../features/<encoder>/<slide>.h5``, if unique."""
    if "features_path" not in slides:
        return None
    names = {Path(p).parent.name for p in slides["features_path"].dropna().astype(str) if p}
    return names.pop() if len(names) == 1 else None


def write_failed_slides(
    slides_csvs: Iterable[str | Path],
    out_md: str | Path,
    out_csv: str | Path,
    *,
    qc_jsons: Iterable[str | Path] = (),
    encoder: str | None = None,
    target_mpp: float | None = None,
    options: Mapping | None = None,
    out_html: str | Path | None = None,
) -> pd.DataFrame:
    """Table of slides whose status is not ``ok``, with reasons, plus the cohort QC summary.

    Writes ``out_md`` (failed slides, or an explicit 'none failed' line; then the QC summary),
    ``out_csv`` (the failed rows) and ``out_html`` (the page as HTML). Returns the full slide table.
    """
    options = resolve_options(options)
    slides = load_slide_table(slides_csvs, qc_jsons)
    failed = slides[slides["status"] != "ok"]
    columns = [c for c in ("slide_id", "case_id", "status", "reason") if c in slides.columns]
    write_text(out_md, failed_slides_page(slides, failed[columns], encoder, target_mpp, options["tablefmt"]))
    if out_html is not None:
        page = failed_slides_page(slides, failed[columns], encoder, target_mpp, "html")
        write_text(out_html, html_page("Failed slides", page))
    write_csv(out_csv, failed[columns])
    return slides


def failed_slides_page(
    slides: pd.DataFrame, failed: pd.DataFrame, encoder: str | None, target_mpp: float | None, tablefmt: str
) -> str:
    """Markdown page: the failed slides with reasons (or 'None failed'), then the cohort QC summary."""
    if failed.empty:
        failed_text = f"None failed: all {len(slides)} slides were usable.\n"
    else:
        failed_text = (
            f"{len(failed)} of {len(slides)} slides were not usable and are left out of training:\n\n"
            + tabulate(
                failed.fillna("").values.tolist(),
                headers=list(failed.columns),
                tablefmt=tablefmt,
                disable_numparse=True,
            )
            + "\n"
        )
    summary = qc_summary_markdown(slides, encoder, target_mpp, tablefmt)
    return f"# Failed slides\n\n{failed_text}\n## Cohort QC\n\n{summary}"


# ------------------------------------------------------------------------------------ reconstruction


def write_reconstruction_report(
    reconstruction: Iterable[str | Path],
    out_md: str | Path,
    out_csv: str | Path,
    *,
    folds: Sequence[int] | None = None,
    default_model: str = "ghanet",
    options: Mapping | None = None,
    out_html: str | Path | None = None,
) -> pd.DataFrame:
    """Genomic reconstruction per signature group: mean Pearson r on the test folds and the top genes.

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
    return table


def _reconstruction_folds(model: str, folds: Sequence[int], files) -> tuple[pd.DataFrame, list[str]]:
    """Stacked reconstruction rows of the folds that have a file, and a note per fold that does not."""
    parts, missing = [], []
    for fold in folds:
        path = files.get((model, fold))
        if path is None or not path.is_file():
            missing.append(f"fold {fold} ({'not given' if path is None else f'not found: {path}'})")
            continue
        frame = _read_csv(path)
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
        gene_r = frame.groupby("gene")["pearson_r"].mean().sort_values(ascending=False).dropna()
        out.append(
            {
                "group": group,
                "n_genes": frame["gene"].nunique(),
                "mean_r": per_fold.mean(),
                "std_r": per_fold.std(ddof=ddof),
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
        [r.group, r.n_genes, fmt_mean_std(r.mean_r, r.std_r, decimals), r.top_genes]
        for r in table.itertuples()
    ]
    body = tabulate(
        rows,
        headers=["Group", "Genes", "Mean Pearson r", f"Top {options['top_genes']} genes (r)"],
        tablefmt=options["tablefmt"],
        disable_numparse=True,
    )
    note = (
        f"Pearson r between reconstructed and true genes of the test patients, averaged over a group's genes "
        f"per fold, then mean ± std over {n_folds - len(missing)} fold(s) ({std_name(options['std_ddof'])}). "
        f"Missing folds: {'; '.join(missing) or 'none.'}"
    )
    return f"## {model}\n\n{body}\n\n{note}\n"


# ------------------------------------------------------------------------------------ attention


def read_attention_files(paths: Iterable[str | Path], default_model: str = "ghanet") -> list[dict]:
    """Every patient stored in the given ``attention.h5`` files (datasets, attrs, model, fold, groups).

    ``rank`` is the patient's place among its fold's patients of the same risk end (0 = most extreme).
    A missing file is skipped (its fold is missing from the C-index table too).
    """
    import h5py

    patients = []
    for (model, fold), path in sorted(index_fold_files(paths, default_model).items()):
        if not path.is_file():
            continue
        try:
            with h5py.File(path, "r") as handle:
                groups = [str(g) for g in handle.attrs.get("groups", [])]
                entries = handle.get("patients") or {}
                for key in sorted(entries, key=int):
                    entry = entries[key]
                    record = {name: entry[name][()] for name in ATTENTION_DATASETS}
                    record.update({name: _plain(value) for name, value in entry.attrs.items()})
                    patients.append({**record, "model": model, "fold": fold, "groups": groups})
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(
                f"cannot read {path}: {exc}; rerun that fold's training (ghanet-wf train)"
            ) from exc
    seen: dict[tuple, int] = {}
    for patient in patients:
        key = (patient["model"], patient["fold"], patient["risk_end"])
        patient["rank"] = seen[key] = seen.get(key, -1) + 1
    return patients


def _plain(value):
    """An HDF5 attribute as a Python value (string arrays as lists of str)."""
    if isinstance(value, np.ndarray):
        return [v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v for v in value]
    return value.decode() if isinstance(value, bytes) else value.item() if hasattr(value, "item") else value


def select_attention_patients(patients: Sequence[dict], n: int) -> list[dict]:
    """Up to ``n`` patients: half from the folds' high-risk ends, half from their low-risk ends.

    Each fold's most extreme patient comes first (folds in order), then the next ones, so the figure
    shows different folds before it shows a second patient of one fold.
    """
    chosen = []
    for end, count in (("high", math.ceil(n / 2)), ("low", n // 2)):
        pool = sorted((p for p in patients if p.get("risk_end") == end), key=lambda p: (p["rank"], p["fold"]))
        chosen += pool[:count]
    return chosen


def read_thumbnail(
    path: str | Path | None, max_px: int = THUMBNAIL_PX
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """RGB thumbnail and level-0 (width, height) of a slide read with OpenSlide; None if it cannot be read."""
    if path is None or not Path(path).is_file():
        return None
    try:
        import openslide
    except ImportError:
        return None
    try:
        with openslide.OpenSlide(str(path)) as slide:
            return np.asarray(slide.get_thumbnail((max_px, max_px)).convert("RGB")), tuple(slide.dimensions)
    except (OSError, openslide.OpenSlideError):
        return None


def slide_paths(slides: pd.DataFrame | None) -> dict[str, str]:
    """slide key -> slide file, from the tiling QC rows (``slide_path``) of the slide table."""
    if slides is None or "slide_path" not in slides:
        return {}
    known = slides.dropna(subset=["slide_path"])
    return dict(zip(known["slide_key"], known["slide_path"].astype(str)))


def attention_panel(patient: dict, paths: Mapping[str, str]) -> plots.AttentionPanel:
    """The figure row of one patient: its slide with the most patches, that slide's patches only."""
    index = np.asarray(patient["slide_index"])
    shown = int(np.bincount(index).argmax())
    mask = index == shown
    slide_ids = list(patient["slide_ids"])
    slide_id = slide_ids[shown]
    patch_size = int(list(patient["patch_size_level0"])[shown]) or 1
    coords = np.asarray(patient["coords"])[mask]
    thumbnail = read_thumbnail(paths.get(slide_key(slide_id)))
    size = thumbnail[1] if thumbnail else tuple(int(v) + patch_size for v in coords.max(axis=0, initial=0))
    more = f" (1 of {len(slide_ids)} slides)" if len(slide_ids) > 1 else ""
    return plots.AttentionPanel(
        title=f"{patient['case_id']}: {patient['risk_end']} risk\n{patient['model']} fold {patient['fold']}, "
        f"{slide_id}{more}",
        coords=coords,
        patch_size=patch_size,
        token_attention=np.asarray(patient["token_attention"])[:, mask],
        patch_weights=np.asarray(patient["patch_weights"])[mask],
        size=size,
        thumbnail=thumbnail[0] if thumbnail else None,
    )


def write_attention_figure(
    attention: Iterable[str | Path],
    out_path: Path,
    options: dict,
    slides: pd.DataFrame | None = None,
    default_model: str = "ghanet",
) -> list[Path]:
    """attention_heatmaps.png: CAB token attention per signature group and gated patch weights over the
    slide thumbnail, for ``attention_patients`` of the patients stored in the folds' attention.h5."""
    chosen = select_attention_patients(
        read_attention_files(attention, default_model), int(options["attention_patients"])
    )
    paths = slide_paths(slides)
    panels = [attention_panel(patient, paths) for patient in chosen]
    groups = chosen[0]["groups"] if chosen else []
    return plots.plot_attention_heatmaps(panels, groups, out_path, options["formats"])


# ------------------------------------------------------------------------------------ figures


def write_figures(
    table: pd.DataFrame,
    test: pd.DataFrame,
    out_dir: Path,
    options: dict,
    training_logs: Iterable[str | Path] = (),
    default_model: str = "ghanet",
) -> list[Path]:
    """KM curves, C-index strip plot and (when logs are given) training curves into ``out_dir``."""
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
    written += plots.plot_cindex_strip(
        strip, out_dir / "cindex_strip.png", folds["fold"].nunique(), pooled, formats
    )
    logs = read_training_logs(training_logs, default_model)
    if logs:
        written += plots.plot_training_curves(logs, out_dir / "training_curves.png", formats)
    return written


def read_training_logs(
    paths: Iterable[str | Path], default_model: str = "ghanet"
) -> dict[str, dict[int, pd.DataFrame]]:
    """model -> fold -> training_log.csv frame, for the logs that exist."""
    logs: dict[str, dict[int, pd.DataFrame]] = {}
    for (model, fold), path in index_fold_files(paths, default_model).items():
        if path.is_file():
            logs.setdefault(model, {})[fold] = _read_csv(path)
    return logs


def write_qc_sheet(
    slides: pd.DataFrame, qc_pngs: Iterable[str | Path], out_path: Path, options: dict
) -> list[Path]:
    """Tiling QC contact sheet: every given PNG, plus an empty tile for each unusable slide without one."""
    thumbnails: dict[str, Path | None] = {Path(p).stem: Path(p) for p in qc_pngs}
    statuses = dict(zip(slides["slide_key"], slides["status"].astype(str)))
    for key, status in statuses.items():
        if status != "ok":
            thumbnails.setdefault(key, None)
    return plots.plot_qc_contact_sheet(
        thumbnails, statuses, out_path, int(options["max_thumbnails"]), options["formats"]
    )


def slide_key(slide_id: str) -> str:
    """CONTRACTS slide key: the slide id without its slide-file extension (QC files are named by it)."""
    path = Path(slide_id)
    return path.stem if path.suffix.lower() in SLIDE_EXTENSIONS else slide_id


def qc_pngs_next_to(qc_jsons: Iterable[str | Path]) -> list[Path]:
    """QC thumbnails laid out as CONTRACTS says: ``tiles/qc/<slide>.png`` next to ``tiles/<slide>.qc.json``."""
    pngs = (Path(p).parent / "qc" / (Path(p).name.removesuffix(".qc.json") + ".png") for p in qc_jsons)
    return [p for p in pngs if p.is_file()]


# ------------------------------------------------------------------------------------ command line


def discover_inputs(results_dir: Path, models: Sequence[str]) -> dict[str, list[Path]]:
    """Per-fold and cohort files under ``results/<cohort>`` in the CONTRACTS layout."""

    def per_fold(name: str) -> list[Path]:
        return sorted(p for m in models for p in (results_dir / "models" / m).glob(f"fold_*/{name}"))

    slides = results_dir / "cohort" / "slides.csv"
    return {
        "metrics": per_fold("metrics.json"),
        "predictions": per_fold("predictions.csv"),
        "training_logs": per_fold("training_log.csv"),
        "reconstruction": per_fold("reconstruction.csv"),
        "attention": per_fold("attention.h5"),
        "slides": [slides] if slides.is_file() else [],
        "qc": sorted((results_dir / "tiles").glob("*.qc.json")),
    }


def cohort_parser() -> argparse.ArgumentParser:
    """Arguments of ``ghanet-wf report`` (one cohort)."""
    parser = argparse.ArgumentParser(
        prog="ghanet-wf report",
        description="Aggregate the folds of one cohort into report tables and figures. "
        "'ghanet-wf report paper --help' for the models x cohorts table.",
    )
    lists = {
        "--metrics": "per-fold metrics.json",
        "--predictions": "per-fold predictions.csv",
        "--training-logs": "per-fold training_log.csv",
        "--reconstruction": "per-fold reconstruction.csv",
        "--attention": "per-fold attention.h5 (G-HANet attention of a few test patients)",
        "--slides": "cohort slides.csv",
        "--qc": "tiling <slide>.qc.json files",
        "--qc-png": "tiling QC thumbnails (default: tiles/qc/<slide>.png next to each --qc file)",
    }
    for flag, help_text in lists.items():
        parser.add_argument(flag, nargs="*", type=Path, default=None, help=help_text)
    parser.add_argument(
        "--results-dir", type=Path, help="find every input under results/<cohort> (CONTRACTS layout)"
    )
    parser.add_argument(
        "--models", nargs="+", default=["ghanet"], help="models to look for with --results-dir"
    )
    parser.add_argument("--model", default="ghanet", help="model of per-fold files not under models/<model>/")
    parser.add_argument(
        "--failure-logs",
        type=Path,
        help="folder of training logs <model>_fold_<k>.log; a missing fold's reason is read from its log",
    )
    parser.add_argument("--cohort", help="cohort name (default: name of the folder above --out-dir)")
    parser.add_argument("--folds", nargs="+", type=int, help="expected folds (default: every fold seen)")
    parser.add_argument("--encoder", help="feature encoder named in the QC summary")
    parser.add_argument("--target-mpp", type=float, help="target µm/px named in the QC summary")
    parser.add_argument("--out-dir", type=Path, help="report folder (default: <results-dir>/report)")
    parser.add_argument("--options", help="JSON object of report options (config section 'report')")
    parser.add_argument(
        "--replaces", type=Path, help="partial report of an earlier failed run: removed once this report is written"
    )
    return parser


def paper_parser() -> argparse.ArgumentParser:
    """Arguments of ``ghanet-wf report paper``."""
    parser = argparse.ArgumentParser(
        prog="ghanet-wf report paper", description="Models x cohorts table from per-cohort cindex.csv files."
    )
    parser.add_argument(
        "--cindex", nargs="+", type=Path, required=True, help="results/<cohort>/report/cindex.csv files"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="writes paper_table.md/.tex/.csv here")
    parser.add_argument("--options", help="JSON object of report options (config section 'report')")
    return parser


def run_cohort_report(args: argparse.Namespace) -> list[Path]:
    """Write every table and figure of one cohort; returns the files written."""
    found = discover_inputs(args.results_dir, args.models) if args.results_dir else {}
    given = {
        key: getattr(args, key) if getattr(args, key) is not None else found.get(key, [])
        for key in (
            "metrics",
            "predictions",
            "training_logs",
            "reconstruction",
            "attention",
            "slides",
            "qc",
            "qc_png",
        )
    }
    out_dir = args.out_dir or (args.results_dir / "report" if args.results_dir else None)
    if out_dir is None:
        raise InputError("report: pass --out-dir (or --results-dir)")
    cohort = args.cohort or out_dir.resolve().parent.name
    options = resolve_options(parse_options(args.options, DEFAULTS, "report"))
    table, test = write_cindex_report(
        given["metrics"],
        given["predictions"],
        out_dir / "cindex.md",
        out_dir / "cindex.csv",
        out_dir / "predictions.csv",
        cohort=cohort,
        folds=args.folds,
        default_model=args.model,
        options=options,
        out_html=out_dir / "cindex.html",
        models=args.models if args.results_dir else None,
        failure_logs=args.failure_logs,
    )
    written = [out_dir / n for n in ("cindex.md", "cindex.html", "cindex.csv", "predictions.csv")]
    written += write_figures(table, test, out_dir, options, given["training_logs"], args.model)
    slides = None
    if given["slides"] or given["qc"]:
        slides = write_failed_slides(
            given["slides"],
            out_dir / "failed_slides.md",
            out_dir / "failed_slides.csv",
            qc_jsons=given["qc"],
            encoder=args.encoder,
            target_mpp=args.target_mpp,
            options=options,
            out_html=out_dir / "failed_slides.html",
        )
        pngs = given["qc_png"] or qc_pngs_next_to(given["qc"])
        written += [out_dir / f"failed_slides.{ext}" for ext in ("md", "html", "csv")]
        written += write_qc_sheet(slides, pngs, out_dir / "qc_contact_sheet.png", options)
    if given["reconstruction"]:
        write_reconstruction_report(
            given["reconstruction"],
            out_dir / "reconstruction.md",
            out_dir / "reconstruction.csv",
            folds=args.folds,
            default_model=args.model,
            options=options,
            out_html=out_dir / "reconstruction.html",
        )
        written += [out_dir / f"reconstruction.{ext}" for ext in ("md", "html", "csv")]
    if given["attention"]:
        written += write_attention_figure(
            given["attention"], out_dir / "attention_heatmaps.png", options, slides, args.model
        )
    return written


def main(argv: list[str]) -> int:
    """``ghanet-wf report ...`` (one cohort) or ``ghanet-wf report paper ...`` (models x cohorts)."""
    try:
        if argv[:1] == ["paper"]:
            args = paper_parser().parse_args(argv[1:])
            out = args.out_dir
            write_paper_table(
                args.cindex,
                out / "paper_table.md",
                out / "paper_table.tex",
                out / "paper_table.csv",
                parse_options(args.options, DEFAULTS, "report"),
                out_html=out / "paper_table.html",
            )
            written = [out / f"paper_table.{ext}" for ext in ("md", "tex", "csv", "html")]
        else:
            args = cohort_parser().parse_args(argv)
            written = run_cohort_report(args)
            if args.replaces is not None:
                shutil.rmtree(args.replaces, ignore_errors=True)
    except InputError as exc:
        print(f"ghanet-wf report: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(f"wrote {p}" for p in written))
    return 0
