"""The authors' way through G-HANet's CAB: the keys and values of the patches recomputed in each of the two rounds.

Written from the model's own modules, so it holds the same weights; the workflow's
``CrossModalAssociatingBranch.forward`` computes them once for both rounds. tests/test_model.py
checks the two agree exactly, bench/bench_training.py times both.
"""

from __future__ import annotations

import functools

import torch

from ghanet_workflow.model import CrossModalAssociatingBranch


def reference_cab_forward(cab: CrossModalAssociatingBranch, features: torch.Tensor):
    """(group representations, round-2 logits, reconstructions), each round projecting keys and values anew."""
    patches = cab.patch_norm(cab.patch_projection(features))
    tokens, _ = cab.cross_attention(cab.token_norm_1(cab.tokens), patches)
    tokens = cab.feed_forward_1(cab.ff_norm_1(tokens)) + tokens
    tokens, logits = cab.cross_attention(cab.token_norm_2(cab.tokens + tokens), patches)
    tokens = cab.output_norm(cab.feed_forward_2(cab.ff_norm_2(tokens)) + tokens)
    return tokens, logits, cab.reconstruct(tokens)


def use_reference_cab(model: torch.nn.Module) -> None:
    """Make ``model.cab`` (a G-HANet's) run :func:`reference_cab_forward`."""
    model.cab.forward = functools.partial(reference_cab_forward, model.cab)
