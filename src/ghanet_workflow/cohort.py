"""Cohort stage: validate the MCAT-format clinical/genomic table and pool slides per patient.

Input is one row per slide (``case_id``, ``slide_id``, ``survival_months``, ``censorship`` with
1 = censored, optional clinical columns, then gene columns ``<gene>_mut``/``_cnv``/``_rnaseq``)
plus ``signatures.csv`` (one column per signature group, one gene symbol per cell).

Output (``results/{cohort}/cohort/``, see docs/CONTRACTS.md): ``patients.csv``,
``genomics.csv.gz``, ``groups.json`` and ``slides.csv``. A patient keeps the slides that were
processed successfully; a patient with no usable slide left is dropped and reported, never
turned into a placeholder. A genomic-only cohort (``--genomic-only``: no slide is read) keeps
every patient of the (filtered) table and writes slides.csv without rows; only the models that
read no slide features (``MODELS[name].uses_slides`` False: snn, coxnet) can train on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ghanet_workflow.atomic import write_csv, write_json
from ghanet_workflow.errors import InputError, listed
from ghanet_workflow.options import parse_options
from ghanet_workflow.slides import h5_attrs, slide_key

log = logging.getLogger(__name__)

#: Config options of this stage (top-level config key ``filters``).
DEFAULTS: dict = {
    # column -> allowed values; keep only slides (rows) whose value is listed, e.g. {oncotree_code: [IDC]}
    "filters": {},
}

REQUIRED_COLUMNS = ("case_id", "slide_id", "survival_months", "censorship")
GENE_COLUMN = re.compile(r"^(?P<gene>.+)_(?P<kind>mut|cnv|rnaseq)$")
SLIDE_STATUS_COLUMNS = ("slide_id", "status", "reason", "n_patches", "features_path")
#: columns of slides.csv
SLIDE_TABLE_COLUMNS = ("slide_id", "case_id", *SLIDE_STATUS_COLUMNS[1:], "used")
#: gzip settings of genomics.csv.gz: fast, and byte-identical on reruns (no timestamp).
GZIP = {"method": "gzip", "compresslevel": 1, "mtime": 0}
#: Identifier columns: read as exact text, never as numbers, booleans or missing values.
ID_COLUMNS = ("case_id", "slide_id")
#: pandas' default missing-value markers (read_csv documentation); only non-identifier columns get them.
NA_MARKERS = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip


@dataclass
class BuiltCohort:
    """A cohort as written by :func:`build_cohort`.

    ``patients``: indexed by case_id (survival_months, censorship, n_slides, slides);
    ``genomics``: indexed by case_id, one float column per gene column of any group;
    ``groups``: group -> gene columns; ``slides``: one row per slide with its status.
    """

    patients: pd.DataFrame
    genomics: pd.DataFrame
    groups: dict[str, list[str]]
    slides: pd.DataFrame

    def feature_paths(self, case_id: str) -> list[str]:
        """Feature files of the usable slides of one patient (the patient's bag)."""
        rows = self.slides[(self.slides["case_id"] == case_id) & self.slides["used"]]
        return rows["features_path"].astype(str).tolist()


# ----------------------------------------------------------------------------- helpers


def _row_refs(table: pd.DataFrame, mask: pd.Series) -> str:
    """Name offending rows as 'line N (slide_id S)'; line 1 is the header."""
    refs = [
        f"line {position + 2} (slide_id {table['slide_id'].iloc[position]!s})"
        for position in np.flatnonzero(mask.to_numpy())
    ]
    return listed(refs)


def read_id_csv(path: str | Path, id_columns: Sequence[str] = ID_COLUMNS, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` with the identifier columns kept exactly as written.

    Columns of ``id_columns`` present in the file are read as str without missing-value markers,
    so ``0001``, ``01`` vs ``1``, ``1e5``, ``TRUE`` or ``NA`` stay those strings (an empty cell is
    ""). Every other column keeps pandas' default type inference and missing-value markers.
    ``kwargs`` go to ``read_csv`` (``compression``, ``sep``, ``dtype`` for other columns...).
    """
    header_kwargs = {key: kwargs[key] for key in ("compression", "sep", "encoding") if key in kwargs}
    columns = list(pd.read_csv(path, nrows=0, **header_kwargs).columns)
    ids = [column for column in columns if column in set(id_columns)]
    dtype = kwargs.pop("dtype", None)
    if dtype is None or isinstance(dtype, dict):  # (a single dtype such as str applies to every column)
        dtype = {**(dtype or {}), **dict.fromkeys(ids, str)}
    na_values = {column: list(NA_MARKERS) for column in columns if column not in ids}
    return pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=na_values, **kwargs)


# ----------------------------------------------------------------------------- clinical table


def read_clinical_table(path: str | Path) -> pd.DataFrame:
    """Read and validate an MCAT-format table (plain or zipped CSV), one row per slide.

    Raises InputError naming the offending rows/columns for: missing required columns,
    missing ids, non-numeric/negative/missing times, censorship not in {0, 1}, duplicated slide
    ids, and a patient whose slides disagree on survival_months or censorship. Returns the table
    with ``case_id``/``slide_id`` as str, ``survival_months`` float and ``censorship`` int.
    """
    path = Path(path)
    table = _read_table_file(path)
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise InputError(
            f"{path}: missing required column(s) {missing}; an MCAT-format table needs "
            f"{list(REQUIRED_COLUMNS)} (censorship 1 = censored). Found: {listed(table.columns)}"
        )
    table = table.copy()
    _check_ids(table, path)
    table["survival_months"] = _checked_times(table, path)
    table["censorship"] = _checked_censorship(table, path)
    _check_duplicated_slides(table, path)
    _check_patient_consistency(table, path)
    return table


def _read_table_file(path: Path) -> pd.DataFrame:
    """Load the CSV (compression inferred from the name: .zip, .gz...)."""
    if not path.is_file():
        raise InputError(f"clinical table not found: {path}; set 'clinical' in the config to an existing file")
    try:
        table = read_id_csv(path, compression="infer")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{path}: cannot be read as a CSV table ({exc})") from exc
    if table.empty:
        raise InputError(f"{path}: the table has no rows")
    return table


def _check_ids(table: pd.DataFrame, path: Path) -> None:
    """case_id and slide_id must be present on every row; they become stripped strings."""
    for column in ("case_id", "slide_id"):
        blank = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if blank.any():
            lines = listed(np.flatnonzero(blank.to_numpy()) + 2)
            raise InputError(f"{path}: column '{column}' is empty on line(s) {lines}; every slide row needs one")
        table[column] = table[column].astype(str).str.strip()


def _checked_times(table: pd.DataFrame, path: Path) -> pd.Series:
    """survival_months as float; reject missing, non-numeric, infinite or negative values."""
    times = pd.to_numeric(table["survival_months"], errors="coerce").astype(float)
    bad = times.isna() | ~np.isfinite(times)
    if bad.any():
        raise InputError(
            f"{path}: column 'survival_months' is missing or not a number on {_row_refs(table, bad)}; "
            "fix these rows or remove them"
        )
    negative = times < 0
    if negative.any():
        raise InputError(f"{path}: column 'survival_months' is negative on {_row_refs(table, negative)}")
    return times


def _checked_censorship(table: pd.DataFrame, path: Path) -> pd.Series:
    """censorship as int in {0, 1} (1 = censored)."""
    values = pd.to_numeric(table["censorship"], errors="coerce")
    bad = ~values.isin([0, 1])
    if bad.any():
        raise InputError(
            f"{path}: column 'censorship' must be 0 (event) or 1 (censored); bad value on " f"{_row_refs(table, bad)}"
        )
    return values.astype(int)


def _check_duplicated_slides(table: pd.DataFrame, path: Path) -> None:
    """Each slide may be listed once."""
    duplicated = table["slide_id"].duplicated(keep=False)
    if duplicated.any():
        raise InputError(
            f"{path}: duplicated slide_id on {_row_refs(table, duplicated)}; each slide must be listed once"
        )


def _check_patient_consistency(table: pd.DataFrame, path: Path) -> None:
    """All slides of a patient must carry the same survival time and censorship."""
    distinct = table.groupby("case_id")[["survival_months", "censorship"]].nunique()
    conflicting = distinct[(distinct > 1).any(axis=1)].index
    if len(conflicting):
        details = [
            f"{case}: "
            + "; ".join(
                f"{row.slide_id} -> {row.survival_months} months, censorship {row.censorship}"
                for row in table[table["case_id"] == case].itertuples()
            )
            for case in conflicting
        ]
        raise InputError(
            f"{path}: patient(s) with conflicting survival_months/censorship across their slides: "
            f"{listed(details, 5)}; make the rows of each patient agree"
        )


# ----------------------------------------------------------------------------- signatures


def read_signatures(path: str | Path) -> dict[str, list[str]]:
    """Read ``signatures.csv``: group -> unique gene symbols (file order, blanks dropped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"signatures file not found: {path}; set 'signatures' in the config")
    frame = pd.read_csv(path, dtype=str)
    signatures = {
        str(group).strip(): list(dict.fromkeys(frame[group].dropna().str.strip().loc[lambda s: s != ""]))
        for group in frame.columns
    }
    empty = [group for group, genes in signatures.items() if not genes]
    if not signatures or empty:
        raise InputError(f"{path}: every column must list gene symbols; empty group(s): {empty or 'no columns'}")
    return signatures


def gene_groups(columns: Sequence[str], signatures: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Group -> the table's gene columns (``<gene>_mut/_cnv/_rnaseq``) of that group, in table order.

    Only columns named like a gene column can enter; clinical columns (``train``, ``site``,
    ``age``...) never do, and no matching gene column is dropped. A group matching no column
    raises InputError (it would give an empty reconstruction head).
    """
    parsed = [(column, GENE_COLUMN.match(str(column))) for column in columns]
    gene_columns = [(column, match.group("gene")) for column, match in parsed if match]
    groups = {}
    for group, genes in signatures.items():
        wanted = set(genes)
        groups[group] = [column for column, gene in gene_columns if gene in wanted]
    empty = [group for group, members in groups.items() if not members]
    if empty:
        raise InputError(
            f"no gene column of signature group(s) {empty} is in the table; gene columns must be named "
            "<gene>_mut, <gene>_cnv or <gene>_rnaseq with the symbols of signatures.csv"
        )
    return groups


# ----------------------------------------------------------------------------- filters


def apply_filters(table: pd.DataFrame, filters: Mapping | None, source: str = "clinical table") -> pd.DataFrame:
    """Keep the rows whose value in each filter column is one of the allowed values.

    Numeric columns compare numerically (``is_female: [1]`` matches 1.0), others as stripped text.
    """
    for column, allowed in (filters or {}).items():
        if column not in table.columns:
            raise InputError(
                f"filter on column '{column}': no such column in the {source}; " f"columns: {listed(table.columns)}"
            )
        values = list(allowed) if isinstance(allowed, (list, tuple, set)) else [allowed]
        keep = _filter_mask(table[column], values)
        if not keep.any():
            present = listed(sorted(table[column].dropna().astype(str).unique()))
            raise InputError(f"filter {column}: {values} keeps no row of the {source}; values present: {present}")
        log.info("filter %s in %s keeps %d of %d slide rows", column, values, keep.sum(), len(table))
        table = table[keep]
    return table


def _filter_mask(column: pd.Series, values: list) -> pd.Series:
    """Boolean mask of the rows whose value is in ``values``."""
    if pd.api.types.is_numeric_dtype(column):
        wanted = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
        return column.isin(wanted)
    return column.astype(str).str.strip().isin([str(value).strip() for value in values])


# ----------------------------------------------------------------------------- slide status


def slide_status_from_features(feature_h5_paths: Sequence[str | Path]) -> pd.DataFrame:
    """One status row per per-slide feature HDF5 file (attrs status/reason/slide_id, rows of features).

    A file that cannot be read becomes a ``failed`` row with the reason, so the run goes on.
    """
    return pd.DataFrame(
        [_feature_file_status(Path(path)) for path in feature_h5_paths], columns=list(SLIDE_STATUS_COLUMNS)
    )


def _feature_file_status(path: Path) -> dict:
    """Status row of one feature file."""
    import h5py

    row = {"slide_id": path.stem, "status": "failed", "reason": "", "n_patches": 0, "features_path": str(path)}
    try:
        with h5py.File(path, "r") as handle:
            attrs = {key: str(value) for key, value in h5_attrs(handle).items()}
            n_patches = int(handle["features"].shape[0]) if "features" in handle else 0
    except (OSError, KeyError) as exc:
        row["reason"] = f"cannot read features file {path}: {exc}"
        return row
    row.update(
        slide_id=attrs.get("slide_id") or path.stem,
        status=attrs.get("status", "ok" if n_patches else "failed") or "failed",
        reason=attrs.get("reason", ""),
        n_patches=n_patches,
    )
    return row


def _checked_slide_status(slide_status: pd.DataFrame) -> pd.DataFrame:
    """Validate the slide status frame and add its ``key`` column."""
    missing = [column for column in SLIDE_STATUS_COLUMNS if column not in slide_status.columns]
    if missing:
        raise InputError(f"slide status table: missing column(s) {missing}; need {list(SLIDE_STATUS_COLUMNS)}")
    status = slide_status.loc[:, list(SLIDE_STATUS_COLUMNS)].copy()
    status["slide_id"] = status["slide_id"].astype(str).str.strip()
    status["reason"] = status["reason"].fillna("").astype(str)
    status["status"] = status["status"].fillna("failed").astype(str)
    status["n_patches"] = pd.to_numeric(status["n_patches"], errors="coerce").fillna(0).astype(int)
    status["key"] = status["slide_id"].map(slide_key)
    duplicated = status["key"].duplicated(keep=False)
    if duplicated.any():
        raise InputError(f"slide status table: slide(s) listed twice: {listed(status.loc[duplicated, 'slide_id'])}")
    return status


def slide_table(table: pd.DataFrame, slide_status: pd.DataFrame) -> pd.DataFrame:
    """Join the table's slides with their processing status (slides.csv).

    Columns: slide_id, case_id, status, reason, n_patches, features_path, used. A slide of the
    table without a status row is ``missing``; an ``ok`` slide with 0 patches is not used; a
    processed slide that the table does not list is kept with an empty case_id (not used).
    """
    status = _checked_slide_status(slide_status).set_index("key")
    listed = table[["slide_id", "case_id"]].copy()
    listed["key"] = listed["slide_id"].map(slide_key)
    joined = listed.join(status.drop(columns="slide_id"), on="key")
    absent = joined["status"].isna()
    joined.loc[absent, "status"] = "missing"
    joined.loc[absent, "reason"] = "no features for this slide: the file is absent on disk or was not processed"
    joined["n_patches"] = joined["n_patches"].fillna(0).astype(int)
    joined["features_path"] = joined["features_path"].fillna("")
    joined["used"] = (joined["status"] == "ok") & (joined["n_patches"] > 0)
    empty_ok = (joined["status"] == "ok") & (joined["n_patches"] == 0)
    joined.loc[empty_ok, "reason"] = "0 patches"
    extra = status[~status.index.isin(listed["key"])].assign(case_id="", used=False)
    extra["reason"] = (extra["reason"] + "; not in the clinical table").str.lstrip("; ")
    columns = list(SLIDE_TABLE_COLUMNS)
    return pd.concat([joined[columns], extra.reset_index(drop=True)[columns]], ignore_index=True)


# ----------------------------------------------------------------------------- patients, genomics


def genomic_only_slides() -> pd.DataFrame:
    """slides.csv of a genomic-only cohort: its columns, no row."""
    slides = pd.DataFrame({column: pd.Series(dtype=str) for column in SLIDE_TABLE_COLUMNS})
    return slides.astype({"n_patches": int, "used": bool})


def patient_table(table: pd.DataFrame, slides: pd.DataFrame, keep_all: bool = False) -> pd.DataFrame:
    """One row per patient with at least one usable slide (patients.csv columns); every patient of
    the table with ``keep_all`` (a genomic-only cohort: n_slides 0, slides "")."""
    used = slides[slides["used"].astype(bool)]
    bags = used.groupby("case_id", sort=False)["slide_id"].agg(list)
    first = table.drop_duplicates("case_id").set_index("case_id")
    keep = np.ones(len(first), bool) if keep_all else first.index.isin(bags.index)
    patients = first.loc[keep, ["survival_months", "censorship"]].copy()
    bags = pd.Series([bags.get(case, []) for case in patients.index], index=patients.index, dtype=object)
    patients["n_slides"] = bags.map(len).astype(int)
    patients["slides"] = bags.map(";".join)
    patients.index.name = "case_id"
    return patients


def genomics_matrix(
    table: pd.DataFrame, groups: Mapping[str, list[str]], case_ids: Sequence[str], source: str
) -> pd.DataFrame:
    """Patients x gene columns (union of the groups, table order), checked numeric and finite.

    The gene values of a patient must be identical on all of its slide rows.
    """
    wanted = set().union(*map(set, groups.values()))
    columns = [column for column in table.columns if column in wanted]
    rows = table[table["case_id"].isin(case_ids)]
    values = rows[columns].copy()
    text_columns = [column for column in columns if not pd.api.types.is_numeric_dtype(values[column])]
    values[text_columns] = values[text_columns].apply(pd.to_numeric, errors="coerce")
    values = values.astype(float)
    bad = ~np.isfinite(values.to_numpy(dtype=float))
    if bad.any():
        bad_columns = [columns[j] for j in np.flatnonzero(bad.any(axis=0))]
        raise InputError(
            f"{source}: gene column(s) {listed(bad_columns)} hold missing or non-numeric values "
            f"on {_row_refs(rows.reset_index(drop=True), pd.Series(bad.any(axis=1)))}"
        )
    values.index = pd.Index(rows["case_id"].to_numpy(), name="case_id")
    first = values.groupby(level="case_id", sort=False).transform("first")
    conflicting = values.index[(values != first).any(axis=1)].unique()
    if len(conflicting):
        raise InputError(
            f"{source}: patient(s) {listed(conflicting)} have different gene values on different "
            "slide rows; a patient's genomics must be the same on all its rows"
        )
    return values[~values.index.duplicated()].loc[list(case_ids)].copy()


def build_cohort(
    clinical_path: str | Path,
    signatures_path: str | Path,
    slide_status: pd.DataFrame | None,
    out_dir: str | Path,
    filters: Mapping | None = None,
) -> None:
    """Validate the inputs and write patients.csv, genomics.csv.gz, groups.json, slides.csv.

    ``slide_status`` has one row per processed slide (slide_id, status, reason, n_patches,
    features_path). Patients left with no usable slide are dropped with a warning and appear in
    slides.csv with their slides' reasons. ``slide_status`` None: a genomic-only cohort, every
    patient of the filtered table kept, slides.csv with no row.
    """
    out_dir = Path(out_dir)
    full_table = read_clinical_table(clinical_path)
    table = apply_filters(full_table, filters, str(clinical_path))
    groups = gene_groups(list(table.columns), read_signatures(signatures_path))
    if slide_status is None:
        slides = genomic_only_slides()
    else:
        slides = slide_table(table, _without_filtered(slide_status, full_table, table))
    patients = patient_table(table, slides, keep_all=slide_status is None)
    _report_dropped(table, patients, slides)
    if patients.empty:
        raise InputError(f"{clinical_path}: no patient has a usable slide; see the slide reasons above")
    genomics = genomics_matrix(table, groups, list(patients.index), str(clinical_path))
    write_csv(out_dir / "patients.csv", patients.reset_index())
    write_csv(out_dir / "genomics.csv.gz", genomics.reset_index(), compression=GZIP)
    write_json(out_dir / "groups.json", groups, sort_keys=False)  # keeps the signature order
    write_csv(out_dir / "slides.csv", slides)
    log.info(
        "cohort: %d patients, %d events, %d slides used of %d listed",
        len(patients),
        int((patients["censorship"] == 0).sum()),
        int(slides["used"].sum()),
        len(slides),
    )


def _without_filtered(slide_status: pd.DataFrame, full_table: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    """Drop the status rows of slides the filters excluded (they are neither used nor failures)."""
    excluded = set(full_table["slide_id"].map(slide_key)) - set(kept["slide_id"].map(slide_key))
    is_excluded = slide_status["slide_id"].astype(str).map(slide_key).isin(excluded)
    if is_excluded.any():
        log.info("%d processed slide(s) excluded by the cohort filters", int(is_excluded.sum()))
    return slide_status[~is_excluded]


def _report_dropped(table: pd.DataFrame, patients: pd.DataFrame, slides: pd.DataFrame) -> None:
    """Warn about slides not used and patients dropped because no slide remains."""
    unused = slides[~slides["used"]]
    for row in unused.itertuples():
        log.warning("slide %s (patient %s) not used: %s: %s", row.slide_id, row.case_id or "-", row.status, row.reason)
    dropped = sorted(set(table["case_id"]) - set(patients.index))
    if dropped:
        log.warning("%d patient(s) dropped, none of their slides is usable: %s", len(dropped), listed(dropped))


def load_built_cohort(cohort_dir: str | Path) -> BuiltCohort:
    """Read a cohort folder written by :func:`build_cohort`."""
    cohort_dir = Path(cohort_dir)
    files = {name: cohort_dir / name for name in ("patients.csv", "genomics.csv.gz", "groups.json", "slides.csv")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise InputError(f"cohort folder incomplete, missing {missing}; run the cohort stage first")
    patients = read_id_csv(files["patients.csv"], id_columns=("case_id", "slides")).set_index("case_id")
    genomics = read_id_csv(files["genomics.csv.gz"], id_columns=("case_id",)).set_index("case_id").astype(float)
    groups = json.loads(files["groups.json"].read_text(encoding="utf-8"))
    slides = pd.read_csv(
        files["slides.csv"],
        dtype={"slide_id": str, "case_id": str, "reason": str, "features_path": str},
        keep_default_na=False,
    )
    slides["used"] = slides["used"].astype(str).str.lower() == "true"
    if list(genomics.index) != list(patients.index):
        raise InputError(f"{cohort_dir}: genomics.csv.gz and patients.csv list different patients; rebuild")
    return BuiltCohort(patients=patients, genomics=genomics, groups=groups, slides=slides)


# ----------------------------------------------------------------------------- command line


def main(argv: list[str]) -> int:
    """``ghanet-wf cohort --clinical P --signatures P (--features H5... | --slide-status CSV | --genomic-only) --out-dir D``."""
    parser = argparse.ArgumentParser(prog="ghanet-wf cohort", description=__doc__.splitlines()[0])
    parser.add_argument("--clinical", required=True, help="MCAT-format table (.csv or .csv.zip)")
    parser.add_argument("--signatures", required=True, help="signatures.csv (one column per group)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", nargs="+", help="per-slide feature HDF5 files (status read from attrs)")
    source.add_argument("--slide-status", help="CSV with slide_id,status,reason,n_patches,features_path")
    source.add_argument(
        "--genomic-only", action="store_true",
        help="no slides: keep every patient of the table, slides.csv without rows (models snn, coxnet only)",
    )
    parser.add_argument("--out-dir", required=True, help="output folder (results/<cohort>/cohort)")
    parser.add_argument("--options", help="JSON object (or file) with the options of DEFAULTS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = parse_options(args.options, DEFAULTS, "cohort")
    if args.genomic_only:
        status = None
    elif args.features:
        status = slide_status_from_features(args.features)
    else:
        status = pd.read_csv(args.slide_status, dtype={"slide_id": str}, keep_default_na=False)
    build_cohort(args.clinical, args.signatures, status, args.out_dir, filters=options["filters"])
    return 0
