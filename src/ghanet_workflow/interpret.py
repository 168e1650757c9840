"""Test-fold interpretation of one trained fold model: gene reconstruction and attention.

``ghanet-wf interpret`` runs one (model, fold) job on the CPU after training: it loads the fold's
``model.pt`` and ``preprocessing.json``, runs the model on every TEST patient with all patches,
and writes ``reconstruction.csv`` (Pearson r between reconstructed and true scaled genes, per
selected gene, and ``group_r``: the r of the group score, the mean of the group's selected scaled
genes, reconstructed against true; header only for a model without a reconstruction head) and ``attention.h5`` (the
CAB token attention and gated patch weights of the highest- and lowest-risk test patients, for
G-HANet; ``n_patients = 0`` otherwise). Nothing here feeds training or model selection.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_path, write_csv
from .cohort import load_built_cohort
from .feature_store import open_store
from .fold import build_cases, check_fold
from .model import MODELS
from .model_io import load_fold_model
from .preprocess import FoldPreprocessing
from .slides import h5_attrs
from .splits import read_fold
from .train import Case

log = logging.getLogger(__name__)

RECONSTRUCTION_NAME = "reconstruction.csv"
RECONSTRUCTION_COLUMNS = ["group", "gene", "pearson_r", "n_patients", "group_r"]
ATTENTION_NAME = "attention.h5"
#: test patients taken from each end of the fold's risk ranking for attention.h5
ATTENTION_PATIENTS_PER_END = 2
#: what attention.h5 ``token_attention`` holds (stored as a file attribute)
TOKEN_ATTENTION_MEANING = (
    "CAB round-2 cross-attention of each signature-group token over the patches: softmax over "
    "patches of the head-averaged scaled dot-product logits (rows sum to 1)"
)


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

    Rows: group, gene, pearson_r, n_patients, group_r (the same on every row of a group: Pearson r
    between the reconstructed and the true group score, the mean over the group's selected scaled
    genes). Empty (header only) for a model without reconstruction.
    """
    case_ids = [case_id for case_id, out in outputs.items() if out["recon"]]
    rows = []
    for index, (group, genes) in enumerate(selected.items()):
        if not genes or not case_ids:
            continue
        predicted = np.stack([outputs[c]["recon"][index] for c in case_ids])
        true = np.stack([cases[c].genomics[index].numpy() for c in case_ids])
        r = pearson_columns(predicted, true)
        group_r = float(pearson_columns(predicted.mean(axis=1, keepdims=True), true.mean(axis=1, keepdims=True))[0])
        rows += [
            {"group": group, "gene": gene, "pearson_r": value, "n_patients": len(case_ids), "group_r": group_r}
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
            attrs = h5_attrs(handle)
            slide_ids.append(str(attrs.get("slide_id", Path(path).stem)))
            sizes.append(int(attrs.get("patch_size_level0", 0)))
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


def interpret_fold(cohort_dir: str | Path, fold_csv: str | Path, model_dir: str | Path, out_dir: str | Path) -> None:
    """reconstruction.csv and attention.h5 of one trained fold (model.pt, preprocessing.json and
    predictions.csv in ``model_dir``), on the CPU, from the test patients' full bags."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, meta = load_fold_model(model_dir, slides_only=False)
    cohort = load_built_cohort(cohort_dir)
    fold = read_fold(fold_csv)
    check_fold(fold, cohort.patients.index, fold_csv)
    preprocessing = FoldPreprocessing.from_json(model_dir / "preprocessing.json")
    predictions = pd.read_csv(model_dir / "predictions.csv", dtype={"case_id": str})
    test_predictions = predictions[predictions["split"] == "test"]
    uses_slides = MODELS[meta["model_name"]].uses_slides
    bags = open_store(cohort, cohort_dir).bags(fold["test"]) if uses_slides else None
    test_cases = build_cases(cohort, preprocessing, fold["test"], bags)
    write_test_interpretation(
        out_dir, model, test_cases, test_predictions, cohort, preprocessing, meta["model_name"], meta["fold"]
    )


def main(argv: list[str]) -> int:
    """``ghanet-wf interpret --cohort-dir D --fold-csv P --model-dir D [--out-dir D] [--threads N]``."""
    parser = argparse.ArgumentParser(prog="ghanet-wf interpret", description=__doc__.splitlines()[0])
    parser.add_argument("--cohort-dir", required=True, help="folder written by the cohort stage")
    parser.add_argument("--fold-csv", required=True, help="fold_{k}.csv (case_id, split)")
    parser.add_argument("--model-dir", required=True, help="the fold's training outputs (model.pt, ...)")
    parser.add_argument("--out-dir", help="where to write (default: --model-dir)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (the job's allocation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    interpret_fold(args.cohort_dir, args.fold_csv, args.model_dir, args.out_dir or args.model_dir)
    log.info("wrote %s and %s", RECONSTRUCTION_NAME, ATTENTION_NAME)
    return 0
