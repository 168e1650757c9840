"""Splits stage: patient-level k-fold cross-validation with an inner validation split.

Either the published MCAT split files (``splits_{k}.csv`` with columns ``,train,val``; their
``val`` column is our held-out ``test`` fold) restricted to the cohort, or folds generated with a
seed and stratified by (survival-time bin x censorship). Each training fold gives up a stratified
inner ``val`` part for early stopping or checkpoint selection; the test fold is never used for
any choice. Files: ``results/{cohort}/splits/fold_{k}.csv`` (case_id, split).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from ghanet_workflow.atomic import write_csv
from ghanet_workflow.cohort import read_id_csv
from ghanet_workflow.errors import InputError, listed
from ghanet_workflow.options import parse_options

log = logging.getLogger(__name__)

#: Config options (config section ``splits``).
DEFAULTS: dict = {
    "k": 5,  # number of folds
    "seed": 1,  # seed of the generated folds and of the inner validation split
    "published_dir": None,  # folder with splits_0.csv..splits_{k-1}.csv (MCAT format); null = generate
    "inner_val_fraction": 0.15,  # share of each training fold held out as inner validation (0 = none)
    "n_time_bins": 4,  # survival-time quantile bins used (with censorship) to stratify
}

SPLIT_NAMES = ("train", "val", "test")
#: A test fold with fewer events than this gets a warning (its C-index is very noisy).
FEW_EVENTS = 5


# ----------------------------------------------------------------------------- strata


def strata_labels(patients: pd.DataFrame, n_time_bins: int = 4, min_size: int = 2) -> pd.Series:
    """Stratum per patient: time-bin x censorship; strata smaller than ``min_size`` fall back to censorship.

    Time bins are quantiles of the uncensored times of the patients passed in. These labels only
    balance the folds; they are not the training labels (those come from the training fold only).
    """
    times = patients["survival_months"].to_numpy(dtype=float)
    censored = patients["censorship"].to_numpy(dtype=int)
    event_times = times[censored == 0]
    if event_times.size:
        cuts = np.unique(np.quantile(event_times, np.linspace(0, 1, n_time_bins + 1)[1:-1]))
        bins = np.digitize(times, cuts)
    else:
        bins = np.zeros(len(times), dtype=int)
    labels = pd.Series([f"bin{b}-c{c}" for b, c in zip(bins, censored)], index=patients.index)
    counts = labels.map(labels.value_counts())
    fallback = pd.Series([f"c{c}" for c in censored], index=patients.index)
    return labels.where(counts >= min_size, fallback)


# ----------------------------------------------------------------------------- generation


def generated_test_folds(patients: pd.DataFrame, k: int, seed: int, n_time_bins: int) -> list[list[str]]:
    """Stratified, seeded partition of the patients into ``k`` test folds.

    Strata are time bin x censorship; a cohort too small for them is stratified by censorship
    only, and one too small for that is split unstratified (each fallback is logged).
    """
    if len(patients) < k:
        raise InputError(f"splits: {len(patients)} patients cannot make {k} folds; lower splits.k")
    case_ids = patients.index.to_numpy()
    attempts = [
        ("time bin x censorship", strata_labels(patients, n_time_bins, min_size=k)),
        ("censorship only", patients["censorship"].to_numpy(dtype=int)),
    ]
    for number, (name, labels) in enumerate(attempts):
        try:
            folder = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            return [list(case_ids[test]) for _, test in folder.split(case_ids, labels)]
        except ValueError as exc:
            following = attempts[number + 1][0] if number + 1 < len(attempts) else "no stratification"
            log.warning(
                "splits: %d patients (%d events) cannot make %d folds stratified by %s (%s); using %s",
                len(patients), _n_events(patients), k, name, exc, following,
            )  # fmt: skip
    folder = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [list(case_ids[test]) for _, test in folder.split(case_ids)]


def _n_events(patients: pd.DataFrame) -> int:
    return int((patients["censorship"] == 0).sum())


def inner_validation(
    train: pd.DataFrame, fraction: float, seed: int, n_time_bins: int, fold: int | None = None
) -> list[str]:
    """Case ids of a stratified inner validation part of one training fold (``fraction`` of it).

    Stratified by time bin x censorship (sklearn). A training fold too small for that is split
    by censorship only, keeping at least one event in the training part (and one in the
    validation part when there are two or more); the fallback is logged. InputError when the
    fraction leaves no patient to train on.
    """
    where = "splits" if fold is None else f"splits: fold {fold}"
    n_train, n_events = len(train), _n_events(train)
    if not 0 <= fraction < 1:
        raise InputError(f"{where}: splits.inner_val_fraction is {fraction}; it must be in [0, 1) (0 = none)")
    n_val = int(round(fraction * n_train))
    if fraction == 0 or n_val == 0:
        if fraction > 0:
            log.warning(
                "%s: inner_val_fraction %g of %d training patients rounds to 0; no inner validation part",
                where, fraction, n_train,
            )  # fmt: skip
        return []
    if n_val >= n_train:
        raise InputError(
            f"{where}: splits.inner_val_fraction {fraction} of its {n_train} training patient(s) "
            f"({n_events} event(s)) leaves no patient to train on; lower splits.inner_val_fraction "
            "(0 = no inner validation) or splits.k, or use a larger cohort"
        )
    labels = strata_labels(train, n_time_bins, min_size=2)
    try:
        _, val = train_test_split(train.index.to_numpy(), test_size=n_val, stratify=labels, random_state=seed)
    except ValueError as exc:  # more strata than validation patients, or a stratum of one
        log.warning(
            "%s: %d training patients (%d events) cannot give an inner validation part of %d stratified "
            "by time bin x censorship (%s); stratifying by censorship only",
            where, n_train, n_events, n_val, exc,
        )  # fmt: skip
        val = _censorship_split(train, n_val, seed)
    else:
        if n_events and not (train.loc[~train.index.isin(val), "censorship"] == 0).any():
            val = _censorship_split(train, n_val, seed)  # keep an event to train on (and to fit the bins)
    n_val_events = _n_events(train.loc[list(val)])
    if n_val_events == 0:
        log.warning(
            "%s: the inner validation part (%d of %d training patients) has no event, so its C-index is "
            "undefined (training.select: best_val cannot use it); raise splits.inner_val_fraction, lower "
            "splits.k or use a larger cohort",
            where, n_val, n_train,
        )  # fmt: skip
    return sorted(val)


def _censorship_split(train: pd.DataFrame, n_val: int, seed: int) -> list[str]:
    """``n_val`` seeded validation ids with events in proportion, clipped so both parts can keep one.

    The training part keeps >= 1 event when there is one; the validation part gets >= 1 when
    there are two or more. Needs 1 <= n_val < len(train).
    """
    rng = np.random.default_rng(seed)
    is_event = (train["censorship"] == 0).to_numpy()
    events, censored = train.index[is_event].to_numpy(), train.index[~is_event].to_numpy()
    low = max(1 if len(events) >= 2 else 0, n_val - len(censored))
    high = min(max(len(events) - 1, 0), n_val)
    n_val_events = int(np.clip(round(n_val * len(events) / len(train)), low, high))
    picked = list(rng.permutation(events)[:n_val_events]) + list(rng.permutation(censored)[: n_val - n_val_events])
    return picked


# ----------------------------------------------------------------------------- published files


def read_published_fold(path: Path) -> tuple[list[str], list[str]]:
    """(train, val) case ids of one MCAT split file; blank padding dropped."""
    if not path.is_file():
        raise InputError(f"published split file not found: {path}; check splits.published_dir and splits.k")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # ids as written ('NA', '0001' included)
    missing = [column for column in ("train", "val") if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; MCAT split files have columns ',train,val'")
    train, val = ([value.strip() for value in frame[column] if value.strip()] for column in ("train", "val"))
    both = sorted(set(train) & set(val))
    if both:
        raise InputError(f"{path}: patient(s) in both train and val: {listed(both)}")
    return train, val


def published_test_folds(patients: pd.DataFrame, published_dir: str | Path, k: int) -> list[tuple[list, list]]:
    """(train, test) case ids per fold from ``splits_{i}.csv``, restricted to the cohort's patients.

    Patients named in the files but absent from the cohort (e.g. no usable slide) and cohort
    patients in no file are reported; the latter are left out of every fold.
    """
    folds = [read_published_fold(Path(published_dir) / f"splits_{i}.csv") for i in range(k)]
    cohort = set(patients.index)
    named = set().union(*(set(train) | set(val) for train, val in folds))
    not_in_cohort = sorted(named - cohort)
    not_in_files = sorted(cohort - named)
    if not_in_cohort:
        log.warning(
            "splits: %d patient(s) of the published splits are not in the cohort and are skipped: %s",
            len(not_in_cohort),
            listed(not_in_cohort),
        )
    if not_in_files:
        log.warning(
            "splits: %d cohort patient(s) are in no published split file and are left out: %s",
            len(not_in_files),
            listed(not_in_files),
        )
    return [([c for c in train if c in cohort], [c for c in val if c in cohort]) for train, val in folds]


# ----------------------------------------------------------------------------- assembly + checks


def make_splits(
    patients: pd.DataFrame,
    k: int = 5,
    seed: int = 1,
    published_dir: str | Path | None = None,
    inner_val_fraction: float = 0.15,
    n_time_bins: int = 4,
) -> list[pd.DataFrame]:
    """k folds, each a frame (case_id, split in {train, val, test}); see the module docstring.

    ``patients`` is indexed by case_id (or has a case_id column) with survival_months and censorship.
    """
    patients = _indexed(patients)
    if published_dir:
        train_test = published_test_folds(patients, published_dir, k)
    else:
        tests = generated_test_folds(patients, k, seed, n_time_bins)
        train_test = [(list(patients.index.difference(test, sort=False)), test) for test in tests]
    splits = []
    for fold, (train, test) in enumerate(train_test):
        val = inner_validation(patients.loc[train], inner_val_fraction, seed + fold, n_time_bins, fold=fold)
        splits.append(_fold_frame(train, val, test))
    check_splits(splits, patients, expect_full_cover=not published_dir)
    return splits


def _indexed(patients: pd.DataFrame) -> pd.DataFrame:
    """Patients indexed by case_id, with the columns the splits need."""
    if "case_id" in patients.columns:
        patients = patients.set_index("case_id")
    missing = [column for column in ("survival_months", "censorship") if column not in patients.columns]
    if missing:
        raise InputError(f"splits: patients table lacks column(s) {missing}")
    if patients.index.duplicated().any():
        raise InputError(f"splits: duplicated case_id(s) {listed(patients.index[patients.index.duplicated()])}")
    return patients.assign(censorship=patients["censorship"].astype(int))


def _fold_frame(train: Sequence[str], val: Sequence[str], test: Sequence[str]) -> pd.DataFrame:
    """One fold as (case_id, split) rows: train, then val, then test."""
    val_set = set(val)
    rows = [(c, "train") for c in train if c not in val_set] + [(c, "val") for c in val] + [(c, "test") for c in test]
    return pd.DataFrame(rows, columns=["case_id", "split"])


def check_splits(splits: Sequence[pd.DataFrame], patients: pd.DataFrame, expect_full_cover: bool = True) -> None:
    """Raise InputError unless the folds are patient-level, disjoint and sound; warn on few events.

    Checks: each patient once per fold; test folds pairwise disjoint; test folds cover the
    cohort (or, for published splits, every patient used anywhere); every test fold has events.
    """
    patients = _indexed(patients)
    seen_in_test: dict[str, int] = {}
    for fold, frame in enumerate(splits):
        if frame["case_id"].duplicated().any():
            raise InputError(
                f"fold {fold}: patient(s) listed twice: {listed(frame['case_id'][frame['case_id'].duplicated()])}"
            )
        unknown = sorted(set(frame["case_id"]) - set(patients.index))
        if unknown:
            raise InputError(f"fold {fold}: patient(s) not in the cohort: {listed(unknown)}")
        test = frame.loc[frame["split"] == "test", "case_id"]
        twice = [c for c in test if c in seen_in_test]
        if twice:
            raise InputError(
                f"fold {fold}: patient(s) already in the test set of fold {seen_in_test[twice[0]]}: {listed(twice)}"
            )
        seen_in_test.update(dict.fromkeys(test, fold))
        _check_events(fold, patients.loc[test])
    used = set().union(*(set(frame["case_id"]) for frame in splits))
    must_cover = set(patients.index) if expect_full_cover else used
    uncovered = sorted(must_cover - set(seen_in_test))
    if uncovered:
        raise InputError(f"splits: patient(s) in no test fold: {listed(uncovered)}")


def _check_events(fold: int, test: pd.DataFrame) -> None:
    """A test fold needs events for a C-index; warn below FEW_EVENTS."""
    n_events = int((test["censorship"] == 0).sum())
    if n_events == 0:
        raise InputError(
            f"fold {fold}: the test fold ({len(test)} patients) has no event, so no C-index; "
            "use fewer folds (splits.k) or a larger cohort"
        )
    if n_events < FEW_EVENTS:
        log.warning(
            "fold %d: test fold has only %d event(s) among %d patients; its C-index is very uncertain",
            fold,
            n_events,
            len(test),
        )


def split_summary(splits: Sequence[pd.DataFrame], patients: pd.DataFrame) -> pd.DataFrame:
    """Patients and events per fold and split (for logs and the report)."""
    patients = _indexed(patients)
    rows = []
    for fold, frame in enumerate(splits):
        for name in SPLIT_NAMES:
            members = patients.loc[frame.loc[frame["split"] == name, "case_id"]]
            rows.append(
                {
                    "fold": fold,
                    "split": name,
                    "n_patients": len(members),
                    "n_events": int((members["censorship"] == 0).sum()),
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- files


def write_splits(splits: Sequence[pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Write ``fold_{k}.csv`` (case_id, split) atomically; returns the paths."""
    paths = []
    for fold, frame in enumerate(splits):
        path = Path(out_dir) / f"fold_{fold}.csv"
        write_csv(path, frame[["case_id", "split"]])
        paths.append(path)
    return paths


def read_fold(path: str | Path) -> dict[str, list[str]]:
    """``{'train': [...], 'val': [...], 'test': [...]}`` of one fold file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"fold file not found: {path}; run the splits stage first")
    frame = _read_fold_file(path)
    bad = sorted(set(frame["split"]) - set(SPLIT_NAMES))
    if bad:
        raise InputError(f"{path}: unknown split name(s) {bad}; expected {list(SPLIT_NAMES)}")
    return {name: frame.loc[frame["split"] == name, "case_id"].tolist() for name in SPLIT_NAMES}


def read_splits(out_dir: str | Path, k: int) -> list[pd.DataFrame]:
    """All ``k`` fold files of a folder as frames (case_id, split)."""
    return [_read_fold_file(Path(out_dir) / f"fold_{fold}.csv") for fold in range(k)]


def _read_fold_file(path: Path) -> pd.DataFrame:
    """A fold file as text (case ids exactly as written), checked for its two columns."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in ("case_id", "split") if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; a fold file has columns case_id,split")
    return frame


def existing_splits(out_dir: Path, k: int, patients: pd.DataFrame, published: bool) -> list[pd.DataFrame] | None:
    """Fold files already in ``out_dir`` if all ``k`` exist (None otherwise); they must fit the cohort.

    Reusing them keeps reruns on the same folds; files that no longer match the cohort raise
    InputError instead of being silently replaced (delete them to regenerate).
    """
    paths = [out_dir / f"fold_{fold}.csv" for fold in range(k)]
    if not all(path.is_file() for path in paths):
        return None
    splits = read_splits(out_dir, k)
    try:
        check_splits(splits, patients, expect_full_cover=not published)
    except InputError as exc:
        raise InputError(
            f"existing splits in {out_dir} do not fit the cohort ({exc}); delete the fold_*.csv "
            "files there to make new ones"
        ) from exc
    return splits


def main(argv: list[str]) -> int:
    """``ghanet-wf splits --patients patients.csv --out-dir D [--options JSON]``."""
    parser = argparse.ArgumentParser(prog="ghanet-wf splits", description=__doc__.splitlines()[0])
    parser.add_argument("--patients", required=True, help="patients.csv of the cohort stage")
    parser.add_argument("--out-dir", required=True, help="output folder for fold_{k}.csv")
    parser.add_argument("--options", help="JSON object (or file) with the options of DEFAULTS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = parse_options(args.options, DEFAULTS, "splits")
    patients = _indexed(read_id_csv(args.patients, id_columns=("case_id", "slides")))
    out_dir = Path(args.out_dir)
    splits = existing_splits(out_dir, options["k"], patients, bool(options["published_dir"]))
    if splits is None:
        splits = make_splits(
            patients,
            k=options["k"],
            seed=options["seed"],
            published_dir=options["published_dir"],
            inner_val_fraction=options["inner_val_fraction"],
            n_time_bins=options["n_time_bins"],
        )
        write_splits(splits, out_dir)
    else:
        log.info("reusing the %d fold files in %s", len(splits), out_dir)
    summary = split_summary(splits, patients).pivot(index="fold", columns="split")
    log.info("patients and events per fold:\n%s", summary.to_string())
    return 0
