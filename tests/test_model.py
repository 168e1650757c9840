"""G-HANet and baselines: shapes, gradients, genomics-free inference, losses."""

from __future__ import annotations

import math

import pytest
import torch

from ghanet_workflow.errors import InputError
from ghanet_workflow.losses import nll_survival_loss, scaled_cosine_error, total_loss
from ghanet_workflow.model import (
    MODELS,
    NETWORKS,
    SHARED_OPTIONS,
    GHANet,
    build_model,
    count_parameters,
    model_options,
    top_ratio_hyperedges,
)
from ghanet_workflow.train import model_config, resolve_options
from reference_cab import reference_cab_forward

IN_DIM = 24
GROUP_SIZES = [3, 7, 5, 4, 9, 6]
SMALL = {
    "in_dim": IN_DIM,
    "group_sizes": GROUP_SIZES,
    "n_bins": 4,
    "hidden_dim": 32,
    "n_heads": 4,
    "dropout": 0.25,
    "topk_ratio": 0.2,
}
BLCA_GROUP_SIZES = [94, 334, 521, 468, 1496, 479]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small_model(name: str = "ghanet", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, {**SMALL, **overrides})


def genes(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=generator) for n in GROUP_SIZES]


def check_survival_outputs(out: dict) -> None:
    assert out["logits"].shape == (4,)
    for key in ("logits", "hazards", "surv", "risk"):
        assert torch.isfinite(out[key]).all(), key
    assert ((out["hazards"] > 0) & (out["hazards"] < 1)).all()
    assert (out["surv"][1:] <= out["surv"][:-1]).all()  # S is non-increasing
    assert torch.isclose(out["risk"], -out["surv"].sum())


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("n_patches", [1, 3, 5])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_model_gives_finite_survival_outputs_for_tiny_bags(name, n_patches, mode):
    model = small_model(name)
    getattr(model, mode)()
    out = model(torch.randn(n_patches, IN_DIM), genes())
    check_survival_outputs(out)
    if model.uses_slides:
        assert out["patch_weights"].shape == (n_patches,)
        assert torch.isclose(out["patch_weights"].sum(), torch.tensor(1.0))


def test_ghanet_outputs_per_group_reconstructions_and_token_attention():
    model = small_model().eval()
    out = model(torch.randn(7, IN_DIM))
    assert [r.shape[0] for r in out["recon"]] == GROUP_SIZES
    assert out["token_attention"].shape == (len(GROUP_SIZES), 7)
    assert torch.allclose(out["token_attention"].sum(dim=1), torch.ones(len(GROUP_SIZES)))


def test_ghanet_handles_a_bag_of_50000_patches_at_eval():
    model = small_model().eval()
    with torch.no_grad():
        out = model(torch.randn(50_000, IN_DIM))
    check_survival_outputs(out)
    assert out["patch_weights"].shape == (50_000,)
    assert out["token_attention"].shape == (len(GROUP_SIZES), 50_000)


@pytest.mark.parametrize("n_patches", [1, 3, 4, 5, 10, 101])
def test_hyperedges_keep_top_fifth_at_least_one_and_sum_to_one(n_patches):
    logits = torch.randn(6, n_patches, requires_grad=True)
    edges = top_ratio_hyperedges(logits, 0.2)
    k = max(1, int(0.2 * n_patches))
    assert ((edges > 0).sum(dim=1) == k).all()
    assert torch.allclose(edges.sum(dim=1), torch.ones(6))
    kept_min = torch.where(edges > 0, logits.detach(), torch.inf).min(dim=1).values
    dropped_max = torch.where(edges > 0, -torch.inf, logits.detach()).max(dim=1).values
    assert (kept_min >= dropped_max).all()  # the kept patches are the highest-logit ones
    assert not edges.requires_grad


def test_gradient_reaches_both_branches():
    model = small_model().train()
    out = model(torch.randn(12, IN_DIM))
    loss = total_loss(out, label=1, censorship=0.0, genomics=genes())["total"]
    loss.backward()
    cab_tokens = model.cab.tokens.grad
    hsb_gate = model.hsb.gated_attention.score.weight.grad
    assert cab_tokens is not None and cab_tokens.abs().sum() > 0
    assert hsb_gate is not None and hsb_gate.abs().sum() > 0
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_cab_computes_keys_and_values_once_with_the_same_result_as_two_plain_rounds():
    cab = small_model().eval().cab
    features = torch.randn(40, IN_DIM)
    calls = []
    cab.cross_attention.to_k.register_forward_hook(lambda *_: calls.append("k"))
    tokens, logits, _ = cab(features)
    assert calls == ["k"]  # one key projection of the N patches for both rounds
    plain, plain_logits, _ = reference_cab_forward(cab, features)  # keys and values recomputed in each round
    assert calls == ["k"] * 3
    assert torch.equal(tokens, plain) and torch.equal(logits, plain_logits)


def test_survival_loss_alone_trains_the_cab_through_the_fused_tokens():
    model = small_model().train()
    out = model(torch.randn(12, IN_DIM))
    nll_survival_loss(out["logits"], 2, 1.0).backward()
    assert model.cab.cross_attention.to_q.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.cab.heads.parameters())  # heads only learn from genes


def test_zeroing_genomics_changes_the_loss_but_not_the_prediction():
    model = small_model().eval()
    features = torch.randn(20, IN_DIM)
    with torch.no_grad():
        with_genes = model(features, genes())
        zero_genes = [torch.zeros(n) for n in GROUP_SIZES]
        without_genes = model(features, zero_genes)
        no_genes = model(features)
        loss_real = total_loss(with_genes, 1, 0.0, genes())["total"]
        loss_zero = total_loss(without_genes, 1, 0.0, zero_genes)["total"]
    assert torch.equal(with_genes["risk"], without_genes["risk"])
    assert torch.equal(with_genes["surv"], no_genes["surv"])
    assert not torch.isclose(loss_real, loss_zero)


def test_a_group_with_no_selected_gene_gets_no_head_and_no_loss_term():
    model = small_model(group_sizes=[3, 0, 4]).train()
    assert sorted(model.cab.heads) == ["0", "2"]
    out = model(torch.randn(6, IN_DIM))
    assert [r.numel() for r in out["recon"]] == [3, 0, 4]
    targets = [torch.randn(3), torch.zeros(0), torch.randn(4)]
    losses = total_loss(out, 0, 0.0, targets)
    assert torch.isfinite(losses["total"]) and losses["sce"] > 0


def test_genomic_models_need_genomics_and_wsi_models_do_not():
    assert not MODELS["ghanet"].uses_genomics_at_inference and not MODELS["abmil"].uses_genomics_at_inference
    assert MODELS["snn"].uses_genomics_at_inference and MODELS["abmil_snn"].uses_genomics_at_inference
    with pytest.raises(ValueError, match="genomics"):
        small_model("snn")(None, None)
    with pytest.raises(KeyError, match="unknown model"):
        build_model("mcat", SMALL)


def test_each_model_gets_the_shared_options_it_declares_and_an_unknown_option_is_named():
    assert set(model_config(resolve_options({}), IN_DIM, GROUP_SIZES, 4)) == set(SHARED_OPTIONS) == set(SMALL)
    assert small_model("ghanet", topk_ratio=0.5).hsb.topk_ratio == 0.5
    for name in ("abmil", "snn", "abmil_snn"):
        model = small_model(name, dropout=0.4)  # n_heads and topk_ratio are left out: not in its constructor
        assert {m.p for m in model.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.AlphaDropout))} == {0.4}
        assert "n_heads" not in model_options(name) and "topk_ratio" not in model_options(name)
    with pytest.raises(InputError, match=r"model 'abmil': unknown option\(s\) \['n_layers'\]; it accepts \['in_dim'"):
        build_model("abmil", {**SMALL, "n_layers": 2})


def test_snn_prediction_depends_on_genes_only():
    model = small_model("snn").eval()
    with torch.no_grad():
        a = model(torch.randn(3, IN_DIM), genes(0))["risk"]
        b = model(torch.randn(9, IN_DIM), genes(0))["risk"]
        c = model(None, genes(1))["risk"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_parameter_count_for_blca_group_sizes():
    model = GHANet(in_dim=1024, group_sizes=BLCA_GROUP_SIZES)
    assert count_parameters(model) == 16_860_485  # stated in the README
    assert len(model.cab.tokens) == 6


def naive_nll(logits: torch.Tensor, label: int, censorship: float) -> float:
    """Likelihood written out directly: event in bin y -> prod_{j<y}(1-h_j) * h_y; censored -> prod_{j<=y}."""
    hazards = torch.sigmoid(logits).tolist()
    survive_before = math.prod(1 - h for h in hazards[:label])
    if censorship:
        return -math.log(survive_before * (1 - hazards[label]))
    return -math.log(survive_before * hazards[label])


@pytest.mark.parametrize("label", [0, 1, 3])
@pytest.mark.parametrize("censorship", [0.0, 1.0])
def test_nll_matches_the_discrete_time_likelihood(label, censorship):
    logits = torch.tensor([-1.0, 0.3, 0.8, -0.2])
    assert nll_survival_loss(logits, label, censorship).item() == pytest.approx(naive_nll(logits, label, censorship))


def test_nll_alpha_weights_only_the_uncensored_term():
    logits = torch.tensor([0.1, -0.4, 0.9, 0.0])
    censored = nll_survival_loss(logits, 2, 1.0)
    assert nll_survival_loss(logits, 2, 1.0, alpha=0.4).item() == pytest.approx(0.6 * censored.item())
    event = nll_survival_loss(logits, 2, 0.0)
    assert nll_survival_loss(logits, 2, 0.0, alpha=0.4).item() == pytest.approx(event.item())


def test_scaled_cosine_error_has_exponent_three():
    x = torch.tensor([1.0, 2.0, -1.0])
    assert scaled_cosine_error(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert scaled_cosine_error(x, -x).item() == pytest.approx(8.0)
    orthogonal = torch.tensor([2.0, -1.0, 0.0])
    assert scaled_cosine_error(x, orthogonal).item() == pytest.approx(1.0)


def test_total_loss_weights_reconstruction_terms():
    model = small_model().eval()
    with torch.no_grad():
        out = model(torch.randn(5, IN_DIM))
        losses = total_loss(out, 1, 0.0, genes(), recon_weight=0.3)
    expected = losses["surv"] + 0.3 * (losses["sce"] + losses["mse"])
    assert torch.isclose(losses["total"], expected)
    assert losses["mse"] > 0
