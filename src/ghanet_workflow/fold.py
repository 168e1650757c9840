"""Per-fold training job: preprocessing on the training patients, training, predictions.

``ghanet-wf train`` runs one (model, fold) job (the GPU job of the workflow): it reads the built
cohort and one fold file, fits the genomic preprocessing and the survival bins on the fold's
TRAINING patients only, trains on the training split with the inner validation split for
monitoring (the test split never reaches :func:`ghanet_workflow.train.train`), and writes
``model.pt``, ``predictions.csv`` of every split and ``train_info.json`` (selected epoch, where it
ran) atomically (docs/CONTRACTS.md). The CPU jobs that follow read those files: metrics
(``ghanet-wf evaluate``, :mod:`ghanet_workflow.metrics`) and test-fold interpretation
(``ghanet-wf interpret``, :mod:`ghanet_workflow.interpret`); so changing evaluation settings
never retrains. :func:`run_fold` chains the three in one process (tests, benchmarks).
``ghanet-wf train --model coxnet`` is a CPU job (:mod:`ghanet_workflow.coxnet`, no slides read)
writing the same files.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import coxnet
from .atomic import write_csv, write_json
from .cohort import load_built_cohort
from .cohort_config import split_model_label
from .errors import InputError
from .feature_store import hold_on_device, open_store
from .model import MODELS
from .model_io import save_model
from .options import parse_options
from .preprocess import fit_fold_preprocessing
from .splits import read_fold
from .train import Case, model_config, predict, resolve_device, resolve_options, train

log = logging.getLogger(__name__)

#: option sections that ``--options`` may hold (config sections of the same names)
OPTION_SECTIONS = ("training", "genomics")
SPLITS = ("train", "val", "test")
TRAIN_INFO_NAME = "train_info.json"
#: files the CPU jobs derive from a training run: stale as soon as the fold trains again, so the
#: training job removes them first (a failed retraining must not leave the old metrics.json looking
#: finished, e.g. to the partial report)
DERIVED_NAMES = ("metrics.json", "reconstruction.csv", "attention.h5")


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
    """Bags of ``case_ids`` held in memory (the jobs read theirs from the feature store,
    :func:`ghanet_workflow.feature_store.open_store`; this is its reference in tests and benchmarks)."""
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


def train_fold(
    cohort_dir: str | Path, fold_csv: str | Path, model_name: str, out_dir: str | Path, options: Mapping | None = None
) -> dict:
    """Preprocess and train one fold of one model and predict every split; returns train_info.

    ``options`` holds the config sections ``training`` and ``genomics`` (preprocessing). Outputs
    in ``out_dir``: preprocessing.json, selected_genes.csv, checkpoint.pt, model.pt,
    training_log.csv, predictions.csv, train_info.json. ``coxnet`` is fitted by
    :func:`ghanet_workflow.coxnet.train_fold` instead (CPU, no checkpoint, preprocessing on
    train + inner val, the training options unused), into the same files.
    """
    if model_name not in MODELS:
        raise InputError(f"unknown model {model_name!r}; choose from {sorted(MODELS)} (config training.models)")
    sections = split_options(options)
    training = resolve_options(sections["training"])
    out_dir = Path(out_dir)
    for name in DERIVED_NAMES:
        if (out_dir / name).exists():
            log.info("removing %s of the previous training run", out_dir / name)
            (out_dir / name).unlink()
    cohort = load_built_cohort(cohort_dir)
    if MODELS[model_name].uses_slides and not cohort.slides["used"].any():
        raise InputError(
            f"{cohort_dir}: a genomic-only cohort (no usable slide), but model {model_name!r} reads slide "
            f"features; train only {sorted(m for m in MODELS if not MODELS[m].uses_slides)} on it"
        )
    fold = read_fold(fold_csv)
    check_fold(fold, cohort.patients.index, fold_csv)
    fold_id = fold_number(fold_csv)
    if model_name == coxnet.MODEL_NAME:  # CPU fit; its preprocessing on train + inner val (coxnet docstring)
        info = coxnet.train_fold(cohort, fold, fold_id, out_dir, sections["genomics"])
        info["runtime"] = runtime_record({"device": "cpu"})
        write_json(out_dir / TRAIN_INFO_NAME, info)
        return info

    train_ids = fold["train"]
    preprocessing = fit_fold_preprocessing(
        cohort.patients.loc[train_ids], cohort.genomics.loc[train_ids], cohort.groups, sections["genomics"]
    )
    preprocessing.to_json(out_dir / "preprocessing.json")
    write_csv(out_dir / "selected_genes.csv", preprocessing.selected_genes_table())

    uses_slides = MODELS[model_name].uses_slides
    fit_ids = train_ids + fold["val"]
    store = open_store(cohort, cohort_dir, training["feature_store_dtype"]) if uses_slides else None
    bags = store.bags(fit_ids) if store else None
    if bags:
        bags = hold_on_device(bags, resolve_device(training["device"]), training["cohort_on_gpu"])
    cases = {split: build_cases(cohort, preprocessing, fold[split], bags) for split in ("train", "val")}
    in_dim = next(iter(bags.values())).shape[1] if bags else 0
    config = model_config(training, in_dim, group_size_list(preprocessing), len(preprocessing.bin_edges) - 1)
    result = train(model_name, config, cases["train"], cases["val"], out_dir, training)

    test_bags = store.bags(fold["test"]) if store else None
    cases["test"] = build_cases(cohort, preprocessing, fold["test"], test_bags)
    predictions = pd.concat(
        [prediction_frame(result.model, cases[s], s, fold_id) for s in SPLITS if cases[s]], ignore_index=True
    )
    cutoff = float(predictions.loc[predictions["split"] != "test", "risk"].median())  # training fold
    save_model(out_dir / "model.pt", model_name, config, result, preprocessing, cutoff, fold_id)
    write_csv(out_dir / "predictions.csv", predictions)
    info = {
        "model": model_name,
        "fold": fold_id,
        "selected_epoch": int(result.selected_epoch),
        "runtime": runtime_record(training),
    }
    write_json(out_dir / TRAIN_INFO_NAME, info)
    return info


def runtime_record(training: Mapping) -> dict:
    """Where the fold ran (provenance in metrics.json): device, the GPU the scheduler exposed, threads."""
    return {
        "device": str(resolve_device(training["device"])),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_fold(
    cohort_dir: str | Path, fold_csv: str | Path, model_name: str, out_dir: str | Path, options: Mapping | None = None
) -> dict:
    """The three jobs of one (model, fold) in one process: train, evaluate, interpret; returns metrics.

    ``options`` may hold ``training``, ``genomics`` and ``evaluation``. Writes every fold output
    of docs/CONTRACTS.md into ``out_dir`` (metrics.json included).
    """
    from .interpret import interpret_fold
    from .metrics import evaluate_fold

    options = dict(options or {})
    evaluation = options.pop("evaluation", None)
    train_fold(cohort_dir, fold_csv, model_name, out_dir, options)
    out_dir = Path(out_dir)
    metrics = evaluate_fold(out_dir, out_dir / "metrics.json", evaluation)
    interpret_fold(cohort_dir, fold_csv, out_dir, out_dir)
    return metrics


# ----------------------------------------------------------------------------- command line


def model_of_label(label: str) -> str:
    """The model of a model label (``ghanet@uni`` -> ``ghanet``); argparse's error for an unknown one."""
    model = split_model_label(label)[0]
    if model not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {model!r} (in {label!r}); choose from {sorted(MODELS)}")
    return model


def main(argv: list[str]) -> int:
    """``ghanet-wf train --cohort-dir D --fold-csv P --model NAME --out-dir D [--options JSON ...]``."""
    parser = argparse.ArgumentParser(prog="ghanet-wf train", description=__doc__.splitlines()[0])
    parser.add_argument("--cohort-dir", required=True, help="folder written by the cohort stage")
    parser.add_argument("--fold-csv", required=True, help="fold_{k}.csv (case_id, split)")
    parser.add_argument(
        "--model",
        required=True,
        type=model_of_label,
        help=f"one of {sorted(MODELS)}, or a model label <model>@<encoder label> (the cohort dir holds that encoder's features)",
    )
    parser.add_argument("--out-dir", required=True)
    parser.add_argument(
        "--options", nargs="+", help="JSON objects (or files) with the config sections training, genomics; merged in order"
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch (the job's allocation); default: torch's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)  # stay inside the CPUs the scheduler gave this job
    log.info("CUDA_VISIBLE_DEVICES=%s", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    options = parse_options(args.options, {section: {} for section in OPTION_SECTIONS}, "train")
    info = train_fold(args.cohort_dir, args.fold_csv, args.model, args.out_dir, options)
    log.info("fold %s, %s: trained (selected epoch %s)", info["fold"], args.model, info["selected_epoch"])
    return 0
