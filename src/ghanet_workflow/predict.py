"""``ghanet-wf predict``: risks of new patients from their slides alone, over the trained fold models.

The new slides come as a table (case_id, slide_id; the workflow also reads path and an optional
mpp to tile them). Their patch features, extracted with the encoder and tiling options the
models were trained with, are read from ``features_dir/<slide key>.h5`` (CONTRACTS layout) or
from a ``features_path`` column. No clinical or genomic table is read: G-HANet (and ABMIL)
predict from patch features alone.

Every fold model ``<models_from>/models/<model>/fold_<k>/model.pt`` scores every patient (all
the patient's usable slides pooled into one bag). One row per patient: the per-fold risks, their
mean and spread (sample SD over the folds), the share of fold models whose stored cut-off (the
median training risk of that fold) calls the patient high risk, and the risk group: ``high``
when the mean risk is above the mean of the stored cut-offs. A patient with no usable slide gets
a row with empty risks, status ``no_usable_slide`` and the slides' reasons, so one bad slide
never stops a batch.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import torch

from .atomic import write_csv
from . import slide_table
from .errors import InputError
from .model_io import check_feature_dim, load_fold_model
from .options import parse_options
from .slide_table import fold_model_dirs
from .slides import h5_attrs, slide_key
from .train import Case, predict, resolve_device

log = logging.getLogger(__name__)

#: config section ``predict``
DEFAULTS: dict = {
    "slides": None,  # table of the new slides: case_id, slide_id, path, optional mpp (read by the workflow)
    "cohort": None,  # the run's cohort whose models score the new slides (null: the first; read by the workflow)
    "models_from": None,  # results folder of the trained cohort (null: predict.cohort's, trained if needed)
    "model": "ghanet",  # WSI-only model whose fold models predict: ghanet or abmil
    "device": "auto",  # auto (CUDA when present) | cpu | cuda
}
#: keys of DEFAULTS that ``ghanet-wf predict --options`` takes (the others are command-line paths)
RUN_OPTIONS = ("device",)
#: feature-file attributes that must match between the training slides and the new slides
MATCHING_ATTRS = ("encoder", "feature_dim", "target_mpp", "patch_size")
USABLE = "ok"


@dataclass(frozen=True)
class FoldModel:
    """One trained fold model and what prediction needs from its model.pt."""

    folder: Path
    fold: int | str
    model: torch.nn.Module
    cutoff: float
    in_dim: int


@dataclass(frozen=True)
class SlideFeatures:
    """The patch features of one slide (0 rows when the slide is unusable) and its file attributes."""

    slide_id: str
    features: np.ndarray
    status: str
    reason: str
    attrs: dict


# ----------------------------------------------------------------------------- inputs


def resolve_options(options: Mapping | None) -> dict:
    """The run options (:data:`RUN_OPTIONS`) over their defaults; an unknown key raises InputError."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise InputError(f"predict options: unknown key(s) {unknown}; known: {list(RUN_OPTIONS)}")
    return {**{key: DEFAULTS[key] for key in RUN_OPTIONS}, **options}


def read_slide_table(path: str | Path) -> pd.DataFrame:
    """The new-slide table (CSV or TSV): case_id, slide_id and optionally path, mpp, features_path.

    Read and checked by :func:`ghanet_workflow.slide_table.read_predict_slides`, as the workflow
    does when it starts; every cell is text, identifiers as written.
    """
    return slide_table.read_predict_slides(path, key=None)


def feature_paths(slides: pd.DataFrame, features_dir: str | Path | None) -> list[Path]:
    """Feature file of each slide row: its ``features_path`` or ``features_dir/<slide key>.h5``."""
    if "features_path" in slides.columns and (slides["features_path"] != "").all():
        return [Path(p) for p in slides["features_path"]]
    if features_dir is None:
        raise InputError("predict: give --features-dir (or a features_path column in the slide table)")
    return [Path(features_dir) / f"{slide_key(s)}.h5" for s in slides["slide_id"]]


def missing_slides(slides: pd.DataFrame, paths: Sequence[Path]) -> dict[int, str]:
    """Row position -> reason, for slides whose file (column ``path``) and feature file are both absent.

    The workflow does not tile a new slide whose file is missing (it warns); such a slide is
    reported in its patient's row instead of stopping the batch.
    """
    if "path" not in slides.columns:
        return {}
    missing = {}
    for position, (slide_path, features) in enumerate(zip(slides["path"], paths)):
        text = "" if pd.isna(slide_path) else str(slide_path).strip()
        if text and not Path(text).expanduser().is_file() and not Path(features).is_file():
            missing[position] = f"{text} not found"
    return missing


def check_feature_files(slide_ids: Sequence[str], paths: Sequence[Path]) -> None:
    """Every slide must have its feature file before any patient is scored; the missing ones are named."""
    missing = [f"slide {slide_id}: {path}" for slide_id, path in zip(slide_ids, paths) if not path.is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} feature file(s) not found ({'; '.join(missing[:10])}); extract the new slides' "
            "features first (snakemake predict) or fix --features-dir / the features_path column"
        )


def read_slide_features(path: Path, slide_id: str) -> SlideFeatures:
    """Features and attributes of one slide's HDF5 file; an unreadable file raises InputError."""
    try:
        with h5py.File(path, "r") as handle:
            features = np.asarray(handle["features"][()], dtype=np.float32)
            attrs = h5_attrs(handle)
    except (OSError, KeyError) as exc:
        raise InputError(f"slide {slide_id}: cannot read dataset 'features' of {path} ({exc}); re-extract it") from exc
    status, reason = str(attrs.get("status") or USABLE), str(attrs.get("reason", ""))
    if status == USABLE and not len(features):
        status, reason = "failed", "the feature file holds no patch"
    return SlideFeatures(slide_id, features, status, reason, attrs)


def load_fold_models(model_dirs: Sequence[str | Path], device: torch.device) -> list[FoldModel]:
    """Every fold model (WSI-only models only) on ``device``; all must take the same feature dimension."""
    if not model_dirs:
        raise InputError("predict: give at least one trained fold model folder")
    models = []
    for folder in map(Path, model_dirs):
        model, meta = load_fold_model(folder)
        models.append(
            FoldModel(folder, meta["fold"], model.to(device), float(meta["cutoff"]), meta["config"]["in_dim"])
        )
    dims = {m.in_dim: m.folder for m in models}
    if len(dims) > 1:
        raise InputError(f"fold models take different feature dimensions {dims}; use models of one trained cohort")
    return models


def training_feature_attrs(model_dir: Path) -> dict | None:
    """Attributes of one feature file the fold models were trained on, or None if it cannot be found.

    The training cohort is ``results/<cohort>/cohort`` for a model in
    ``results/<cohort>/models/<model>/fold_<k>``; its relative feature paths are taken from the
    current folder or from the folder holding ``results/`` (the training run's working folder).
    """
    parents = model_dir.resolve().parents
    if len(parents) < 5:
        return None
    slides_csv = parents[2] / "cohort" / "slides.csv"
    if not slides_csv.is_file():
        return None
    table = pd.read_csv(slides_csv, dtype=str, keep_default_na=False)
    for listed in map(Path, table.loc[table["status"] == USABLE, "features_path"]):
        for path in (listed, parents[4] / listed):
            if path.is_file():
                with h5py.File(path, "r") as handle:
                    return h5_attrs(handle)
    return None


def check_matching_features(slide: SlideFeatures, reference: Mapping | None, path: Path) -> None:
    """The new slide's encoder, dimension and patch geometry must equal those of the training slides."""
    if reference is None:
        return
    different = {
        key: (slide.attrs[key], reference[key])
        for key in MATCHING_ATTRS
        if key in slide.attrs and key in reference and not _same(slide.attrs[key], reference[key])
    }
    if different:
        details = ", ".join(f"{key} {new!r} (training {old!r})" for key, (new, old) in different.items())
        raise InputError(
            f"slide {slide.slide_id}: features {path} differ from the training features: {details}; "
            "extract the new slides with the features and tiling options the models were trained with"
        )


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    return str(a) == str(b)


# ----------------------------------------------------------------------------- prediction


def fold_risks(models: Sequence[FoldModel], bag: torch.Tensor, case_id: str, device: torch.device) -> np.ndarray:
    """Risk of one patient's bag under every fold model."""
    case = {case_id: Case(bag)}
    risks = []
    for fold_model in models:
        check_feature_dim(case, fold_model.in_dim, fold_model.folder)
        risks.append(float(predict(fold_model.model, case, device)["risk"].iloc[0]))
    return np.asarray(risks)


def summarise(per_fold: np.ndarray, cutoffs: np.ndarray) -> dict:
    """Mean risk, spread over the folds, share of folds calling it high, and the risk group."""
    mean = float(per_fold.mean())
    return {
        "risk_mean": mean,
        "risk_std": float(per_fold.std(ddof=1)) if len(per_fold) > 1 else 0.0,
        "high_fraction": float((per_fold > cutoffs).mean()),
        "risk_cutoff": float(cutoffs.mean()),
        "risk_group": "high" if mean > cutoffs.mean() else "low",
    }


def patient_row(
    case_id: str, slides: Sequence[SlideFeatures], models: Sequence[FoldModel], device: torch.device
) -> dict:
    """The output row of one patient (empty risks and the reasons when no slide is usable)."""
    usable = [s for s in slides if s.status == USABLE]
    row = {
        "case_id": case_id,
        "n_slides": len(slides),
        "n_slides_used": len(usable),
        "n_patches": int(sum(len(s.features) for s in usable)),
    }
    if not usable:
        reasons = "; ".join(f"{s.slide_id}: {s.status}: {s.reason}" for s in slides)
        log.warning("patient %s has no usable slide (%s); its risk is left empty", case_id, reasons)
        return {**row, "status": "no_usable_slide", "reason": reasons}
    bag = torch.from_numpy(np.concatenate([s.features for s in usable]))
    per_fold = fold_risks(models, bag, case_id, device)
    cutoffs = np.asarray([m.cutoff for m in models])
    return {
        **row,
        **{f"risk_fold_{m.fold}": risk for m, risk in zip(models, per_fold)},
        **summarise(per_fold, cutoffs),
        "status": USABLE,
        "reason": "",
    }


def output_columns(models: Sequence[FoldModel]) -> list[str]:
    """Column order of risks.csv."""
    return [
        "case_id",
        "n_slides",
        "n_slides_used",
        "n_patches",
        *[f"risk_fold_{m.fold}" for m in models],
        "risk_mean",
        "risk_std",
        "high_fraction",
        "risk_cutoff",
        "risk_group",
        "status",
        "reason",
    ]


def predict_slides(
    slides: pd.DataFrame,
    model_dirs: Sequence[str | Path],
    features_dir: str | Path | None = None,
    options: Mapping | None = None,
) -> pd.DataFrame:
    """risks.csv of the new slides in ``slides`` (see :func:`read_slide_table`), one row per patient.

    Patients are scored one at a time (one bag in memory), each fold model loaded once.
    """
    options = resolve_options(options)
    device = resolve_device(str(options["device"]))
    models = load_fold_models(model_dirs, device)
    reference = training_feature_attrs(models[0].folder)
    if reference is None:
        log.warning("training features of %s not found: encoder and tiling are not checked", models[0].folder)
    paths = feature_paths(slides, features_dir)
    missing = missing_slides(slides, paths)
    present = [i for i in range(len(slides)) if i not in missing]
    check_feature_files([slides["slide_id"].iloc[i] for i in present], [paths[i] for i in present])
    rows = []
    for case_id, group in slides.assign(_path=paths, _row=range(len(slides))).groupby("case_id", sort=False):
        patient_slides = []
        for slide_id, path, row in zip(group["slide_id"], group["_path"], group["_row"]):
            reason = missing.get(int(row))
            if reason is not None:
                log.warning("slide %s of patient %s: slide file %s; not scored", slide_id, case_id, reason)
                patient_slides.append(SlideFeatures(slide_id, np.zeros((0, 0), np.float32), "missing", reason, {}))
                continue
            slide = read_slide_features(path, slide_id)
            if slide.status == USABLE:
                check_matching_features(slide, reference, path)
            patient_slides.append(slide)
        rows.append(patient_row(str(case_id), patient_slides, models, device))
    table = pd.DataFrame(rows, columns=output_columns(models))
    log.info(
        "predicted %d of %d patient(s) with %d fold model(s)",
        int((table["status"] == USABLE).sum()),
        len(table),
        len(models),
    )
    return table


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``ghanet-wf predict``."""
    parser = argparse.ArgumentParser(prog="ghanet-wf predict", description=__doc__.splitlines()[0])
    parser.add_argument("--slides", required=True, help="new-slide table: case_id, slide_id (+ path, mpp)")
    parser.add_argument("--features-dir", help="folder of the new slides' <slide key>.h5 feature files")
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--models-from", help="results folder of a trained cohort (with --model)")
    models.add_argument("--model-dirs", nargs="+", help="fold folders holding model.pt")
    parser.add_argument("--model", default=DEFAULTS["model"], help="model name under <models-from>/models/")
    parser.add_argument("--out", required=True, help="output CSV, one row per patient (risks.csv)")
    parser.add_argument("--options", nargs="+", help=f"JSON objects (or files) with {list(RUN_OPTIONS)}; merged in order")
    return parser


def main(argv: list[str]) -> int:
    """``ghanet-wf predict --slides T (--models-from D [--model M] | --model-dirs D...) --features-dir D --out CSV``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = resolve_options(parse_options(args.options, what="predict"))
    model_dirs = args.model_dirs or fold_model_dirs(args.models_from, args.model)
    table = predict_slides(read_slide_table(args.slides), model_dirs, args.features_dir, options)
    write_csv(args.out, table)
    return 0
