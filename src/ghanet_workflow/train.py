"""Training loop shared by every model: in-memory bags, balanced sampling, resumable checkpoints.

One patient = one bag (N x D float32 tensor held in memory for the whole run) + its selected
genes per group + its time bin and censorship. Batch size 1 with gradient accumulation;
class-balanced sampling over (bin x censorship) with replacement from a seeded
``torch.Generator``; at most ``max_patches`` random patches per bag at training (all at
evaluation). A checkpoint (model, optimiser, generator and RNG states, epoch, log rows) is
written atomically after every epoch; a rerun with the same options resumes from it and, on
CPU, ends with exactly the weights (and so predictions) of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_path, write_csv
from .errors import InputError
from .losses import total_loss
from .metrics import harrell_cindex
from .model import NETWORKS, build_model

log = logging.getLogger(__name__)

#: config section ``training``
DEFAULTS: dict = {
    "models": ["ghanet"],  # models to train per fold: ghanet, abmil, snn, abmil_snn, coxnet (read by the workflow)
    "epochs": 20,  # training epochs; the reported model is the last epoch's (see select)
    "lr": 2e-4,  # Adam learning rate (constant)
    "weight_decay": 1e-5,  # Adam weight decay
    "grad_accum": 32,  # patients per optimiser step (batch size 1); the remainder steps at epoch end
    "max_patches": 4096,  # random patches per bag at training (all patches at evaluation)
    "recon_weight": 0.3,  # weight of the gene-reconstruction loss (SCE^3 + MSE, summed over groups)
    "alpha": 0.0,  # extra weight of the uncensored term of the NLL survival loss
    "dropout": 0.25,  # dropout rate of every model
    "seed": 1,  # seed of initialisation, sampling and dropout (set per fold)
    "device": "auto",  # auto (CUDA when present) | cpu | cuda
    "amp": False,  # bf16 autocast on CUDA (ignored on CPU)
    "select": "final",  # final | best_val: epoch with the best inner-validation C-index (never the test fold)
    "hidden_dim": 512,  # model width (patch projections, tokens)
    "n_heads": 4,  # attention heads of ghanet (head size = hidden_dim / n_heads)
    "topk_ratio": 0.2,  # ghanet's share of patches per hyperedge (at least 1 patch)
    "feature_store_dtype": "float32",  # float32 | float16: dtype of the cohort's packed features (feature_store)
    "cohort_on_gpu": "never",  # never | auto (when the bags take at most half the GPU's free memory) | always
}

#: options that do not change the weights of a given epoch (left out of the resume hash): a finished
#: run extended to more epochs resumes, since the learning rate is constant
_NOT_HASHED = {"models", "device", "epochs", "cohort_on_gpu"}
LOG_COLUMNS = ["epoch", "loss_surv", "loss_sce", "loss_mse", "loss_total", "val_cindex", "seconds"]
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "training_log.csv"


@dataclass(frozen=True)
class Case:
    """One patient as the models see it. Labels are None for prediction-only cases."""

    features: torch.Tensor | None
    genomics: Sequence[torch.Tensor] = ()
    label: int | None = None
    censorship: float | None = None
    time: float | None = None


@dataclass
class TrainResult:
    """The trained model (final epoch, or best inner-val epoch if ``select: best_val``) and its log."""

    model: torch.nn.Module
    log: pd.DataFrame
    selected_epoch: int
    device: torch.device
    options: dict = field(default_factory=dict)


def resolve_options(options: Mapping | None) -> dict:
    """DEFAULTS overlaid with ``options``; unknown keys or bad values raise InputError."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise InputError(f"unknown training option(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **options}
    if merged["select"] not in {"final", "best_val"}:
        raise InputError(f"training.select must be 'final' or 'best_val', got {merged['select']!r}")
    if merged["device"] not in {"auto", "cpu", "cuda"}:
        raise InputError(f"training.device must be auto, cpu or cuda, got {merged['device']!r}")
    if merged["cohort_on_gpu"] not in {"never", "auto", "always"}:
        raise InputError(f"training.cohort_on_gpu must be never, auto or always, got {merged['cohort_on_gpu']!r}")
    if merged["feature_store_dtype"] not in {"float32", "float16"}:
        raise InputError(f"training.feature_store_dtype must be float32 or float16, got {merged['feature_store_dtype']!r}")
    for key in ("epochs", "grad_accum", "max_patches"):
        if int(merged[key]) < 1:
            raise InputError(f"training.{key} must be >= 1, got {merged[key]!r}")
    return merged


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU raises InputError."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("training.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_config(options: Mapping, in_dim: int, group_sizes: Sequence[int], n_bins: int) -> dict:
    """Constructor keywords for :func:`ghanet_workflow.model.build_model` from the training options.

    The same keys (``model.SHARED_OPTIONS``) for every model; each takes those it declares.
    """
    return {
        "in_dim": int(in_dim),
        "group_sizes": [int(n) for n in group_sizes],
        "n_bins": int(n_bins),
        "hidden_dim": int(options["hidden_dim"]),
        "n_heads": int(options["n_heads"]),
        "dropout": float(options["dropout"]),
        "topk_ratio": float(options["topk_ratio"]),
    }


def run_hash(
    model_name: str, config: Mapping, options: Mapping, train_cases: Mapping[str, Case], val_ids: Sequence[str]
) -> str:
    """Fingerprint of everything that determines the training trajectory (for safe resume)."""
    signature = {
        "model": model_name,
        "config": dict(config),
        "options": {k: v for k, v in sorted(options.items()) if k not in _NOT_HASHED},
        "train": [
            [cid, c.label, c.censorship, None if c.features is None else list(c.features.shape)]
            for cid, c in train_cases.items()
        ],
        "val": list(val_ids),
    }
    return hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()


def balanced_weights(cases: Sequence[Case]) -> torch.Tensor:
    """Sampling weight per case = 1 / size of its (bin, censorship) class."""
    classes = [(c.label, c.censorship) for c in cases]
    counts = {cls: classes.count(cls) for cls in set(classes)}
    return torch.tensor([1.0 / counts[cls] for cls in classes], dtype=torch.double)


def subsample_patches(features: torch.Tensor, max_patches: int, generator: torch.Generator) -> torch.Tensor:
    """At most ``max_patches`` rows, drawn without replacement with ``generator``."""
    if features.shape[0] <= max_patches:
        return features
    return features[torch.randperm(features.shape[0], generator=generator)[:max_patches]]


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op context otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(
    features: torch.Tensor | None, genomics: Sequence[torch.Tensor], device: torch.device
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Features and genomics of one case on ``device``."""
    features = None if features is None else features.to(device, non_blocking=True)
    return features, [g.to(device, non_blocking=True) for g in genomics]


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cases: Sequence[Case],
    generator: torch.Generator,
    options: Mapping,
    device: torch.device,
) -> dict[str, float]:
    """One epoch of balanced sampling with replacement; returns the mean of each loss term."""
    model.train()
    order = torch.multinomial(balanced_weights(cases), len(cases), replacement=True, generator=generator)
    grad_accum = int(options["grad_accum"])
    sums = {k: torch.zeros((), device=device) for k in ("surv", "sce", "mse", "total")}
    optimizer.zero_grad(set_to_none=True)
    for step, index in enumerate(order.tolist(), start=1):
        case = cases[index]
        features = (
            None if case.features is None else subsample_patches(case.features, int(options["max_patches"]), generator)
        )
        features, genomics = to_device(features, case.genomics, device)
        with autocast(device, bool(options["amp"])):
            outputs = model(features, genomics)
        losses = total_loss(
            outputs, case.label, case.censorship, genomics, float(options["recon_weight"]), float(options["alpha"])
        )
        (losses["total"] / grad_accum).backward()
        if step % grad_accum == 0 or step == len(order):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for key, value in losses.items():
            sums[key] += value.detach()
    return {key: value.item() / len(order) for key, value in sums.items()}


@torch.no_grad()
def predict(
    model: torch.nn.Module, cases: Mapping[str, Case], device: torch.device | None = None, amp: bool = False
) -> pd.DataFrame:
    """Risk and survival curve per case (all patches, eval mode): case_id, risk, surv_0..surv_{B-1}."""
    device = device or next(model.parameters()).device
    model.eval()
    rows = []
    for case_id, case in cases.items():
        features, genomics = to_device(case.features, case.genomics, device)
        with autocast(device, amp):
            outputs = model(features, genomics)
        surv = outputs["surv"].float().cpu().numpy()
        rows.append(
            {"case_id": case_id, "risk": float(outputs["risk"]), **{f"surv_{k}": float(s) for k, s in enumerate(surv)}}
        )
    return pd.DataFrame(rows)


def concordance(cases: Mapping[str, Case], predictions: pd.DataFrame) -> float:
    """Harrell's C-index of ``predictions.risk`` on labelled ``cases``; NaN if undefined."""
    if not cases:
        return math.nan
    event = np.array([c.censorship == 0 for c in cases.values()])
    times = np.array([c.time for c in cases.values()], dtype=float)
    risk = predictions.set_index("case_id").loc[list(cases), "risk"].to_numpy()
    return harrell_cindex(event=event, time=times, risk=risk)


def rng_state(generator: torch.Generator) -> dict:
    """Sampler generator + global torch (and CUDA) RNG states, for the checkpoint."""
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(generator: torch.Generator, state: Mapping) -> None:
    """Inverse of :func:`rng_state`."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomically write the checkpoint (a crash leaves the previous epoch's file intact)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, expected_hash: str) -> dict | None:
    """The checkpoint at ``path`` if it exists and was written by a run with ``expected_hash``."""
    if not path.exists():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("run_hash") != expected_hash:
        log.warning("%s belongs to a run with other options or data; starting from epoch 1", path)
        return None
    return payload


def tensorboard_writer(out_dir: Path):
    """A TensorBoard SummaryWriter under ``out_dir/tensorboard`` if TensorBoard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def train(
    model_name: str,
    config: Mapping,
    train_cases: Mapping[str, Case],
    val_cases: Mapping[str, Case],
    out_dir: str | Path,
    options: Mapping | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train ``MODELS[model_name](**config)`` on ``train_cases``; inner validation on ``val_cases``.

    Writes ``out_dir/checkpoint.pt`` and ``out_dir/training_log.csv`` after every epoch and
    resumes from a matching checkpoint. ``on_epoch_end(epoch, log_row)`` runs after each
    checkpoint is written (an exception there stops training like a kill would).
    """
    if model_name not in NETWORKS:
        raise InputError(f"model {model_name!r} is not trained by gradient; ghanet-wf train fits it")
    options = resolve_options(options)
    out_dir = Path(out_dir)
    device = resolve_device(options["device"])
    if not train_cases:
        raise InputError("no training cases: the fold's train split has no patient with usable data")
    hash_ = run_hash(model_name, config, options, train_cases, list(val_cases))
    torch.manual_seed(int(options["seed"]))
    model = build_model(model_name, dict(config)).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(options["lr"]), weight_decay=float(options["weight_decay"])
    )
    generator = torch.Generator().manual_seed(int(options["seed"]))
    state = {"epoch": 0, "log_rows": [], "best_val": -math.inf, "best_epoch": 0, "best_model": None}
    checkpoint = load_checkpoint(out_dir / CHECKPOINT_NAME, hash_)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng_state(generator, checkpoint["rng"])
        state = {k: checkpoint[k] for k in state}
        log.info("resuming %s from epoch %d", model_name, state["epoch"])
    writer = tensorboard_writer(out_dir)
    cases = list(train_cases.values())
    for epoch in range(state["epoch"] + 1, int(options["epochs"]) + 1):
        started = time.perf_counter()
        losses = train_one_epoch(model, optimizer, cases, generator, options, device)
        val_cindex = concordance(val_cases, predict(model, val_cases, device, bool(options["amp"])))
        row = {
            "epoch": epoch,
            **{f"loss_{k}": v for k, v in losses.items()},
            "val_cindex": val_cindex,
            "seconds": round(time.perf_counter() - started, 3),
        }
        state["epoch"] = epoch
        state["log_rows"].append(row)
        if options["select"] == "best_val" and val_cindex > state["best_val"]:
            state.update(
                best_val=val_cindex,
                best_epoch=epoch,
                best_model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            )
        save_checkpoint(
            out_dir / CHECKPOINT_NAME,
            {
                "run_hash": hash_,
                "model_name": model_name,
                "config": dict(config),
                **state,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(generator),
            },
        )
        write_csv(out_dir / LOG_NAME, pd.DataFrame(state["log_rows"], columns=LOG_COLUMNS))
        log_epoch(writer, row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    if writer is not None:
        writer.close()
    # A resumed run that was already complete trains no epoch: the log must still exist.
    write_csv(out_dir / LOG_NAME, pd.DataFrame(state["log_rows"], columns=LOG_COLUMNS))
    selected = state["epoch"]
    if options["select"] == "best_val" and state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
        selected = state["best_epoch"]
    return TrainResult(model, pd.DataFrame(state["log_rows"], columns=LOG_COLUMNS), selected, device, options)


def log_epoch(writer, row: Mapping) -> None:
    """One log line (and TensorBoard scalars when available) per epoch."""
    log.info(
        "epoch %d: total %.4f (surv %.4f, sce %.4f, mse %.4f), val C-index %.3f, %.1f s",
        row["epoch"],
        row["loss_total"],
        row["loss_surv"],
        row["loss_sce"],
        row["loss_mse"],
        row["val_cindex"],
        row["seconds"],
    )
    if writer is not None:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, row["epoch"])
