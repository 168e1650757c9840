"""The report's inputs: per-fold files found by their path, metrics.json, predictions.csv.

Each per-fold file's model and fold come from its path ``.../models/<model>/fold_<k>/<file>``
(docs/CONTRACTS.md); a missing or malformed file becomes an InputError naming it, or, for a fold
that did not finish, a reason the tables show.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..cohort import read_id_csv
from ..errors import InputError

#: longest failure reason (characters) quoted from a training log
MAX_REASON_CHARS = 300
#: metrics.json names read as the report's names.
KEY_ALIASES = {"cindex": "cindex_harrell"}
PREDICTION_COLUMNS = ("case_id", "time", "event", "risk", "split", "fold")
#: columns read as exact text from every CSV the report reads
ID_COLUMNS = ("case_id", "slide_id", "slide_key")
_FOLD_DIR = re.compile(r"fold_(\d+)$")


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


def group_by_cohort(paths: Iterable[str | Path]) -> dict[str, list[Path]]:
    """Per-fold files of several cohorts by cohort: the folder above ``models/`` (results/<cohort>/models/...)."""
    groups: dict[str, list[Path]] = {}
    for path in map(Path, paths):
        model_dir = path.parent.parent
        if model_dir.parent.name != "models":
            raise InputError(f"{path}: cannot tell the cohort; expected results/<cohort>/models/<model>/fold_<k>/{path.name}")
        groups.setdefault(model_dir.parent.parent.name, []).append(path)
    return groups


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
    frame = read_csv(path)
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


def read_csv(path: Path) -> pd.DataFrame:
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


def qc_pngs_next_to(qc_jsons: Iterable[str | Path]) -> list[Path]:
    """QC thumbnails laid out as CONTRACTS says: ``tiles/qc/<slide>.png`` next to ``tiles/<slide>.qc.json``."""
    pngs = (Path(p).parent / "qc" / (Path(p).name.removesuffix(".qc.json") + ".png") for p in qc_jsons)
    return [p for p in pngs if p.is_file()]


def qc_pngs_in(folder: Path | None, slides: pd.DataFrame) -> list[Path]:
    """The QC thumbnails ``<folder>/<slide key>.png`` of the slides in the table that have one."""
    if folder is None:
        return []
    return [path for path in (folder / f"{key}.png" for key in slides["slide_key"]) if path.is_file()]


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
