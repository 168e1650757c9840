"""The comparison product: is a model's C-index different from the reference model's, beyond fold noise?

For each model against the reference (``report.reference_model``, default ``ghanet``), on the
folds where both have test predictions:

- **mean ΔC**: the mean over folds of ``C_model - C_reference`` (Harrell's C of the fold's test
  patients, scikit-survival);
- **corrected resampled t-test** (Nadeau & Bengio 2003, Machine Learning 52:239): the folds'
  training sets overlap, so the plain paired t-test understates the variance of the mean. With k
  fold differences d_j, their sample variance s², and n_test/n_train the mean ratio of test to
  training patients per fold, ``t = mean(d) / sqrt((1/k + n_test/n_train) s²)`` on k - 1 degrees
  of freedom, two-sided;
- **paired bootstrap CI** of the mean ΔC: in each of ``comparison_bootstrap`` replicates, every
  fold's test patients are resampled with replacement (the same resample for both models), ΔC
  recomputed per fold and averaged over folds; the percentile interval at ``comparison_level``
  (a replicate in which some fold has no comparable pair is left out and counted).

Over several cohorts the overall row averages the cohorts' mean ΔC (each cohort weighs the same,
as in the paper table), with the t statistic from the sum of the cohorts' corrected variances
and their pooled degrees of freedom, and the bootstrap replicates averaged the same way.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sksurv.metrics import concordance_index_censored
from tabulate import tabulate

from ..atomic import write_csv, write_text
from ..errors import InputError
from .inputs import index_fold_files, read_predictions
from .options import resolve_options
from .text import DASH, booktabs, fmt_number, html_page, latex_escape

#: columns of comparison.csv
COLUMNS = [
    "cohort", "model", "reference", "n_folds", "mean_delta", "std_delta", "t", "df", "p_value",
    "ci_low", "ci_high", "n_bootstrap", "n_bootstrap_dropped", "significant",
]  # fmt: skip
OVERALL = "Overall"


# ------------------------------------------------------------------------------------ statistics


def harrell(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C (scikit-survival's order: event, time, estimate); NaN without a comparable pair."""
    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # a resample without a comparable pair
            return float(concordance_index_censored(event.astype(bool), time.astype(float), risk.astype(float))[0])
    except (ValueError, ZeroDivisionError):
        return float("nan")


def corrected_ttest(deltas: Sequence[float], test_train_ratio: float) -> tuple[float, float, int, float]:
    """Nadeau & Bengio's corrected resampled t-test of mean(deltas) = 0: (t, two-sided p, df, corrected variance).

    ``test_train_ratio`` is n_test / n_train of one fold (the folds' mean). With fewer than two
    folds, or no spread, t and p are NaN.
    """
    d = np.asarray(deltas, float)
    k = len(d)
    if k < 2:
        return float("nan"), float("nan"), max(k - 1, 0), float("nan")
    variance = (1 / k + test_train_ratio) * d.var(ddof=1)
    if variance <= 0:
        return float("nan"), float("nan"), k - 1, 0.0
    t = d.mean() / np.sqrt(variance)
    return float(t), float(2 * stats.t.sf(abs(t), k - 1)), k - 1, float(variance)


def paired_bootstrap(
    folds: Sequence[tuple[pd.DataFrame, pd.DataFrame]], n: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap replicates of the mean over folds of C(model) - C(reference).

    ``folds``: per fold, the test rows (time, event, risk) of the model and of the reference, on
    the same patients in the same order. Replicate b draws, for fold after fold, ``n_j`` indices
    with ``rng.integers(0, n_j, n_j)``; a replicate with a fold without a comparable pair is NaN.
    """
    replicates = np.empty(n)
    for b in range(n):
        deltas = []
        for model, reference in folds:
            index = rng.integers(0, len(model), len(model))
            event, time = model["event"].to_numpy()[index], model["time"].to_numpy()[index]
            deltas.append(
                harrell(event, time, model["risk"].to_numpy()[index])
                - harrell(event, time, reference["risk"].to_numpy()[index])
            )
        replicates[b] = np.mean(deltas)
    return replicates


def percentile_ci(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the defined replicates (NaN, NaN when none is)."""
    defined = replicates[np.isfinite(replicates)]
    if not len(defined):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


# ------------------------------------------------------------------------------------ inputs


def paired_folds(
    predictions: Mapping[tuple[str, int], Path], model: str, reference: str
) -> tuple[list[tuple[pd.DataFrame, pd.DataFrame]], list[float], list[int]]:
    """Per fold that both models have: their test rows aligned by patient, the test/train ratio, the fold.

    The training fold is every non-test row (train + inner val), as in the evaluate stage. Two
    models' test patients must be the same (same splits); otherwise the comparison would not be
    paired and InputError names the fold.
    """
    pairs, ratios, folds = [], [], []
    for fold in sorted({f for m, f in predictions if m == model} & {f for m, f in predictions if m == reference}):
        frames = [read_predictions(predictions[(name, fold)]) for name in (model, reference)]
        tests = [f[f["split"] == "test"].set_index("case_id").sort_index() for f in frames]
        if list(tests[0].index) != list(tests[1].index):
            raise InputError(
                f"fold {fold}: {model} and {reference} were tested on different patients "
                f"({predictions[(model, fold)]}, {predictions[(reference, fold)]}); "
                "a paired comparison needs the same splits"
            )
        n_train = int((frames[1]["split"] != "test").sum())
        pairs.append((tests[0].reset_index(), tests[1].reset_index()))
        ratios.append(len(tests[1]) / n_train if n_train else float("nan"))
        folds.append(fold)
    return pairs, ratios, folds


# ------------------------------------------------------------------------------------ table


def compare_models(
    predictions_by_cohort: Mapping[str, Iterable[str | Path]],
    reference: str,
    *,
    level: float,
    n_bootstrap: int,
    seed: int,
) -> pd.DataFrame:
    """comparison.csv rows: per cohort (and overall, with more than one cohort) each model vs ``reference``.

    ``predictions_by_cohort``: cohort -> its per-fold predictions.csv files. One generator seeded
    with ``seed`` draws every resample, cohort after cohort and model after model, so a table is
    reproducible from its inputs and options.
    """
    rng = np.random.default_rng(seed)
    rows, replicates, without_reference = [], {}, []
    for cohort, paths in predictions_by_cohort.items():
        files = index_fold_files(paths)
        models = list(dict.fromkeys(m for m, _ in files))
        if reference not in models:  # e.g. a genomic-only cohort beside slide cohorts
            without_reference.append(cohort)
            continue
        for model in (m for m in models if m != reference):
            pairs, ratios, folds = paired_folds(files, model, reference)
            deltas = [
                harrell(m["event"].to_numpy(), m["time"].to_numpy(), m["risk"].to_numpy())
                - harrell(r["event"].to_numpy(), r["time"].to_numpy(), r["risk"].to_numpy())
                for m, r in pairs
            ]
            t, p, df, variance = corrected_ttest(deltas, float(np.mean(ratios)) if ratios else float("nan"))
            boot = paired_bootstrap(pairs, n_bootstrap, rng)
            replicates[(cohort, model)] = boot
            rows.append(
                _row(cohort, model, reference, deltas, t, p, df, variance, boot, level)
            )
    table = pd.DataFrame(rows, columns=[*COLUMNS, "variance"])
    if len(predictions_by_cohort) - len(without_reference) > 1:
        table = pd.concat([table, _overall_rows(table, replicates, reference, level)], ignore_index=True)
    table = table.drop(columns="variance")
    table.attrs["without_reference"] = without_reference
    return table


def _row(cohort, model, reference, deltas, t, p, df, variance, boot, level) -> dict:
    low, high = percentile_ci(boot, level)
    return {
        "cohort": cohort,
        "model": model,
        "reference": reference,
        "n_folds": len(deltas),
        "mean_delta": float(np.mean(deltas)) if deltas else float("nan"),
        "std_delta": float(np.std(deltas, ddof=1)) if len(deltas) > 1 else float("nan"),
        "t": t,
        "df": df,
        "p_value": p,
        "ci_low": low,
        "ci_high": high,
        "n_bootstrap": int(np.isfinite(boot).sum()),
        "n_bootstrap_dropped": int((~np.isfinite(boot)).sum()),
        "significant": bool(np.isfinite(p) and p < 1 - level),
        "variance": variance,
    }


def _overall_rows(table: pd.DataFrame, replicates: dict, reference: str, level: float) -> pd.DataFrame:
    """Per model over the cohorts that have it: mean of the cohorts' mean ΔC, t from the summed variances."""
    rows = []
    for model, group in table.groupby("model", sort=False):
        c = len(group)
        mean = group["mean_delta"].mean()
        variance = group["variance"].sum() / c**2
        df = int(group["df"].sum())
        t = mean / np.sqrt(variance) if variance > 0 else float("nan")
        p = float(2 * stats.t.sf(abs(t), df)) if np.isfinite(t) and df > 0 else float("nan")
        boot = np.mean([replicates[(cohort, model)] for cohort in group["cohort"]], axis=0)
        row = _row(OVERALL, model, reference, list(group["mean_delta"]), float(t), p, df, variance, boot, level)
        rows.append({**row, "n_folds": int(group["n_folds"].sum()), "std_delta": float("nan")})
    return pd.DataFrame(rows)


def comparison_rows(table: pd.DataFrame, decimals: int, esc=str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the human-readable comparison table."""
    pct = 100 * float(table.attrs.get("level", 0.95))
    headers = ["Cohort", "Model", "vs", "Folds", "mean ΔC", f"{pct:g}% CI (bootstrap)", "t", "p"]
    rows = [
        [
            esc(r.cohort),
            esc(r.model),
            esc(r.reference),
            str(r.n_folds),
            fmt_number(r.mean_delta, decimals) + ("*" if r.significant else ""),
            _interval(r.ci_low, r.ci_high, decimals),
            fmt_number(r.t, 2),
            DASH if not np.isfinite(r.p_value) else f"{r.p_value:.3g}",
        ]
        for r in table.itertuples()
    ]
    return headers, rows


def _interval(low, high, decimals: int) -> str:
    """``[-0.466, 0.142]``: a dash between two signed numbers would read as a minus."""
    ends = fmt_number(low, decimals), fmt_number(high, decimals)
    return DASH if DASH in ends else f"[{ends[0]}, {ends[1]}]"


def method_note(options: dict, n_cohorts: int) -> str:
    """The footnote that says how the table was computed."""
    level = float(options["comparison_level"])
    note = (
        f"ΔC: Harrell's C of the model minus that of {options['reference_model']}, per fold on the same test "
        "patients, mean over folds. t, p: corrected resampled t-test (Nadeau & Bengio 2003; variance "
        "× (1/k + n_test/n_train), k - 1 degrees of freedom, two-sided). CI: paired bootstrap of the mean ΔC "
        f"({options['comparison_bootstrap']} resamples of each fold's test patients, the same for both models, "
        f"seed {options['comparison_seed']}). * p < {1 - level:g}."
    )
    if n_cohorts > 1:
        note += " Overall: mean of the cohorts' mean ΔC; its t uses the sum of the cohorts' corrected variances."
    return note


def write_comparison(
    predictions_by_cohort: Mapping[str, Iterable[str | Path]],
    out_dir: Path,
    options: Mapping | None = None,
) -> pd.DataFrame:
    """comparison.{md,csv,tex,html} in ``out_dir``; with a single model, a page saying there is nothing to compare."""
    options = resolve_options(options)
    decimals, level = int(options["decimals"]), float(options["comparison_level"])
    table = compare_models(
        predictions_by_cohort,
        options["reference_model"],
        level=level,
        n_bootstrap=int(options["comparison_bootstrap"]),
        seed=int(options["comparison_seed"]),
    )
    table.attrs["level"] = level
    without = table.attrs["without_reference"]
    note = method_note(options, len(predictions_by_cohort) - len(without))
    if without:
        note = f"Not compared, {options['reference_model']} is not trained there: {', '.join(without)}. " + note
    if table.empty and not without:
        note = f"Only {options['reference_model']} was trained: nothing to compare. " + note
    headers, rows = comparison_rows(table, decimals)
    body = tabulate(rows, headers=headers, tablefmt=options["tablefmt"], disable_numparse=True)
    write_text(out_dir / "comparison.md", f"# Paired model comparison\n\n{body}\n\n{note}\n")
    headers, rows = comparison_rows(table, decimals, html.escape)
    page = tabulate(rows, headers=headers, tablefmt="unsafehtml", disable_numparse=True)
    write_text(out_dir / "comparison.html", html_page("Paired model comparison", f"# Paired model comparison\n\n{page}\n\n{note}\n"))
    headers, rows = comparison_rows(table, decimals, latex_escape)
    latex = booktabs(tabulate(rows, headers=[latex_escape(h) for h in headers], tablefmt="latex_raw", disable_numparse=True))
    latex = latex.replace("ΔC", "$\\Delta C$").replace("*", "$^{*}$")
    write_text(out_dir / "comparison.tex", latex + f"\n% {note}\n")
    write_csv(out_dir / "comparison.csv", table)
    return table
