"""Patch features: one encoder load for many slides, uint8 patches to the device, resize there.

Data path: a torch DataLoader whose workers each open their own OpenSlide handle (lazily) and read
the patches of one batch at the coords' pyramid level as uint8 tensors; the main process moves the
batch to the device (pinned memory on CUDA), converts, resizes (antialiased bilinear) and normalises
there, in one batched op, and runs the encoder under the registry's autocast precision (fp32 on the
CPU). Batches never mix slides, and one DataLoader serves every slide of the job, so the device is
not idle between slides. A region that fails to read is retried once on a fresh handle and then
dropped and counted; a slide with too many such patches fails with the reason.

Outputs follow docs/CONTRACTS.md (``features``, ``coords`` and attributes); an existing complete
output whose fingerprint (encoder, weights, precision, options, coords) matches is not recomputed.
Bring-your-own CLAM/TRIDENT features (``.h5`` or ``.pt``) are imported by ghanet_workflow.external_features.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

import h5py
import numpy as np
import openslide
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import __version__, external_features
from .atomic import atomic_path, write_text
from .options import parse_options
from .encoders import EncoderSpec, get_spec, resolve_encoder
from .errors import InputError, SlideError
from .slides import SlideReader, h5_attr, h5_attrs

log = logging.getLogger(__name__)

#: config ``features`` section: option -> default (see config/README.md)
DEFAULTS: dict[str, object] = {
    "encoder": "efficientnet_lite0",
    "weights": None,
    "weights_sha256": None,
    "encoders": {},  # more encoders by label (the workflow's DAG: ghanet_workflow.cohort_config)
    "batch_size": 64,
    "patches_per_read": 8,
    "num_workers": 2,
    "prefetch_factor": 4,
    "device": "auto",
    "precision": "auto",
    "feature_dtype": "float32",
    "max_bad_fraction": 0.05,
    "save_pt": False,
    "progress": True,
    "slides_per_job": 16,
    "external_dir": None,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "feature_dtype": ("float32", "float16"),
}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: options that change the numbers written, hence part of the resume fingerprint
FINGERPRINT_OPTIONS = ("encoder", "feature_dtype", "max_bad_fraction")
#: what opening a slide or reading a region raises: the patch is counted bad (or the slide fails)
READ_ERRORS = (openslide.OpenSlideError, OSError, SlideError)


# --------------------------------------------------------------------------- options
def resolve_options(options: Mapping[str, object] | None) -> dict[str, object]:
    """DEFAULTS updated with ``options``; unknown keys and bad values raise an InputError."""
    merged = dict(DEFAULTS)
    for key, value in (options or {}).items():
        if key not in DEFAULTS:
            raise InputError(f"config features.{key}: unknown option; known options are {sorted(DEFAULTS)}")
        merged[key] = value
    for key, allowed in CHOICES.items():
        if merged[key] not in allowed:
            raise InputError(f"config features.{key}: {merged[key]!r} is not one of {list(allowed)}")
    if int(merged["batch_size"]) < 1:
        raise InputError(f"config features.batch_size: must be >= 1, got {merged['batch_size']!r}")
    if int(merged["patches_per_read"]) < 1:
        raise InputError(f"config features.patches_per_read: must be >= 1, got {merged['patches_per_read']!r}")
    if int(merged["num_workers"]) < 0:
        raise InputError(f"config features.num_workers: must be >= 0, got {merged['num_workers']!r}")
    if not 0.0 <= float(merged["max_bad_fraction"]) <= 1.0:
        raise InputError(f"config features.max_bad_fraction: must be in [0, 1], got {merged['max_bad_fraction']!r}")
    return merged


def resolve_device(choice: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an InputError."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("config features.device: 'cuda' requested but no CUDA device is visible; use 'auto' or 'cpu'")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def resolve_precision(choice: str, spec: EncoderSpec, device: torch.device) -> str:
    """Autocast precision: the registry's preference on CUDA for ``auto``; always fp32 on the CPU."""
    if device.type != "cuda":
        return "fp32"
    return spec.precision if choice == "auto" else choice


# --------------------------------------------------------------------------- coords input
@dataclass
class SlidePlan:
    """One slide's work: where to read, what to write, and what the coords file says."""

    slide_path: Path
    coords_h5: Path
    out_h5: Path
    slide_id: str
    coords: np.ndarray  #: (N, 2) int64 level-0 x, y
    level: int
    patch_size_level0: int
    read_size: int = 0  #: patch side in pixels at ``level``
    #: neighbouring patches of a row can be read as one strip: the patch side is a whole number of
    #: pixels at ``level``, so a strip cut in read_size pieces gives exactly the single-patch reads
    strips_exact: bool = False
    status: str = "ok"
    reason: str = ""
    tiling_attrs: dict = field(default_factory=dict)
    fingerprint: str = ""


def read_coords(coords_h5: Path) -> tuple[np.ndarray, dict]:
    """Coordinates (N, 2) int64 and the attributes of a tiling-stage HDF5 file."""
    if not coords_h5.is_file():
        raise InputError(f"coords file {str(coords_h5)!r} does not exist; run the tiling stage for this slide first")
    try:
        with h5py.File(coords_h5, "r") as handle:
            coords = np.asarray(handle["coords"][...], dtype=np.int64).reshape(-1, 2)
            attrs = h5_attrs(handle)
    except (OSError, KeyError) as exc:
        raise InputError(f"coords file {str(coords_h5)!r} is not a tiling HDF5 with a 'coords' dataset: {exc}") from exc
    return coords, attrs


def plan_slide(slide_path: str | Path, coords_h5: str | Path, out_h5: str | Path) -> SlidePlan:
    """Read the coords file and the slide's pyramid to decide how each patch is read."""
    coords_h5 = Path(coords_h5)
    coords, attrs = read_coords(coords_h5)
    slide_path = Path(slide_path)
    plan = SlidePlan(
        slide_path=slide_path,
        coords_h5=coords_h5,
        out_h5=Path(out_h5),
        slide_id=str(attrs.get("slide_id") or slide_path.stem),
        coords=coords,
        level=int(attrs.get("patch_level", 0)),
        patch_size_level0=int(attrs.get("patch_size_level0", attrs.get("patch_size", 0))),
        status=str(attrs.get("status", "ok")),
        reason=str(attrs.get("reason", "")),
        tiling_attrs=attrs,
    )
    if plan.status != "ok":
        plan.coords = coords[:0]
    elif len(coords):
        _set_read_size(plan)
    return plan


def _set_read_size(plan: SlidePlan) -> None:
    """Patch side at the coords' level from the slide's own downsample; failures go into the plan."""
    if plan.patch_size_level0 < 1:
        raise InputError(f"coords file {str(plan.coords_h5)!r}: attribute patch_size_level0 is missing or < 1")
    try:
        with SlideReader(plan.slide_path, plan.slide_id) as reader:
            if plan.level >= reader.slide.level_count:
                _fail(plan, f"coords level {plan.level} does not exist (slide has {reader.slide.level_count} levels)")
                return
            downsample = reader.slide.level_downsamples[plan.level]
    except READ_ERRORS as exc:
        _fail(plan, f"cannot open slide: {type(exc).__name__}: {exc}")
        return
    plan.read_size = max(1, round(plan.patch_size_level0 / downsample))
    plan.strips_exact = plan.read_size * downsample == plan.patch_size_level0


def _fail(plan: SlidePlan, reason: str) -> None:
    """Mark ``plan`` failed: nothing will be read, a (0, D) file records the reason."""
    plan.status, plan.reason, plan.coords = "failed", reason, plan.coords[:0]


# --------------------------------------------------------------------------- reading patches
class PatchBatch(NamedTuple):
    """What a DataLoader worker hands over: the readable patches of one batch of one slide."""

    slide_index: int
    rows: torch.Tensor  #: int64 (n,) coords rows of ``pixels``
    pixels: torch.Tensor  #: uint8 (n, 3, S, S)
    bad_rows: torch.Tensor  #: int64 (m,) rows that could not be read (after one retry)
    first_error: str


class BatchKey(NamedTuple):
    """A batch: rows ``start:stop`` of slide ``slide_index``."""

    slide_index: int
    start: int
    stop: int


class PatchBatches(Dataset):
    """Map-style dataset whose items are whole batches (``BatchKey`` -> ``PatchBatch``).

    Each process keeps its own handle on the slide it is reading; handles are never shared
    across processes (they are created after the DataLoader forks its workers).
    """

    def __init__(self, plans: Sequence[SlidePlan], patches_per_read: int = 1):
        self.plans = list(plans)
        self.patches_per_read = int(patches_per_read)
        self._reader: SlideReader | None = None
        self._reader_slide = -1

    def _reader_for(self, slide_index: int) -> SlideReader:
        """This process's reader for ``slide_index`` (the previous slide's handle is closed)."""
        if self._reader_slide != slide_index:
            if self._reader is not None:
                self._reader.close()
            self._reader = SlideReader(self.plans[slide_index].slide_path, self.plans[slide_index].slide_id)
            self._reader_slide = slide_index
        return self._reader

    def close(self) -> None:
        """Close this process's open slide, if any."""
        if self._reader is not None:
            self._reader.close()
            self._reader, self._reader_slide = None, -1

    def __getitem__(self, key: BatchKey) -> PatchBatch:
        plan = self.plans[key.slide_index]
        reader = self._reader_for(key.slide_index)
        size = plan.read_size
        good_rows, bad_rows, patches, first_error = [], [], [], ""
        max_run = self.patches_per_read if plan.strips_exact else 1
        for first, stop in row_runs(plan.coords, key.start, key.stop, plan.patch_size_level0, max_run):
            if stop - first > 1:
                x, y = plan.coords[first]
                try:
                    patches += reader.read_strip(x, y, plan.level, size, stop - first)
                    good_rows += range(first, stop)
                    continue
                except READ_ERRORS:
                    reader.close()  # the strip failed: find the bad patch(es) one read at a time
            for row in range(first, stop):
                x, y = plan.coords[row]
                try:
                    patches.append(reader.read_with_retry(x, y, plan.level, size))
                    good_rows.append(row)
                except READ_ERRORS as exc:
                    bad_rows.append(row)
                    first_error = first_error or f"{type(exc).__name__}: {exc} at (x={x}, y={y})"
        pixels = (
            torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2)
            if patches
            else torch.empty((0, 3, size, size), dtype=torch.uint8)
        )
        return PatchBatch(
            key.slide_index,
            torch.tensor(good_rows, dtype=torch.int64),
            pixels,
            torch.tensor(bad_rows, dtype=torch.int64),
            first_error,
        )


def row_runs(coords: np.ndarray, start: int, stop: int, step: int, max_run: int) -> list[tuple[int, int]]:
    """Rows ``start:stop`` cut into runs ``(first, stop)`` of at most ``max_run`` patches that sit
    side by side in one patch row: same y, x advancing by exactly ``step`` (level-0 pixels).

    Coordinates come row-major from the tiling stage, so most runs fill ``max_run``; a gap in the
    tissue, the end of a row or overlapping patches end a run.
    """
    if stop <= start:
        return []
    x, y = coords[start:stop, 0], coords[start:stop, 1]
    breaks = np.flatnonzero((np.diff(y) != 0) | (np.diff(x) != step)) + 1
    runs = []
    for first, last in zip([0, *breaks], [*breaks, stop - start]):
        runs += [(start + a, start + min(a + max_run, last)) for a in range(first, last, max_run)]
    return runs


def batch_keys(plans: Sequence[SlidePlan], batch_size: int) -> list[BatchKey]:
    """Row-major batches of ``batch_size`` patches; a batch never spans two slides."""
    return [
        BatchKey(index, start, min(start + batch_size, len(plan.coords)))
        for index, plan in enumerate(plans)
        for start in range(0, len(plan.coords), batch_size)
    ]


def make_loader(plans: Sequence[SlidePlan], options: Mapping, device: torch.device) -> DataLoader:
    """DataLoader over whole batches: workers read, the main process only moves tensors."""
    workers = int(options["num_workers"])
    return DataLoader(
        PatchBatches(plans, int(options["patches_per_read"])),
        batch_size=None,
        sampler=batch_keys(plans, int(options["batch_size"])),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=int(options["prefetch_factor"]) if workers else None,
        persistent_workers=False,
    )


# --------------------------------------------------------------------------- on-device preprocessing
class DevicePreprocess:
    """uint8 (B, 3, S, S) -> normalised float (B, 3, size, size) on the device, in one batched op."""

    def __init__(self, spec: EncoderSpec, device: torch.device):
        self.size = spec.input_size
        self.mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
        self.device = device
        self.channels_last = spec.is_cnn

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = pixels.to(self.device, non_blocking=True).float().div_(255.0)
        batch = resize_patches(batch, self.size)
        batch = batch.sub_(self.mean).div_(self.std)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch


def resize_patches(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of float (B, 3, H, W) to (B, 3, size, size); no-op if equal."""
    if batch.shape[-2:] == (size, size):
        return batch
    return F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Encoder:
    """The loaded model plus its on-device preprocessing and autocast precision."""

    def __init__(self, model: torch.nn.Module, spec: EncoderSpec, device: torch.device, precision: str):
        self.model, self.spec, self.device, self.precision = model, spec, device, precision
        self.preprocess = DevicePreprocess(spec, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest kernels

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features (B, D) float32 on the device for uint8 patches (B, 3, S, S)."""
        batch = self.preprocess(pixels)
        if self.precision in AUTOCAST_DTYPES:
            with torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[self.precision]):
                features = self.model(batch)
        else:
            features = self.model(batch)
        return features.float()


# --------------------------------------------------------------------------- per-slide results
@dataclass
class SlideFeatures:
    """Features gathered for one slide while its batches stream in (kept on the device)."""

    features: list[torch.Tensor] = field(default_factory=list)
    rows: list[torch.Tensor] = field(default_factory=list)
    n_bad: int = 0
    first_error: str = ""

    def add(self, batch: PatchBatch, features: torch.Tensor | None) -> None:
        """Record one batch's features and bad patches."""
        if features is not None:
            self.features.append(features)
            self.rows.append(batch.rows)
        self.n_bad += len(batch.bad_rows)
        self.first_error = self.first_error or batch.first_error


def finish_slide(plan: SlidePlan, gathered: SlideFeatures, run: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """Check bad-patch fraction and finiteness; return (features, coords) or (0, D) with plan failed."""
    n_total, dim = len(plan.coords), run.spec.feature_dim
    features = torch.cat(gathered.features).cpu().numpy() if gathered.features else np.zeros((0, dim), np.float32)
    rows = torch.cat(gathered.rows).numpy() if gathered.rows else np.zeros(0, np.int64)
    limit = float(run.options["max_bad_fraction"])
    if n_total and gathered.n_bad / n_total > limit:
        _fail(
            plan,
            f"{gathered.n_bad} of {n_total} patches unreadable after a retry (first: {gathered.first_error}); "
            f"above features.max_bad_fraction={limit}",
        )
    elif not np.isfinite(features).all():
        n_bad = int((~np.isfinite(features).all(axis=1)).sum())
        _fail(
            plan,
            f"{n_bad} patches have non-finite features (precision {run.precision}); "
            "set features.precision to fp32",
        )
    if plan.status != "ok":
        return np.zeros((0, dim), np.float32), np.zeros((0, 2), np.int64)
    return features, plan.coords[rows]


# --------------------------------------------------------------------------- output files
def coords_digest(plan: SlidePlan) -> str:
    """SHA-256 of what was asked: coords, level, patch size, tiling status."""
    digest = hashlib.sha256(np.ascontiguousarray(plan.coords).tobytes())
    digest.update(json.dumps([plan.level, plan.patch_size_level0, plan.status, plan.reason]).encode())
    return digest.hexdigest()


def fingerprint(plan: SlidePlan, options: Mapping, weights_sha256: str, precision: str) -> str:
    """Resume key: an output with the same fingerprint needs no recomputation."""
    payload = {key: options[key] for key in FINGERPRINT_OPTIONS}
    payload.update(
        weights_sha256=weights_sha256, precision=precision, coords=coords_digest(plan), save_pt=bool(options["save_pt"])
    )
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_complete(plan: SlidePlan, options: Mapping) -> bool:
    """True if ``plan.out_h5`` exists with a matching fingerprint (and its ``.pt`` when asked)."""
    if not plan.out_h5.is_file():
        return False
    if options["save_pt"] and not plan.out_h5.with_suffix(".pt").is_file():
        return False
    try:
        with h5py.File(plan.out_h5, "r") as handle:
            return h5_attr(handle.attrs.get("fingerprint", "")) == plan.fingerprint and "features" in handle
    except OSError:
        return False


def read_existing(plan: SlidePlan) -> dict:
    """Status attributes of a finished output (for the result of a skipped slide)."""
    with h5py.File(plan.out_h5, "r") as handle:
        return {key: h5_attr(handle.attrs[key]) for key in ("status", "reason", "n_patches", "n_bad_patches")}


def write_features_h5(out_h5: Path, features: np.ndarray, coords: np.ndarray, attrs: Mapping, dtype: str) -> None:
    """Atomically write ``features`` (N, D) and ``coords`` (N, 2) with ``attrs``."""
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("features", data=features.astype(dtype))
            handle.create_dataset("coords", data=coords.astype(np.int64).reshape(-1, 2))
            for key, value in attrs.items():
                handle.attrs[key] = "" if value is None else value


def write_pt(out_pt: Path, features: np.ndarray) -> None:
    """Atomically write a CLAM-style ``.pt`` (a float32 tensor N x D)."""
    with atomic_path(out_pt) as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), tmp)


def output_attrs(
    plan: SlidePlan,
    spec: EncoderSpec,
    weights_sha256: str,
    precision: str,
    n_patches: int,
    n_bad: int,
    options: Mapping,
) -> dict:
    """HDF5 attributes of a features file (docs/CONTRACTS.md)."""
    tiling = plan.tiling_attrs
    return {
        "encoder": spec.name,
        "feature_dim": spec.feature_dim,
        "weights_sha256": weights_sha256,
        "precision": precision,
        "feature_dtype": str(options["feature_dtype"]),
        "target_mpp": float(tiling.get("target_mpp", float("nan"))),
        "patch_size": int(tiling.get("patch_size", 0)),
        "patch_level": plan.level,
        "patch_size_level0": plan.patch_size_level0,
        "package_version": __version__,
        "status": plan.status,
        "reason": plan.reason,
        "n_patches": n_patches,
        "n_bad_patches": n_bad,
        "slide_id": plan.slide_id,
        "fingerprint": plan.fingerprint,
    }


@dataclass(frozen=True)
class RunContext:
    """What every slide of one extraction run shares: options, encoder spec, weights, precision."""

    options: Mapping[str, object]
    spec: EncoderSpec
    weights_sha256: str
    precision: str


def write_slide(plan: SlidePlan, features: np.ndarray, coords: np.ndarray, n_bad: int, run: RunContext) -> dict:
    """Write the slide's outputs (``.pt`` first, the HDF5 last as the completion mark)."""
    if run.options["save_pt"]:
        write_pt(plan.out_h5.with_suffix(".pt"), features)
    attrs = output_attrs(plan, run.spec, run.weights_sha256, run.precision, len(features), n_bad, run.options)
    write_features_h5(plan.out_h5, features, coords, attrs, str(run.options["feature_dtype"]))
    return {key: attrs[key] for key in ("status", "reason", "n_patches", "n_bad_patches")}


# --------------------------------------------------------------------------- the stage
def extract_features(
    jobs: Sequence[tuple[str | Path, str | Path, str | Path]],
    options: Mapping[str, object] | None = None,
) -> list[dict]:
    """Features for every ``(slide_path, coords_h5, out_h5)`` job, loading the encoder once.

    Returns one dict per job: ``slide_id``, ``out_h5``, ``status``, ``reason``, ``n_patches``,
    ``n_bad_patches``, ``skipped`` (True if a complete matching output already existed).
    """
    options = resolve_options(options)
    resolved = resolve_encoder(str(options["encoder"]), options["weights"], options["weights_sha256"])
    spec, weights_sha256 = resolved.spec, resolved.weights_sha256
    device = resolve_device(str(options["device"]))
    precision = resolve_precision(str(options["precision"]), spec, device)
    run = RunContext(options, spec, weights_sha256, precision)

    plans = [plan_slide(*job) for job in jobs]
    for plan in plans:
        plan.fingerprint = fingerprint(plan, options, weights_sha256, precision)
    results: dict[int, dict] = {}
    for index, plan in enumerate(plans):
        if is_complete(plan, options):
            results[index] = {**read_existing(plan), "skipped": True}
        elif not len(plan.coords):
            empty = np.zeros((0, spec.feature_dim), np.float32)
            results[index] = {**write_slide(plan, empty, np.zeros((0, 2), np.int64), 0, run), "skipped": False}

    pending = [index for index in range(len(plans)) if index not in results]
    if pending:
        encoder = Encoder(resolved.load(device), spec, device, precision)
        for index, result in run_encoder([plans[i] for i in pending], encoder, run):
            results[pending[index]] = {**result, "skipped": False}
    return [
        {"slide_id": plan.slide_id, "out_h5": str(plan.out_h5), **results[index]} for index, plan in enumerate(plans)
    ]


def run_encoder(plans: Sequence[SlidePlan], encoder: Encoder, run: RunContext) -> Iterator[tuple[int, dict]]:
    """Stream every plan's batches through ``encoder``; yield (plan index, result) as slides finish."""
    options = run.options
    keys = batch_keys(plans, int(options["batch_size"]))
    batches_left = {index: 0 for index in range(len(plans))}
    for key in keys:
        batches_left[key.slide_index] += 1
    gathered = {index: SlideFeatures() for index in range(len(plans))}
    progress = tqdm(
        total=sum(len(p.coords) for p in plans),
        unit="patch",
        desc=f"features {encoder.spec.name}",
        disable=not options["progress"],
        mininterval=2.0,
    )
    with progress:
        for batch in make_loader(plans, options, encoder.device):
            features = encoder(batch.pixels) if len(batch.rows) else None
            _check_dim(features, encoder.spec)
            gathered[batch.slide_index].add(batch, features)
            progress.update(len(batch.rows) + len(batch.bad_rows))
            batches_left[batch.slide_index] -= 1
            if batches_left[batch.slide_index] == 0:
                plan = plans[batch.slide_index]
                result = gathered.pop(batch.slide_index)
                features_np, coords = finish_slide(plan, result, run)
                yield batch.slide_index, write_slide(plan, features_np, coords, result.n_bad, run)


def _check_dim(features: torch.Tensor | None, spec: EncoderSpec) -> None:
    """The model's output width must be the registry's feature_dim."""
    if features is not None and features.shape[1] != spec.feature_dim:
        raise InputError(
            f"encoder {spec.name!r} produced {features.shape[1]}-d features, registry says {spec.feature_dim}"
        )


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``ghanet-wf extract``."""
    parser = argparse.ArgumentParser(prog="ghanet-wf extract", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--slides", nargs="+", help="slide files")
    source.add_argument("--external", nargs="+", help="CLAM/TRIDENT feature files (.h5/.pt) to import instead")
    parser.add_argument("--coords", nargs="+", help="tiling HDF5 per slide (same order as --slides)")
    parser.add_argument("--out", nargs="+", required=True, help="output features HDF5 per slide")
    parser.add_argument("--options", nargs="+", help="config 'features' section as JSON (or a JSON file); several are merged")
    parser.add_argument("--manifest", help="chunk manifest to write once every slide is done (see write_manifest)")
    return parser


def main(argv: list[str]) -> int:
    """``ghanet-wf extract``: features for many slides with one model load (or import external ones)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_options(args.options, what="features")
    sources = args.slides or args.external
    if len(args.out) != len(sources) or (args.slides and len(args.coords or []) != len(args.slides)):
        raise InputError("extract: give one --out (and one --coords for --slides) per input file, in the same order")
    started = time.perf_counter()
    if args.slides:
        log.info("CUDA_VISIBLE_DEVICES=%s", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
        results = extract_features(list(zip(args.slides, args.coords, args.out)), options)
    else:
        dim = get_spec(str(resolve_options(options)["encoder"])).feature_dim
        results = [external_features.import_features(src, out, dim) for src, out in zip(args.external, args.out)]
    # the command's product, on stdout (the job log): one line per slide, then the total
    for result in results:
        print(
            f"{result['slide_id']}: {result['status']} {result['n_patches']} patches, "
            f"{result['n_bad_patches']} bad{' (up to date)' if result['skipped'] else ''} {result['reason']}"
        )
    print(f"{len(results)} slides in {time.perf_counter() - started:.1f} s")
    if args.manifest:
        write_manifest(args.manifest, args.out, args.coords or [])
    return 0


MANIFEST_COLUMNS = ("features_path", "features_bytes", "coords_path", "coords_bytes")


def write_manifest(path: str | Path, feature_paths: Sequence[str], coords_paths: Sequence[str]) -> None:
    """A chunk's manifest (TSV, MANIFEST_COLUMNS): each per-slide file it made and its size.

    The workflow reads the sizes back at the next DAG parse (ghanet_workflow.slide_files): a file
    deleted or truncated since makes that slide's jobs run again.
    """
    coords_paths = list(coords_paths) or [""] * len(feature_paths)
    rows = ["\t".join(MANIFEST_COLUMNS)]
    for features_path, coords_path in zip(feature_paths, coords_paths):
        coords_bytes = str(os.path.getsize(coords_path)) if coords_path else ""
        rows.append(f"{features_path}\t{os.path.getsize(features_path)}\t{coords_path}\t{coords_bytes}")
    write_text(path, "\n".join(rows) + "\n")
