"""Training losses: discrete-time survival NLL and the gene-reconstruction terms of G-HANet."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def nll_survival_loss(logits: Tensor, label: int | Tensor, censorship: float | Tensor, alpha: float = 0.0) -> Tensor:
    """Negative log-likelihood of a discrete-time survival model for one patient.

    ``logits`` [n_bins] are hazard logits, ``label`` the patient's time bin, ``censorship``
    1 if censored. An event in bin y contributes -log S(y-1) - log h(y); a censored patient
    -log S(y). ``alpha`` up-weights the uncensored term: (1-alpha)*full + alpha*uncensored
    (MCAT's convention). Computed in log space (logsigmoid) for numerical stability.
    """
    logits = logits.float()
    label = torch.as_tensor(label, device=logits.device).long()
    censored = torch.as_tensor(censorship, device=logits.device, dtype=logits.dtype)
    log_hazard = F.logsigmoid(logits)
    log_survival = torch.cumsum(F.logsigmoid(-logits), dim=-1)  # log S(k), k = 0..B-1
    log_survival = torch.cat([log_survival.new_zeros(1), log_survival])  # index k+1 -> S(k); S(-1) = 1
    uncensored = -(1 - censored) * (log_survival[label] + log_hazard[label])
    censored_term = -censored * log_survival[label + 1]
    return (1 - alpha) * (uncensored + censored_term) + alpha * uncensored


def scaled_cosine_error(prediction: Tensor, target: Tensor, exponent: float = 3.0) -> Tensor:
    """(1 - cos(prediction, target)) ** exponent (GraphMAE's SCE) for one gene vector."""
    cosine = F.cosine_similarity(prediction.float().reshape(1, -1), target.float().reshape(1, -1), eps=1e-8)
    return (1 - cosine).pow(exponent).mean()


def reconstruction_losses(
    recon: Sequence[Tensor], targets: Sequence[Tensor], exponent: float = 3.0
) -> tuple[Tensor, Tensor]:
    """Sum over groups of SCE and of MSE; groups with no selected genes contribute 0."""
    zero = torch.zeros((), device=targets[0].device if targets else None)
    sce, mse = zero, zero
    for prediction, target in zip(recon, targets, strict=True):
        if target.numel() == 0:
            continue
        sce = sce + scaled_cosine_error(prediction, target, exponent)
        mse = mse + F.mse_loss(prediction.float(), target.float())
    return sce, mse


def total_loss(
    outputs: dict,
    label: int,
    censorship: float,
    genomics: Sequence[Tensor] | None,
    recon_weight: float = 0.3,
    alpha: float = 0.0,
) -> dict[str, Tensor]:
    """All loss terms for one patient: surv, sce, mse and total = surv + recon_weight*(sce + mse).

    The reconstruction terms are 0 for models without reconstruction heads.
    """
    surv = nll_survival_loss(outputs["logits"], label, censorship, alpha)
    if outputs.get("recon") and genomics is not None:
        sce, mse = reconstruction_losses(outputs["recon"], genomics)
    else:
        sce = mse = torch.zeros((), device=surv.device)
    return {"surv": surv, "sce": sce, "mse": mse, "total": surv + recon_weight * (sce + mse)}
