"""Survival models over a bag of patch features: G-HANet and the baselines it is compared with.

Every model maps one patient's bag ``features`` (N x in_dim float tensor, N >= 1) and, for the
genomic models only, the patient's selected genes (a list of 1-D tensors, one per signature
group) to the same output dict (see :func:`survival_outputs`), so one training harness,
one prediction writer and one metric code path serve all of them.

- :class:`GHANet` (Wang et al., arXiv 2403.10040): a cross-modal associating branch (CAB) whose
  learnable group tokens attend to the patches and reconstruct each group's genes (training
  signal only), and a hyper-attention survival branch (HSB) that builds token-to-patch
  hyperedges from the CAB attention. Predicts from patch features alone.
- :class:`ABMIL`: gated-attention multiple-instance learning (WSI only).
- :class:`SNN`: self-normalising MLP over the concatenated selected genes (genomics only).
- :class:`ABMILSNN`: ABMIL and SNN embeddings concatenated (multimodal upper bound).
- :class:`CoxnetModel`: the inference form of the Cox elastic net that :mod:`ghanet_workflow.coxnet`
  fits with scikit-survival (genomics only; not trained by gradient).

``MODELS`` maps the config name to the class; on each class ``uses_genomics_at_inference``
says whether prediction needs genomics and ``uses_slides`` whether it reads patch features.
``NETWORKS`` are the models :func:`ghanet_workflow.train.train` trains by gradient (the GPU job);
the others (``coxnet``) are fitted on the CPU by their own module.
:func:`build_model` gives each model only the options its constructor declares.
"""

from __future__ import annotations

import inspect
import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

Tensor = torch.Tensor


def survival_outputs(logits: Tensor) -> dict[str, Tensor]:
    """Discrete-time survival quantities from hazard logits (shape [n_bins]).

    hazards = sigmoid(logits); surv = cumprod(1 - hazards); risk = -sum(surv).
    """
    hazards = torch.sigmoid(logits)
    surv = torch.cumprod(1.0 - hazards, dim=-1)
    return {"logits": logits, "hazards": hazards, "surv": surv, "risk": -surv.sum(dim=-1)}


class MultiHeadAttention(nn.Module):
    """Multi-head attention that also returns the pre-softmax logits averaged over heads.

    Queries [Q, dim] attend to context [N, dim]; q/k/v projections have no bias, the output
    projection has one; dropout acts on the attention probabilities.
    """

    def __init__(self, dim: int, n_heads: int, head_dim: int, dropout: float):
        super().__init__()
        inner = n_heads * head_dim
        self.n_heads, self.head_dim = n_heads, head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.attn_dropout = nn.Dropout(dropout)

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], self.n_heads, self.head_dim).transpose(0, 1)

    def keys_values(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head keys and values of ``context`` ([H, N, head_dim] each)."""
        return self._split_heads(self.to_k(context)), self._split_heads(self.to_v(context))

    def forward(
        self, queries: Tensor, context: Tensor, keys_values: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return (output [Q, dim], head-averaged logits [Q, N]).

        ``keys_values`` (from :meth:`keys_values` of the same ``context``) skips recomputing them:
        the CAB's two rounds attend to the same patches with the same module, so the N x dim
        key/value projections, the bulk of the attention's cost, are computed once.
        """
        q = self._split_heads(self.to_q(queries))
        k, v = keys_values if keys_values is not None else self.keys_values(context)
        logits = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)  # [H, Q, N]
        attn = self.attn_dropout(logits.softmax(dim=-1))
        out = (attn @ v).transpose(0, 1).reshape(queries.shape[0], -1)
        return self.to_out(out), logits.mean(dim=0)


class GEGLUFeedForward(nn.Module):
    """Linear dim -> 2*mult*dim, GEGLU (x * gelu(gate)), Linear mult*dim -> dim, dropout."""

    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__()
        self.expand = nn.Linear(dim, dim * mult * 2)
        self.contract = nn.Linear(dim * mult, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.expand(x).chunk(2, dim=-1)
        return self.dropout(self.contract(value * F.gelu(gate)))


class GatedAttentionPool(nn.Module):
    """Gated attention (Ilse et al. 2018): one softmax weight per patch over the bag."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.tanh_branch = nn.Linear(dim, hidden)
        self.gate_branch = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, h: Tensor) -> Tensor:
        """Patch weights [N] (softmax over the N patches)."""
        gated = torch.tanh(self.tanh_branch(h)) * torch.sigmoid(self.gate_branch(h))
        return self.score(gated).squeeze(-1).softmax(dim=0)


def top_ratio_hyperedges(logits: Tensor, ratio: float) -> Tensor:
    """Hyperedge weights [G, N]: per row keep the top max(1, int(ratio*N)) logits, softmax within.

    Patches outside the kept set get weight 0. The result is detached (no gradient flows
    into the cross-attention through the hyperedges).
    """
    logits = logits.detach().float()
    k = max(1, int(ratio * logits.shape[-1]))
    top_values, top_index = logits.topk(k, dim=-1)
    edges = torch.zeros_like(logits)
    return edges.scatter(-1, top_index, top_values.softmax(dim=-1))


def projection(in_dim: int, out_dim: int, dropout: float, layer_norm: bool) -> nn.Sequential:
    """Linear (+ optional LayerNorm) + ReLU + dropout."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    if layer_norm:
        layers.append(nn.LayerNorm(out_dim))
    layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def reconstruction_head(dim: int, n_genes: int, dropout: float) -> nn.Sequential:
    """Linear dim->dim, LayerNorm, ELU, dropout, Linear dim->n_genes."""
    return nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ELU(), nn.Dropout(dropout), nn.Linear(dim, n_genes))


class CrossModalAssociatingBranch(nn.Module):
    """CAB: group tokens attend twice to the projected patches; one gene-reconstruction head per group.

    The same cross-attention module serves both rounds (as in the authors' code); each round
    has its own LayerNorms and GEGLU feed-forward. A group with 0 selected genes gets no head.
    """

    def __init__(self, in_dim: int, group_sizes: Sequence[int], dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.group_sizes = [int(n) for n in group_sizes]
        self.patch_projection = projection(in_dim, dim, dropout, layer_norm=False)
        self.tokens = nn.Parameter(torch.randn(len(self.group_sizes), dim))
        self.cross_attention = MultiHeadAttention(dim, n_heads, dim // n_heads, dropout)
        self.patch_norm = nn.LayerNorm(dim)
        self.token_norm_1, self.token_norm_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff_norm_1, self.ff_norm_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.feed_forward_1 = GEGLUFeedForward(dim, 4, dropout)
        self.feed_forward_2 = GEGLUFeedForward(dim, 4, dropout)
        self.output_norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict(
            {str(i): reconstruction_head(dim, n, dropout) for i, n in enumerate(self.group_sizes) if n > 0}
        )

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Return (group representations [G, dim], round-2 logits [G, N], reconstructions)."""
        patches = self.patch_norm(self.patch_projection(features))
        # The same in both rounds, so computed once; the reference code recomputes them per round
        # (same result, more work: tests/reference_cab.py, compared in tests/test_model.py).
        keys_values = self.cross_attention.keys_values(patches)
        tokens, _ = self.cross_attention(self.token_norm_1(self.tokens), patches, keys_values)
        tokens = self.feed_forward_1(self.ff_norm_1(tokens)) + tokens
        tokens, logits = self.cross_attention(self.token_norm_2(self.tokens + tokens), patches, keys_values)
        tokens = self.output_norm(self.feed_forward_2(self.ff_norm_2(tokens)) + tokens)
        return tokens, logits, self.reconstruct(tokens)

    def reconstruct(self, tokens: Tensor) -> list[Tensor]:
        """Each group's genes from its representation (an empty tensor for a group without a head)."""
        empty = tokens.new_zeros(0)
        return [self.heads[str(i)](tokens[i]) if str(i) in self.heads else empty for i in range(len(self.group_sizes))]


class HyperAttentionSurvivalBranch(nn.Module):
    """HSB: gated patch weights + top-ratio hyperedges -> hyper-attention, fused with the CAB tokens."""

    def __init__(
        self, in_dim: int, n_groups: int, n_bins: int, dim: int, n_heads: int, dropout: float, topk_ratio: float
    ):
        super().__init__()
        self.topk_ratio = topk_ratio
        self.patch_projection = projection(in_dim, dim, dropout, layer_norm=True)
        self.gated_attention = GatedAttentionPool(dim, dim // 2)
        self.hyper_update = nn.Sequential(
            nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU()
        )
        self.self_attention = MultiHeadAttention(dim, n_heads, dim // n_heads, dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.feed_forward = GEGLUFeedForward(dim, 4, dropout)
        self.compress = projection(dim, dim // 2, dropout, layer_norm=True)
        self.classifier = nn.Linear(n_groups * (dim // 2), n_bins)

    def forward(self, features: Tensor, tokens: Tensor, token_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Return (hazard logits [n_bins], patch weights [N])."""
        patches = self.patch_projection(features)
        patch_weights = self.gated_attention(patches)
        edges = top_ratio_hyperedges(token_logits, self.topk_ratio)
        incidence = (patch_weights.unsqueeze(0) + edges.to(patch_weights.dtype)) / 2
        hyper = incidence @ patches
        hyper = self.hyper_update(hyper) + hyper
        fused = (hyper + tokens) / 2
        fused = self.self_attention(fused, fused)[0] + fused
        fused = self.feed_forward(self.ff_norm(fused)) + fused
        return self.classifier(self.compress(fused).flatten()), patch_weights


class GHANet(nn.Module):
    """G-HANet: predicts discrete-time hazards from patch features alone.

    ``group_sizes`` are the numbers of SELECTED genes per signature group (reconstruction
    head outputs); their count sets the number of tokens. ``genomics`` is accepted by
    :meth:`forward` for a uniform interface and ignored: genes enter only the loss.
    """

    uses_genomics_at_inference = False
    uses_slides = True

    def __init__(
        self,
        in_dim: int,
        group_sizes: Sequence[int],
        n_bins: int = 4,
        hidden_dim: int = 512,
        n_heads: int = 4,
        dropout: float = 0.25,
        topk_ratio: float = 0.2,
    ):
        super().__init__()
        self.cab = CrossModalAssociatingBranch(in_dim, group_sizes, hidden_dim, n_heads, dropout)
        self.hsb = HyperAttentionSurvivalBranch(
            in_dim, len(group_sizes), n_bins, hidden_dim, n_heads, dropout, topk_ratio
        )

    def forward(self, features: Tensor, genomics: Sequence[Tensor] | None = None) -> dict:
        tokens, token_logits, recon = self.cab(features)
        logits, patch_weights = self.hsb(features, tokens, token_logits)
        out = survival_outputs(logits.float())
        out.update(recon=recon, token_attention=token_logits.softmax(dim=-1), patch_weights=patch_weights)
        return out


class ABMIL(nn.Module):
    """Gated-attention MIL (Ilse et al. 2018) with a discrete-time hazard head. WSI only."""

    uses_genomics_at_inference = False
    uses_slides = True

    def __init__(
        self,
        in_dim: int,
        group_sizes: Sequence[int] = (),
        n_bins: int = 4,
        hidden_dim: int = 512,
        dropout: float = 0.25,
    ):
        super().__init__()
        self.embed = WSIEmbedding(in_dim, hidden_dim, dropout)
        self.classifier = nn.Linear(hidden_dim // 2, n_bins)

    def forward(self, features: Tensor, genomics: Sequence[Tensor] | None = None) -> dict:
        embedding, patch_weights = self.embed(features)
        out = survival_outputs(self.classifier(embedding).float())
        out.update(recon=[], patch_weights=patch_weights)
        return out


class WSIEmbedding(nn.Module):
    """Patch projection, gated-attention pooling and a dim -> dim/2 layer: bag -> vector."""

    def __init__(self, in_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.patch_projection = projection(in_dim, hidden_dim, dropout, layer_norm=False)
        self.pool = GatedAttentionPool(hidden_dim, hidden_dim // 2)
        self.rho = projection(hidden_dim, hidden_dim // 2, dropout, layer_norm=False)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Return (bag embedding [hidden_dim/2], patch weights [N])."""
        patches = self.patch_projection(features)
        weights = self.pool(patches)
        return self.rho(weights @ patches), weights


class GenomicEmbedding(nn.Module):
    """Self-normalising network (Klambauer et al. 2017): 2 x (Linear, SELU, AlphaDropout)."""

    def __init__(self, n_genes: int, hidden_dim: int, dropout: float):
        super().__init__()
        if n_genes < 1:
            raise ValueError("the SNN needs at least one selected gene; got 0 across all groups")
        layers: list[nn.Module] = []
        for fan_in in (n_genes, hidden_dim):
            linear = nn.Linear(fan_in, hidden_dim)
            nn.init.normal_(linear.weight, std=1.0 / math.sqrt(fan_in))  # LeCun normal for SELU
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.SELU(), nn.AlphaDropout(dropout)]
        self.net = nn.Sequential(*layers)

    def forward(self, genomics: Sequence[Tensor]) -> Tensor:
        if genomics is None:
            raise ValueError("this model needs the patient's genomics at inference")
        return self.net(torch.cat([g.reshape(-1) for g in genomics]))


class SNN(nn.Module):
    """Genomics-only baseline: SNN over the concatenated selected genes -> hazard head."""

    uses_genomics_at_inference = True
    uses_slides = False

    def __init__(
        self,
        in_dim: int,
        group_sizes: Sequence[int],
        n_bins: int = 4,
        hidden_dim: int = 512,
        dropout: float = 0.25,
    ):
        super().__init__()
        self.embed = GenomicEmbedding(sum(group_sizes), hidden_dim // 2, dropout)
        self.classifier = nn.Linear(hidden_dim // 2, n_bins)

    def forward(self, features: Tensor | None, genomics: Sequence[Tensor] | None = None) -> dict:
        out = survival_outputs(self.classifier(self.embed(genomics)).float())
        out["recon"] = []
        return out


class ABMILSNN(nn.Module):
    """Multimodal baseline: ABMIL bag embedding and SNN gene embedding, concatenated."""

    uses_genomics_at_inference = True
    uses_slides = True

    def __init__(
        self,
        in_dim: int,
        group_sizes: Sequence[int],
        n_bins: int = 4,
        hidden_dim: int = 512,
        dropout: float = 0.25,
    ):
        super().__init__()
        half = hidden_dim // 2
        self.wsi = WSIEmbedding(in_dim, hidden_dim, dropout)
        self.genes = GenomicEmbedding(sum(group_sizes), half, dropout)
        self.fusion = projection(hidden_dim, half, dropout, layer_norm=False)
        self.classifier = nn.Linear(half, n_bins)

    def forward(self, features: Tensor, genomics: Sequence[Tensor] | None = None) -> dict:
        wsi, patch_weights = self.wsi(features)
        fused = self.fusion(torch.cat([wsi, self.genes(genomics)]))
        out = survival_outputs(self.classifier(fused).float())
        out.update(recon=[], patch_weights=patch_weights)
        return out


class CoxnetModel(nn.Module):
    """Cox elastic net at inference: risk = linear predictor, S(t_j) = S0(t_j) ** exp(risk).

    Holds what :mod:`ghanet_workflow.coxnet` fitted (scikit-survival's ``CoxnetSurvivalAnalysis``,
    Breslow baseline): ``coef`` over the concatenated selected genes of every group (a gene
    listed in two groups carries its coefficient at its first place, 0 at the other) and the
    baseline survival ``baseline_survival`` at the end of each time bin. Float64, frozen
    (``requires_grad`` False): it is never trained by gradient. ``predictions.csv`` of a coxnet
    fold comes from scikit-survival itself; this module gives the same values up to the float32
    rounding of the scaled genes in :class:`ghanet_workflow.train.Case`. No reconstruction head.
    """

    uses_genomics_at_inference = True
    uses_slides = False

    def __init__(self, group_sizes: Sequence[int], n_bins: int = 4):
        super().__init__()
        self.coef = nn.Parameter(torch.zeros(sum(group_sizes), dtype=torch.float64), requires_grad=False)
        self.baseline_survival = nn.Parameter(torch.ones(n_bins, dtype=torch.float64), requires_grad=False)

    def forward(self, features: Tensor | None, genomics: Sequence[Tensor] | None = None) -> dict:
        if genomics is None:
            raise ValueError("this model needs the patient's genomics at inference")
        risk = torch.cat([g.reshape(-1) for g in genomics]).to(self.coef) @ self.coef
        return {"risk": risk, "surv": self.baseline_survival ** torch.exp(risk), "recon": []}


#: config name -> model class trained by gradient (:func:`ghanet_workflow.train.train`)
NETWORKS: dict[str, type[nn.Module]] = {"ghanet": GHANet, "abmil": ABMIL, "snn": SNN, "abmil_snn": ABMILSNN}
#: config name -> model class, every model of the config (``training.models``)
MODELS: dict[str, type[nn.Module]] = {**NETWORKS, "coxnet": CoxnetModel}

#: constructor keywords every model is offered (:func:`ghanet_workflow.train.model_config` builds them
#: from the data and the config section ``training``); each model takes those its constructor declares
SHARED_OPTIONS = ("in_dim", "group_sizes", "n_bins", "hidden_dim", "n_heads", "dropout", "topk_ratio")


def model_options(name: str) -> list[str]:
    """The constructor keywords of ``MODELS[name]``."""
    parameters = inspect.signature(MODELS[name].__init__).parameters
    return [key for key in parameters if key != "self"]


def build_model(name: str, config: Mapping) -> nn.Module:
    """Instantiate ``MODELS[name]`` from a config dict (in_dim, group_sizes, n_bins, hidden_dim, ...).

    The model gets the keys its constructor declares; a shared option it does not declare (e.g.
    ``topk_ratio`` for ABMIL) is not passed. Any other key raises InputError naming the model,
    the key and the options the model accepts.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)} (config training.models)")
    accepted = model_options(name)
    unknown = sorted(set(config) - set(accepted) - set(SHARED_OPTIONS))
    if unknown:
        raise InputError(f"model {name!r}: unknown option(s) {unknown}; it accepts {accepted}")
    return MODELS[name](**{key: value for key, value in config.items() if key in accepted})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
