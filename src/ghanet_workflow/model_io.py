"""Trained fold models on disk: ``model.pt`` written by the training job, read by interpretation and prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from .atomic import atomic_path
from .errors import InputError
from .model import MODELS, build_model
from .train import Case

MODEL_NAME = "model.pt"


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


def load_fold_model(model_dir: str | Path, slides_only: bool = True) -> tuple[torch.nn.Module, dict]:
    """The model of ``model_dir/model.pt`` (eval mode, CPU) and its stored metadata.

    ``slides_only`` (prediction for new patients) rejects a model that needs genomics at inference.
    """
    path = Path(model_dir) / MODEL_NAME
    if not path.is_file():
        raise InputError(f"{path} not found; train the fold first (ghanet-wf train)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if slides_only and payload["uses_genomics_at_inference"]:
        raise InputError(
            f"{path}: model {payload['model_name']!r} needs genomics at inference and cannot "
            "predict from slides alone; use a WSI-only model (ghanet, abmil)"
        )
    model = build_model(payload["model_name"], payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


def check_feature_dim(cases: Mapping[str, Case], in_dim: int, model_dir) -> None:
    """Every bag must have the model's feature dimension and at least one patch."""
    for case_id, case in cases.items():
        if case.features.ndim != 2 or case.features.shape[0] == 0 or case.features.shape[1] != in_dim:
            raise InputError(
                f"case {case_id}: features of shape {tuple(case.features.shape)} do not fit the "
                f"model in {model_dir} (needs N >= 1 patches x {in_dim}); use the same encoder"
            )
