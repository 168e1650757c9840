"""Bring-your-own features: CLAM/TRIDENT ``.h5`` or ``.pt`` files found, checked and imported.

A slide with a file in ``features.external_dir`` skips tiling and extraction: rule
import_features (``ghanet-wf extract --external``) checks its dimension and values and writes
it in this workflow's features format. Light at import (the DAG parse finds the files through
:func:`find_external_features`): h5py and torch are imported where a file is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError

#: where a CLAM/TRIDENT features folder keeps a slide's file (flat, or CLAM's h5_files/ and pt_files/)
EXTERNAL_LAYOUTS = ("{slide}.h5", "h5_files/{slide}.h5", "{slide}.pt", "pt_files/{slide}.pt")


def find_external_features(folder: str | Path, slide_id: str) -> Path | None:
    """The slide's file in a CLAM/TRIDENT features folder (``h5_files/``, ``pt_files/`` or flat)."""
    for layout in EXTERNAL_LAYOUTS:
        candidate = Path(folder) / layout.format(slide=slide_id)
        if candidate.is_file():
            return candidate
    return None


def load_external_features(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(features (N, D) float32, coords (N, 2) int64 or None)`` from a CLAM/TRIDENT ``.h5`` or ``.pt``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"external features {str(path)!r} do not exist; check config features.external_dir")
    if path.suffix == ".pt":
        features, coords = _load_pt_features(path)
    else:
        features, coords = _load_h5_features(path)
    features = np.asarray(features, dtype=np.float32)
    if features.ndim == 3 and features.shape[0] == 1:
        features = features[0]
    if features.ndim != 2:
        raise InputError(f"external features {str(path)!r}: expected an N x D array, got shape {features.shape}")
    if coords is not None:
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        if len(coords) != len(features):
            raise InputError(f"external features {str(path)!r}: {len(features)} features but {len(coords)} coords")
    return features, coords


def _load_h5_features(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``features`` and optional ``coords`` datasets of a CLAM/TRIDENT HDF5 file."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "features" not in handle:
                raise InputError(f"external features {str(path)!r}: no 'features' dataset (has {list(handle)})")
            coords = handle["coords"][...] if "coords" in handle else None
            return handle["features"][...], coords
    except OSError as exc:
        raise InputError(f"external features {str(path)!r}: not a readable HDF5 file: {exc}") from exc


def _load_pt_features(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A CLAM ``.pt`` tensor, or a dict with ``features`` (and ``coords``)."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        if "features" not in obj:
            raise InputError(f"external features {str(path)!r}: dict without a 'features' entry (has {list(obj)})")
        coords = obj.get("coords")
        return _to_numpy(obj["features"]), None if coords is None else _to_numpy(coords)
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"external features {str(path)!r}: holds a {type(obj).__name__}, not a tensor")
    return _to_numpy(obj), None


def _to_numpy(value) -> np.ndarray:
    """Tensor or array-like -> numpy array."""
    import torch

    return value.float().numpy() if isinstance(value, torch.Tensor) and value.is_floating_point() else np.asarray(value)


def import_features(
    src: str | Path, out_h5: str | Path, expected_dim: int, encoder: str = "external", slide_id: str | None = None
) -> dict:
    """Validate external features (dimension, finiteness) and write them in this workflow's format.

    Coordinates unknown to the source (CLAM ``.pt``) are written as -1. Returns the result dict.
    """
    from .encoders import check_sha256
    from .features import write_features_h5

    src, out_h5 = Path(src), Path(out_h5)
    features, coords = load_external_features(src)
    if features.shape[1] != expected_dim:
        raise InputError(
            f"external features {str(src)!r} are {features.shape[1]}-d but the model expects {expected_dim}-d; "
            "point config features.external_dir at features of the configured encoder"
        )
    if not len(features) or not np.isfinite(features).all():
        raise InputError(f"external features {str(src)!r}: empty or non-finite values; re-extract this slide")
    coords = np.full((len(features), 2), -1, np.int64) if coords is None else coords
    attrs = {
        "encoder": encoder,
        "feature_dim": expected_dim,
        "weights_sha256": "",
        "precision": "external",
        "package_version": __version__,
        "status": "ok",
        "reason": "",
        "n_patches": len(features),
        "n_bad_patches": 0,
        "slide_id": slide_id or src.stem,
        "source": str(src),
        "source_sha256": check_sha256(src, None),
    }
    write_features_h5(out_h5, features, coords, attrs, "float32")
    return {
        "slide_id": attrs["slide_id"],
        "out_h5": str(out_h5),
        "status": "ok",
        "reason": "",
        "n_patches": len(features),
        "n_bad_patches": 0,
        "skipped": False,
    }
