"""Per-fold runner: preprocessing on the training patients, training, prediction, metrics.

``ghanet-wf train`` runs one (model, fold) job: it reads the built cohort and one fold file,
fits the genomic preprocessing and the survival bins on the fold's TRAINING patients only,
trains on the training split with the inner validation split for monitoring (the test split
never reaches :func:`ghanet_workflow.train.train`), predicts every split and writes the fold's
outputs atomically (docs/CONTRACTS.md). On the test patients it also measures how well the
model reconstructs their genes (``reconstruction.csv``) and, for G-HANet, keeps the CAB token
attention and gated patch weights of the highest- and lowest-risk patients (``attention.h5``).
:func:`predict_new` applies trained fold models to new slides without genomics
(``ghanet-wf predict``, see :func:`predict_main`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Collection
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
from .train import Case, model_config, predict, resolve_device, resolve_options, train

log = logging.getLogger(__name__)

#: option sections that ``--options`` may hold (config sections of the same names)
OPTION_SECTIONS = ("training", "genomics", "evaluation")
SPLITS = ("train", "val", "test")
RECONSTRUCTION_NAME = "reconstruction.csv"
RECONSTRUCTION_COLUMNS = ["group", "gene", "pearson_r", "n_patients"]
ATTENTION_NAME = "attention.h5"
#: test patients taken from each end of the fold's risk ranking for attention.h5
ATTENTION_PATIENTS_PER_END = 2
#: what attention.h5 ``token_attention`` holds (stored as a file attribute)
TOKEN_ATTENTION_MEANING = (
    "CAB round-2 cross-attention of each signature-group token over the patches: softmax over "
    "patches of the head-averaged scaled dot-product logits (rows sum to 1)"
)


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
    checkpoint.pt, model.pt, training_log.csv, predictions.csv, reconstruction.csv,
    attention.h5, metrics.json.
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
    write_test_interpretation(
        out_dir, result.model, cases["test"], predictions[is_test], cohort, preprocessing, model_name, fold_id
    )
    metrics = evaluate_predictions(predictions[is_test], reference, preprocessing.bin_edges, sections["evaluation"])
    metrics = {**metrics, "model": model_name, "fold": fold_id, "selected_epoch": result.selected_epoch}
    write_json(out_dir / "metrics.json", {**metrics, "runtime": runtime_record(training)})
    return metrics


def runtime_record(training: Mapping) -> dict:
    """Where the fold ran (provenance in metrics.json): device, the GPU the scheduler exposed, threads."""
    return {
        "device": str(resolve_device(training["device"])),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------- test-fold interpretation


@torch.no_grad()
def forward_test_cases(
    model: torch.nn.Module, cases: Mapping[str, Case], keep_attention: Collection[str]
) -> dict[str, dict]:
    """Eval-mode outputs per case: ``recon`` (one array per group, empty without a head) and, for the
    cases in ``keep_attention`` whose model has a CAB, ``token_attention`` [G, N] and ``patch_weights`` [N]."""
    device = next(model.parameters()).device
    model.eval()
    outputs = {}
    for case_id, case in cases.items():
        features = None if case.features is None else case.features.to(device)
        out = model(features, [g.to(device) for g in case.genomics])
        kept = {"recon": [r.float().cpu().numpy() for r in out.get("recon", [])]}
        if case_id in keep_attention and "token_attention" in out:
            kept["token_attention"] = out["token_attention"].float().cpu().numpy()
            kept["patch_weights"] = out["patch_weights"].float().cpu().numpy()
        outputs[case_id] = kept
    return outputs


def pearson_columns(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r of each column of two (patients x genes) arrays.

    NaN where it is undefined: fewer than 2 patients, or a column that is constant in either array.
    """
    predicted, true = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    r = np.full(true.shape[1], np.nan)
    if true.shape[0] < 2:
        return r
    defined = (np.ptp(predicted, axis=0) > 0) & (np.ptp(true, axis=0) > 0)
    p = predicted[:, defined] - predicted[:, defined].mean(axis=0)
    t = true[:, defined] - true[:, defined].mean(axis=0)
    r[defined] = np.clip((p * t).sum(axis=0) / np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0)), -1.0, 1.0)
    return r


def reconstruction_table(
    outputs: Mapping[str, dict], cases: Mapping[str, Case], selected: Mapping[str, Sequence[str]]
) -> pd.DataFrame:
    """Per selected gene: Pearson r between reconstructed and true (scaled) values over the given cases.

    Rows: group, gene, pearson_r, n_patients. Empty (header only) for a model without reconstruction.
    """
    case_ids = [case_id for case_id, out in outputs.items() if out["recon"]]
    rows = []
    for index, (group, genes) in enumerate(selected.items()):
        if not genes or not case_ids:
            continue
        predicted = np.stack([outputs[c]["recon"][index] for c in case_ids])
        true = np.stack([cases[c].genomics[index].numpy() for c in case_ids])
        r = pearson_columns(predicted, true)
        rows += [
            {"group": group, "gene": gene, "pearson_r": value, "n_patients": len(case_ids)}
            for gene, value in zip(genes, r)
        ]
    return pd.DataFrame(rows, columns=RECONSTRUCTION_COLUMNS)


def attention_patients(test_predictions: pd.DataFrame, per_end: int = ATTENTION_PATIENTS_PER_END) -> dict[str, str]:
    """case_id -> 'high' or 'low': the ``per_end`` highest- and lowest-risk test patients (highest first)."""
    ranked = test_predictions.sort_values("risk", kind="stable")["case_id"].tolist()
    chosen = {case_id: "high" for case_id in reversed(ranked[-per_end:])}
    for case_id in ranked[:per_end]:
        chosen.setdefault(case_id, "low")
    return chosen


def bag_patches(feature_paths: Sequence[str]) -> dict:
    """Where each patch of a bag comes from, in bag order: level-0 ``coords`` [N, 2], ``slide_index`` [N]
    into ``slide_ids``, and each slide's ``patch_size_level0``. A feature file without ``coords``
    (not written by the features stage) gets coords -1."""
    import h5py

    coords, index, slide_ids, sizes = [], [], [], []
    for position, path in enumerate(feature_paths):
        with h5py.File(path, "r") as handle:
            if "coords" in handle:
                xy = np.asarray(handle["coords"][()], dtype=np.int64).reshape(-1, 2)
            else:
                xy = np.full((handle["features"].shape[0], 2), -1, dtype=np.int64)
            slide_ids.append(str(handle.attrs.get("slide_id", Path(path).stem)))
            sizes.append(int(handle.attrs.get("patch_size_level0", 0)))
        coords.append(xy)
        index.append(np.full(len(xy), position, dtype=np.int32))
    return {
        "coords": np.concatenate(coords) if coords else np.zeros((0, 2), np.int64),
        "slide_index": np.concatenate(index) if index else np.zeros(0, np.int32),
        "slide_ids": slide_ids,
        "patch_size_level0": sizes,
    }


def write_attention_h5(
    path: str | Path, model_name: str, fold, groups: Sequence[str], patients: Sequence[dict]
) -> None:
    """attention.h5: one HDF5 group ``patients/<i>`` per patient (attrs case_id, risk, risk_end, time,
    event, slide_ids, patch_size_level0; datasets token_attention [G, N], patch_weights [N], coords
    [N, 2], slide_index [N]). A model without a CAB writes the file with ``n_patients = 0``."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs.update(
            model=model_name,
            fold=str(fold),
            groups=list(groups),
            n_patients=len(patients),
            token_attention=TOKEN_ATTENTION_MEANING,
            patch_weights="HSB gated-attention weight of each patch (softmax over the patient's patches)",
            selection=f"the {ATTENTION_PATIENTS_PER_END} highest- and lowest-risk test patients of the fold",
        )
        root = handle.create_group("patients")
        for number, patient in enumerate(patients):
            entry = root.create_group(str(number))
            for name in ("token_attention", "patch_weights", "coords", "slide_index"):
                entry.create_dataset(name, data=patient[name], compression="gzip")
            for name in ("case_id", "risk", "risk_end", "time", "event", "slide_ids", "patch_size_level0"):
                entry.attrs[name] = patient[name]


def write_test_interpretation(
    out_dir: Path,
    model: torch.nn.Module,
    test_cases: Mapping[str, Case],
    test_predictions: pd.DataFrame,
    cohort,
    preprocessing,
    model_name: str,
    fold,
) -> None:
    """reconstruction.csv (every model; header only without reconstruction) and attention.h5 of one fold."""
    chosen = attention_patients(test_predictions)
    outputs = forward_test_cases(model, test_cases, chosen)
    selected = preprocessing.selected_columns()
    write_csv(out_dir / RECONSTRUCTION_NAME, reconstruction_table(outputs, test_cases, selected))
    risks = test_predictions.set_index("case_id")["risk"]
    patients = [
        {
            **bag_patches(cohort.feature_paths(case_id)),
            "token_attention": outputs[case_id]["token_attention"],
            "patch_weights": outputs[case_id]["patch_weights"],
            "case_id": case_id,
            "risk": float(risks[case_id]),
            "risk_end": end,
            "time": float(test_cases[case_id].time),
            "event": int(test_cases[case_id].censorship == 0),
        }
        for case_id, end in chosen.items()
        if "token_attention" in outputs[case_id]
    ]
    write_attention_h5(out_dir / ATTENTION_NAME, model_name, fold, list(selected), patients)


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
        "--options", help="JSON object (or file) with the config sections training, genomics, evaluation"
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch (the job's allocation); default: torch's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)  # stay inside the CPUs the scheduler gave this job
    log.info("CUDA_VISIBLE_DEVICES=%s", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
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
