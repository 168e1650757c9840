"""Per-fold runner: preprocessing on the training patients, training, prediction, metrics.

``ghanet-wf train`` runs one (model, fold) job: it reads the built cohort and one fold file,
fits the genomic preprocessing and the survival bins on the fold's TRAINING patients only,
trains on the training split with the inner validation split for monitoring (the test split
never reaches :func:`ghanet_workflow.train.train`), predicts every split and writes the fold's
outputs atomically (docs/CONTRACTS.md). :func:`predict_new` applies trained fold models to new
slides without genomics (``ghanet-wf predict``, see :func:`predict_main`).
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_path, write_csv, write_json
from .cohort import load_built_cohort, parse_options
from .errors import InputError
from .metrics import evaluate_predictions
from .model import MODELS, build_model
from .preprocess import fit_fold_preprocessing
from .splits import read_fold
from .train import Case, model_config, predict, resolve_options, train

log = logging.getLogger(__name__)

#: option sections that ``--options`` may hold (config sections of the same names)
OPTION_SECTIONS = ("training", "genomics", "evaluation")
SPLITS = ("train", "val", "test")


def split_options(options: Mapping | None) -> dict[str, dict]:
    """``{'training': {...}, 'genomics': {...}, 'evaluation': {...}}`` from the job options."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_SECTIONS))
    if unknown:
        raise InputError(f"train --options: unknown section(s) {unknown}; expected {list(OPTION_SECTIONS)}")
    return {section: dict(options.get(section) or {}) for section in OPTION_SECTIONS}


def fold_number(fold_csv: str | Path) -> int | str:
    """The k of ``fold_{k}.csv`` (the file stem when it has another name)."""
    match = re.fullmatch(r"fold_(\d+)", Path(fold_csv).stem)
    return int(match.group(1)) if match else Path(fold_csv).stem


def read_bag(feature_paths: Sequence[str], case_id: str) -> torch.Tensor:
    """One patient's bag: the ``features`` datasets of its slides, concatenated (float32)."""
    import h5py

    if not feature_paths:
        raise InputError(f"patient {case_id} has no usable slide; rebuild the cohort (slides.csv 'used')")
    parts = []
    for path in feature_paths:
        try:
            with h5py.File(path, "r") as handle:
                parts.append(np.asarray(handle["features"][()], dtype=np.float32))
        except (OSError, KeyError) as exc:
            raise InputError(
                f"cannot read dataset 'features' of {path} (patient {case_id}): {exc}; "
                "rerun the features stage for this slide"
            ) from exc
    dims = {part.shape[1] for part in parts}
    if len(dims) != 1:
        raise InputError(
            f"patient {case_id}: feature files {list(feature_paths)} have different feature "
            f"dimensions {sorted(dims)}; extract all slides with the same encoder"
        )
    return torch.from_numpy(np.concatenate(parts))


def load_bags(cohort, case_ids: Sequence[str]) -> dict[str, torch.Tensor]:
    """Bags of ``case_ids`` (held in memory for the whole run)."""
    return {case_id: read_bag(cohort.feature_paths(case_id), case_id) for case_id in case_ids}


def check_fold(fold: Mapping[str, list[str]], known: pd.Index, fold_csv: str | Path) -> None:
    """Fold patients must be in the cohort, the splits disjoint and the train split non-empty."""
    listed = [case for split in SPLITS for case in fold[split]]
    unknown = sorted(set(listed) - set(known))
    if unknown:
        raise InputError(
            f"{fold_csv}: patient(s) {unknown[:10]} are not in the built cohort "
            "(no usable slide or not in the table); regenerate the splits"
        )
    if len(set(listed)) != len(listed):
        raise InputError(f"{fold_csv}: a patient appears more than once across train/val/test")
    if not fold["train"]:
        raise InputError(f"{fold_csv}: the train split is empty")


def group_size_list(preprocessing) -> list[int]:
    """Selected genes per group, in group order."""
    sizes = preprocessing.group_sizes
    return [int(n) for n in (sizes.values() if isinstance(sizes, Mapping) else sizes)]


def build_cases(
    cohort, preprocessing, case_ids: Sequence[str], bags: Mapping[str, torch.Tensor] | None
) -> dict[str, Case]:
    """Labelled cases: bag, selected+scaled genes per group, time bin, censorship, time."""
    if not case_ids:
        return {}
    patients = cohort.patients.loc[list(case_ids)]
    genes = preprocessing.transform_genomics(cohort.genomics.loc[list(case_ids)])
    genes = [torch.tensor(np.asarray(values, dtype=np.float32)) for values in genes.values()]
    bins = np.asarray(preprocessing.assign_bins(patients["survival_months"].to_numpy(dtype=float)))
    return {
        case_id: Case(
            features=None if bags is None else bags[case_id],
            genomics=[group[row] for group in genes],
            label=int(bins[row]),
            censorship=float(patients["censorship"].iloc[row]),
            time=float(patients["survival_months"].iloc[row]),
        )
        for row, case_id in enumerate(case_ids)
    }


def prediction_frame(model: torch.nn.Module, cases: Mapping[str, Case], split: str, fold) -> pd.DataFrame:
    """predictions.csv rows of one split: case_id, time, event, risk, surv_*, split, fold."""
    frame = predict(model, cases)
    if frame.empty:
        return frame
    frame.insert(1, "time", [cases[c].time for c in frame["case_id"]])
    frame.insert(2, "event", [int(cases[c].censorship == 0) for c in frame["case_id"]])
    return frame.assign(split=split, fold=fold)


def save_model(path: Path, model_name: str, config: Mapping, result, preprocessing, cutoff: float, fold) -> None:
    """model.pt: final (or selected) weights + everything needed to predict new patients.

    ``cutoff`` is the median risk of the training fold (train + inner val), the metrics' cut-off.
    """
    payload = {
        "model_name": model_name,
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "cutoff": float(cutoff),
        "bin_edges": [float(edge) for edge in preprocessing.bin_edges],
        "fold": fold,
        "selected_epoch": int(result.selected_epoch),
        "uses_genomics_at_inference": bool(MODELS[model_name].uses_genomics_at_inference),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def run_fold(
    cohort_dir: str | Path, fold_csv: str | Path, model_name: str, out_dir: str | Path, options: Mapping | None = None
) -> dict:
    """Preprocess, train, predict and evaluate one fold of one model; returns the metrics dict.

    ``options`` holds the config sections ``training``, ``genomics`` (preprocessing) and
    ``evaluation`` (metrics). Outputs in ``out_dir``: preprocessing.json, selected_genes.csv,
    checkpoint.pt, model.pt, training_log.csv, predictions.csv, metrics.json.
    """
    if model_name not in MODELS:
        raise InputError(f"unknown model {model_name!r}; choose from {sorted(MODELS)} (config training.models)")
    sections = split_options(options)
    training = resolve_options(sections["training"])
    out_dir = Path(out_dir)
    cohort = load_built_cohort(cohort_dir)
    fold = read_fold(fold_csv)
    check_fold(fold, cohort.patients.index, fold_csv)
    fold_id = fold_number(fold_csv)

    train_ids = fold["train"]
    preprocessing = fit_fold_preprocessing(
        cohort.patients.loc[train_ids], cohort.genomics.loc[train_ids], cohort.groups, sections["genomics"]
    )
    preprocessing.to_json(out_dir / "preprocessing.json")
    write_csv(out_dir / "selected_genes.csv", preprocessing.selected_genes_table())

    uses_slides = MODELS[model_name].uses_slides
    fit_ids = train_ids + fold["val"]
    bags = load_bags(cohort, fit_ids) if uses_slides else None
    cases = {split: build_cases(cohort, preprocessing, fold[split], bags) for split in ("train", "val")}
    in_dim = next(iter(bags.values())).shape[1] if bags else 0
    config = model_config(training, in_dim, group_size_list(preprocessing), len(preprocessing.bin_edges) - 1)
    result = train(model_name, config, cases["train"], cases["val"], out_dir, training)

    test_bags = load_bags(cohort, fold["test"]) if uses_slides else None
    cases["test"] = build_cases(cohort, preprocessing, fold["test"], test_bags)
    predictions = pd.concat(
        [prediction_frame(result.model, cases[s], s, fold_id) for s in SPLITS if cases[s]], ignore_index=True
    )
    is_test = predictions["split"] == "test"
    reference = predictions[~is_test]  # the training fold (train + inner val), as metrics expects
    cutoff = float(reference["risk"].median())
    save_model(out_dir / "model.pt", model_name, config, result, preprocessing, cutoff, fold_id)
    write_csv(out_dir / "predictions.csv", predictions)
    metrics = evaluate_predictions(predictions[is_test], reference, preprocessing.bin_edges, sections["evaluation"])
    metrics = {**metrics, "model": model_name, "fold": fold_id, "selected_epoch": result.selected_epoch}
    write_json(out_dir / "metrics.json", metrics)
    return metrics


# ----------------------------------------------------------------------------- prediction on new slides


def load_fold_model(model_dir: str | Path) -> tuple[torch.nn.Module, dict]:
    """The model of ``model_dir/model.pt`` (eval mode, CPU) and its stored metadata."""
    path = Path(model_dir) / "model.pt"
    if not path.is_file():
        raise InputError(f"{path} not found; train the fold first (ghanet-wf train)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload["uses_genomics_at_inference"]:
        raise InputError(
            f"{path}: model {payload['model_name']!r} needs genomics at inference and cannot "
            "predict from slides alone; use a WSI-only model (ghanet, abmil)"
        )
    model = build_model(payload["model_name"], payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


def predict_new(
    model_dirs: Sequence[str | Path], features_by_case: Mapping[str, torch.Tensor | np.ndarray]
) -> pd.DataFrame:
    """Risk of new patients from their patch features alone, over several fold models.

    Returns one row per case: case_id, risk_<fold> per model, risk_mean, risk_std (spread over
    the fold models), high_fraction (share of models whose stored cut-off, the median training
    risk of that fold, calls the case high risk) and risk_group ('high' if the mean risk is
    above the mean cut-off, else 'low').
    """
    if not model_dirs:
        raise InputError("predict: give at least one trained fold model folder")
    cases = {c: Case(torch.as_tensor(np.asarray(f, dtype=np.float32))) for c, f in features_by_case.items()}
    risks, cutoffs = {}, []
    for model_dir in model_dirs:
        model, meta = load_fold_model(model_dir)
        check_feature_dim(cases, meta["config"]["in_dim"], model_dir)
        risks[f"risk_fold_{meta['fold']}"] = predict(model, cases, torch.device("cpu"))["risk"].to_numpy()
        cutoffs.append(meta["cutoff"])
    table = pd.DataFrame(risks)
    per_model = table.to_numpy()
    table.insert(0, "case_id", list(cases))
    table["risk_mean"] = per_model.mean(axis=1)
    table["risk_std"] = per_model.std(axis=1, ddof=1) if per_model.shape[1] > 1 else 0.0
    table["high_fraction"] = (per_model > np.asarray(cutoffs)).mean(axis=1)
    table["risk_group"] = np.where(table["risk_mean"] > np.mean(cutoffs), "high", "low")
    return table


def check_feature_dim(cases: Mapping[str, Case], in_dim: int, model_dir) -> None:
    """Every bag must have the model's feature dimension and at least one patch."""
    for case_id, case in cases.items():
        if case.features.ndim != 2 or case.features.shape[0] == 0 or case.features.shape[1] != in_dim:
            raise InputError(
                f"case {case_id}: features of shape {tuple(case.features.shape)} do not fit the "
                f"model in {model_dir} (needs N >= 1 patches x {in_dim}); use the same encoder"
            )


def read_new_slides(table_path: str | Path) -> dict[str, torch.Tensor]:
    """Bags from a table with columns case_id, features_path (one row per slide)."""
    table = pd.read_csv(table_path, dtype=str)
    missing = {"case_id", "features_path"} - set(table.columns)
    if missing:
        raise InputError(f"{table_path}: missing column(s) {sorted(missing)}; need case_id, features_path")
    return {
        case_id: read_bag(rows["features_path"].tolist(), case_id)
        for case_id, rows in table.groupby("case_id", sort=False)
    }


# ----------------------------------------------------------------------------- command line


def main(argv: list[str]) -> int:
    """``ghanet-wf train --cohort-dir D --fold-csv P --model NAME --out-dir D [--options JSON]``."""
    parser = argparse.ArgumentParser(prog="ghanet-wf train", description=__doc__.splitlines()[0])
    parser.add_argument("--cohort-dir", required=True, help="folder written by the cohort stage")
    parser.add_argument("--fold-csv", required=True, help="fold_{k}.csv (case_id, split)")
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--out-dir", required=True)
    parser.add_argument(
        "--options", help="JSON object (or file) with the config sections training, " "genomics, evaluation"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_options(args.options, {section: {} for section in OPTION_SECTIONS}, "train")
    metrics = run_fold(args.cohort_dir, args.fold_csv, args.model, args.out_dir, options)
    log.info(
        "fold %s, %s: %s",
        metrics["fold"],
        args.model,
        {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    )
    return 0


def predict_main(argv: list[str]) -> int:
    """``ghanet-wf predict --model-dirs D [D ...] --slides CSV --out CSV``."""
    parser = argparse.ArgumentParser(
        prog="ghanet-wf predict", description="risk of new patients from slides alone, over fold models"
    )
    parser.add_argument("--model-dirs", nargs="+", required=True, help="fold folders holding model.pt")
    parser.add_argument("--slides", required=True, help="CSV with case_id, features_path (one row per slide)")
    parser.add_argument("--out", required=True, help="output CSV (one row per patient)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    write_csv(args.out, predict_new(args.model_dirs, read_new_slides(args.slides)))
    return 0
