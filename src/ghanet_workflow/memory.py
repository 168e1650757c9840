"""Memory requests (MB) of the training and extraction jobs, estimated from the data.

Pure arithmetic over what the data say (the largest bag of the cohort's feature store, the largest
slide of an extraction chunk) and the model or encoder size, so the rules' ``mem_mb`` resources
(workflow/rules/common.smk) follow the cohort instead of a constant; the retry doubling there stays
the safety net. Light at import (the DAG parse calls it): the standard library only.

Calibration (README, Performance): a demo training fold (ghanet, 1280-d, 379 genes, 15.6 M
parameters, bags of at most 91 patches) peaks at 1,159 MB RSS; the bench/bench_feature_store.py
epoch of 8,000-patch bags peaks as printed there.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

MB = 2**20
#: RSS of a training job apart from the model and the bags (measured for a 16-d cohort with a
#: 32-wide model: 930 MB peak on the development machine, 1,341 MB in a CI run; torch alone ~510 MB)
BASE_MB = 1300
#: float32 copies of the parameters a training job holds: weights, gradients, Adam's two moments,
#: the best_val copy and the checkpoint being written
MODEL_COPIES = 6
#: N x hidden_dim float32 tensors kept for the backward pass per training patch (projections,
#: attention and feed-forward activations of ghanet, the largest model)
TRAIN_ACTIVATIONS = 24
#: N x hidden_dim float32 tensors alive at once in an evaluation forward pass (no gradient; a
#: 100,000 x 1024 bag predicted whole peaks at 1,751 MB RSS, bench_feature_store.py --eval-bag)
EVAL_ACTIVATIONS = 4
MARGIN = 1.25
#: per-encoder (parameters, feature dim, input side): what an extraction job holds; matches
#: ghanet_workflow.encoders.ENCODERS (tests/test_feature_store.py checks dims and sizes)
ENCODER_SIZES = {
    "efficientnet_lite0": (3_371_008, 1280, 224),
    "resnet50_trunc": (8_543_296, 1024, 224),
    "vit_large_patch16_224": (303_350_784, 1024, 224),
    "uni2_h": (681_394_176, 1536, 224),
}
#: a forked DataLoader worker (slide readers, decoded tiles)
WORKER_MB = 300
#: HDF5 overhead of a coords file beyond its N x 2 int64 rows (an over-estimate of N is safe)
COORDS_ROW_BYTES = 16


def round_up(mb: float, step: int = 100) -> int:
    return int(math.ceil(mb / step) * step)


def model_params_bound(in_dim: int, hidden_dim: int, group_sizes: Sequence[int]) -> int:
    """An upper bound of the parameter count of every model of :data:`ghanet_workflow.model.MODELS`
    (ghanet, the largest: two patch projections, ~48 h^2 of attention and feed-forward blocks, a
    token and a reconstruction head per group)."""
    h, genes = int(hidden_dim), int(sum(group_sizes))
    return 2 * int(in_dim) * h + (48 + 2 * len(group_sizes)) * h * h + 2 * (h + 1) * genes + 16 * h


def training_mem_mb(
    largest_bag: int, dim: int, n_params: int, max_patches: int, hidden_dim: int, store_itemsize: int = 4
) -> int:
    """A training job's peak memory (MB): interpreter + model state + the largest bag's read and pass.

    Training reads at most the largest bag (the whole bag when a step takes a quarter of it or
    more) and keeps ``min(bag, max_patches)`` patches of activations; evaluation (inner
    validation and the test predictions) reads the whole largest bag, without gradients.
    Independent of the number of patients.
    """
    read = largest_bag * dim * (store_itemsize + 4)
    train_rows = min(largest_bag, max_patches)
    training = read + train_rows * 4 * (dim + hidden_dim * TRAIN_ACTIVATIONS)
    evaluation = read + largest_bag * 4 * hidden_dim * EVAL_ACTIVATIONS
    peak = BASE_MB * MB + n_params * 4 * MODEL_COPIES + max(training, evaluation)
    return round_up(peak * MARGIN / MB)


def extraction_mem_mb(
    largest_slide: int,
    encoder: str,
    batch_size: int,
    num_workers: int,
    prefetch_factor: int,
) -> int:
    """An extraction job's peak memory (MB) for a chunk whose largest slide has ``largest_slide`` patches.

    Interpreter + encoder weights (twice: the state dict and the model) + the batches in flight
    (workers x prefetch, float32 pixels) + the largest slide's features gathered, concatenated
    and cast (three N x D float32 copies). An unknown encoder counts as the largest known one.
    """
    params, dim, side = ENCODER_SIZES.get(encoder, max(ENCODER_SIZES.values()))
    in_flight = (max(num_workers, 1) * max(prefetch_factor, 1) + 2) * batch_size * 3 * side * side * 4
    peak = (BASE_MB + num_workers * WORKER_MB) * MB + 2 * params * 4 + in_flight + 3 * largest_slide * dim * 4
    return round_up(peak * MARGIN / MB)


# ----------------------------------------------------------------------------- from the files (DAG parse)


@functools.lru_cache(maxsize=64)
def _store_summary(index_path: str, mtime_ns: int) -> tuple[int, int, int]:
    index = json.loads(Path(index_path).read_text(encoding="utf-8"))
    itemsize = 2 if index["dtype"] == "float16" else 4
    return int(index["largest_bag"]), int(index["dim"]), itemsize


@functools.lru_cache(maxsize=64)
def _group_sizes(groups_json: str, mtime_ns: int) -> tuple[int, ...]:
    return tuple(len(genes) for genes in json.loads(Path(groups_json).read_text(encoding="utf-8")).values())


def training_mem_mb_from_files(cohort_dir: str | Path, training: Mapping, reads_slides: bool = True) -> int | None:
    """:func:`training_mem_mb` of a built cohort, for the ``training`` options: the largest bag and its
    dim from the packed store (``cohort_dir/feature_store/index.json``; none for a model that reads
    no slide) and the genes of ``groups.json`` (every gene of a group, before the fold's selection).
    None while those files do not exist yet (the caller falls back to its constant)."""
    index, groups = Path(cohort_dir) / "feature_store" / "index.json", Path(cohort_dir) / "groups.json"
    try:
        largest, dim, itemsize = _store_summary(str(index), os.stat(index).st_mtime_ns) if reads_slides else (0, 0, 4)
        sizes = _group_sizes(str(groups), os.stat(groups).st_mtime_ns)
    except (OSError, ValueError, KeyError):
        return None
    hidden = int(training.get("hidden_dim", 512))
    return training_mem_mb(
        largest, dim, model_params_bound(dim, hidden, sizes), int(training.get("max_patches") or largest), hidden, itemsize
    )


def extraction_mem_mb_from_files(coords_files: Sequence[str | Path], features: Mapping) -> int | None:
    """:func:`extraction_mem_mb` of a chunk from its coords files' sizes (N x 2 int64 rows, so the
    size bounds N); None while a coords file does not exist yet."""
    try:
        largest = max((os.stat(path).st_size // COORDS_ROW_BYTES for path in coords_files), default=0)
    except OSError:
        return None
    return extraction_mem_mb(
        int(largest),
        str(features.get("encoder", "")),
        int(features.get("batch_size", 64)),
        int(features.get("num_workers", 2)),
        int(features.get("prefetch_factor", 4)),
    )
