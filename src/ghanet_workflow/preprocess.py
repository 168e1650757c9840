"""Per-fold genomic preprocessing, fit on the training patients of one fold and nothing else.

- Survival bins: ``n_bins`` quantiles of the uncensored training times; outer edges open
  (-inf, +inf) so any test time falls in a bin.
- Gene selection per signature group: Welch t-test (scipy, unequal variances) between high-risk
  (uncensored, bin < n_bins/2) and low-risk (bin >= n_bins/2) training patients; keep p < threshold,
  optionally after Benjamini-Hochberg within the group; a group with no gene kept keeps its
  ``min_genes_per_group`` smallest-p genes, so no reconstruction head is empty.
- Scaler: per-gene standardisation (sklearn StandardScaler: population std, constant gene -> 1).

The caller passes the training patients only; test-fold times or genes cannot enter.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.preprocessing import StandardScaler

from ghanet_workflow.atomic import write_json
from ghanet_workflow.errors import InputError

log = logging.getLogger(__name__)

#: Config options (config section ``genomics``).
DEFAULTS: dict = {
    "n_bins": 4,  # discrete survival-time bins (quantiles of uncensored training times)
    "pvalue_threshold": 0.05,  # keep genes with Welch t-test p below this
    "fdr": False,  # apply Benjamini-Hochberg within each group before the threshold
    "min_genes_per_group": 5,  # a group with no gene kept keeps this many smallest-p genes
    "select_genes": True,  # false = keep every gene column of every group (no t-test)
}

GENE_TABLE_COLUMNS = ["group", "gene", "p_value", "selected"]


@dataclass
class FoldPreprocessing:
    """Everything fit on one training fold: bin edges, per-gene scaler, selected genes."""

    bin_edges: np.ndarray
    means: pd.Series
    scales: pd.Series
    gene_table: pd.DataFrame
    options: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    @property
    def n_bins(self) -> int:
        """Number of survival bins."""
        return len(self.bin_edges) - 1

    def assign_bins(self, times) -> np.ndarray:
        """Bin index (0..n_bins-1) of each time; bin j is [edge_j, edge_j+1)."""
        times = np.asarray(times, dtype=float)
        return np.digitize(times, self.bin_edges[1:-1], right=False).astype(int)

    def selected_columns(self) -> dict[str, list[str]]:
        """Group -> selected gene columns, in table order."""
        kept = self.gene_table[self.gene_table["selected"].astype(bool)]
        groups = dict.fromkeys(self.gene_table["group"].unique())
        return {group: kept.loc[kept["group"] == group, "gene"].tolist() for group in groups}

    @property
    def group_sizes(self) -> dict[str, int]:
        """Group -> number of selected genes (output size of its reconstruction head)."""
        return {group: len(columns) for group, columns in self.selected_columns().items()}

    def transform_genomics(self, genomics: pd.DataFrame) -> dict[str, np.ndarray]:
        """Group -> float32 (patients x selected genes), standardised; rows in the given order."""
        columns = self.selected_columns()
        needed = [column for group in columns.values() for column in group]
        missing = [column for column in dict.fromkeys(needed) if column not in genomics.columns]
        if missing:
            raise InputError(f"genomics lacks {len(missing)} selected gene column(s): {missing[:10]}")
        return {
            group: ((genomics[cols] - self.means[cols]) / self.scales[cols]).to_numpy(dtype=np.float32)
            for group, cols in columns.items()
        }

    def selected_genes_table(self) -> pd.DataFrame:
        """One row per gene column: group, gene, p_value (NaN if untestable), selected."""
        return self.gene_table[GENE_TABLE_COLUMNS].copy()

    def to_json(self, path: str | Path) -> None:
        """Write atomically; the open outer bin edges are implicit (only the inner cuts are stored)."""
        write_json(path, self.to_dict(), sort_keys=False)  # strict JSON: a NaN/inf value becomes null

    def to_dict(self) -> dict:
        """JSON-ready form (NaN p-values as null)."""
        kept = self.gene_table.loc[self.gene_table["selected"].astype(bool), "gene"].unique()
        return {
            "bin_cuts": self.bin_edges[1:-1].tolist(),
            "options": self.options,
            "summary": self.summary,
            "genes": [
                {
                    "group": row.group,
                    "gene": row.gene,
                    "selected": bool(row.selected),
                    "p_value": None if pd.isna(row.p_value) else float(row.p_value),
                }
                for row in self.gene_table.itertuples()
            ],
            "scaler": {gene: [float(self.means[gene]), float(self.scales[gene])] for gene in kept},
        }

    @classmethod
    def from_json(cls, path: str | Path) -> "FoldPreprocessing":
        """Read a file written by :meth:`to_json`."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"preprocessing file not found: {path}; run the train stage of this fold first")
        data = json.loads(path.read_text(encoding="utf-8"))
        genes = pd.DataFrame(data["genes"], columns=GENE_TABLE_COLUMNS)
        genes["p_value"] = genes["p_value"].astype(float)
        genes["selected"] = genes["selected"].astype(bool)
        scaler = pd.DataFrame.from_dict(data["scaler"], orient="index", columns=["mean", "scale"])
        return cls(
            bin_edges=_open_edges(data["bin_cuts"]),
            means=scaler["mean"],
            scales=scaler["scale"],
            gene_table=genes,
            options=data.get("options", {}),
            summary=data.get("summary", {}),
        )


# ----------------------------------------------------------------------------- fitting


def _open_edges(cuts: Sequence[float]) -> np.ndarray:
    """Bin edges with open outer ends."""
    return np.concatenate([[-np.inf], np.asarray(cuts, dtype=float), [np.inf]])


def survival_bin_edges(times: np.ndarray, censorship: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile edges of the uncensored times, outer edges -inf/+inf."""
    event_times = np.asarray(times, dtype=float)[np.asarray(censorship) == 0]
    if event_times.size == 0:
        raise InputError(
            "the training fold has no uncensored patient, so survival bins cannot be made; "
            "use fewer folds or a larger cohort"
        )
    cuts = np.quantile(event_times, np.linspace(0, 1, n_bins + 1)[1:-1])
    if np.any(np.diff(cuts) <= 0):
        log.warning(
            "survival bins: tied quantiles %s among %d event times; some bins are empty",
            cuts.tolist(),
            event_times.size,
        )
    return _open_edges(cuts)


def welch_pvalues(values: np.ndarray, high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Welch t-test p-value per column between the ``high`` and ``low`` rows (NaN when untestable)."""
    if high.sum() < 2 or low.sum() < 2:
        return np.full(values.shape[1], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant genes: NaN p-value, handled by the caller
        return stats.ttest_ind(values[high], values[low], axis=0, equal_var=False).pvalue


def select_group(pvalues: np.ndarray, threshold: float, fdr: bool, min_genes: int) -> np.ndarray:
    """Boolean mask of the kept genes of one group (see module docstring)."""
    tested = np.where(np.isnan(pvalues), 1.0, pvalues)
    if fdr:
        tested = stats.false_discovery_control(tested, method="bh")
    selected = tested < threshold
    if not selected.any():
        best = np.argsort(tested, kind="stable")[: min(min_genes, len(tested))]
        selected[best] = True
    return selected


def fit_fold_preprocessing(
    patients_train: pd.DataFrame,
    genomics_train: pd.DataFrame,
    groups: Mapping[str, Sequence[str]],
    options: Mapping | None = None,
) -> FoldPreprocessing:
    """Fit bins, gene selection and scaler on the training patients passed in (and only those).

    ``patients_train``: indexed by case_id (or a case_id column) with survival_months, censorship.
    ``genomics_train``: indexed by case_id, holding every column of ``groups``.
    """
    options = {**DEFAULTS, **(options or {})}
    patients, genomics = _aligned(patients_train, genomics_train, groups)
    times = patients["survival_months"].to_numpy(dtype=float)
    censorship = patients["censorship"].to_numpy(dtype=int)
    edges = survival_bin_edges(times, censorship, options["n_bins"])
    bins = np.digitize(times, edges[1:-1])
    high = (censorship == 0) & (bins < options["n_bins"] // 2)
    low = bins >= options["n_bins"] // 2
    gene_table = _gene_table(genomics, groups, high, low, options)
    kept = gene_table.loc[gene_table["selected"], "gene"].unique()
    scaler = StandardScaler().fit(genomics[kept].to_numpy(dtype=float))
    summary = {
        "n_train": len(patients),
        "n_events": int((censorship == 0).sum()),
        "n_high_risk": int(high.sum()),
        "n_low_risk": int(low.sum()),
        "bin_counts": np.bincount(bins, minlength=options["n_bins"]).tolist(),
    }
    return FoldPreprocessing(
        bin_edges=edges,
        means=pd.Series(scaler.mean_, index=kept),
        scales=pd.Series(scaler.scale_, index=kept),
        gene_table=gene_table,
        options=dict(options),
        summary=summary,
    )


def _aligned(patients: pd.DataFrame, genomics: pd.DataFrame, groups: Mapping) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Patients and their genomics rows in the same order; checks ids and columns."""
    if "case_id" in patients.columns:
        patients = patients.set_index("case_id")
    if "case_id" in genomics.columns:
        genomics = genomics.set_index("case_id")
    missing_rows = patients.index.difference(genomics.index)
    if len(missing_rows):
        raise InputError(f"genomics lacks training patient(s) {list(missing_rows[:10])}")
    columns = list(dict.fromkeys(column for members in groups.values() for column in members))
    missing_columns = [column for column in columns if column not in genomics.columns]
    if missing_columns:
        raise InputError(f"genomics lacks gene column(s) of the groups: {missing_columns[:10]}")
    return patients, genomics.loc[patients.index, columns]


def _gene_table(
    genomics: pd.DataFrame, groups: Mapping[str, Sequence[str]], high: np.ndarray, low: np.ndarray, options: Mapping
) -> pd.DataFrame:
    """Per group and gene: Welch p-value and whether it is kept."""
    if options["select_genes"] and (high.sum() < 2 or low.sum() < 2):
        log.warning(
            "gene selection: %d high-risk and %d low-risk training patients (need >= 2 each); "
            "every group keeps its min_genes_per_group first genes",
            high.sum(),
            low.sum(),
        )
    frames = []
    for group, columns in groups.items():
        columns = list(columns)
        pvalues = welch_pvalues(genomics[columns].to_numpy(dtype=float), high, low)
        if options["select_genes"]:
            selected = select_group(
                pvalues, options["pvalue_threshold"], options["fdr"], options["min_genes_per_group"]
            )
        else:
            selected = np.ones(len(columns), dtype=bool)
        frames.append(pd.DataFrame({"group": group, "gene": columns, "p_value": pvalues, "selected": selected}))
    return pd.concat(frames, ignore_index=True)
