"""The attention product: G-HANet's CAB token attention and gated patch weights over the slide
thumbnail, for a few of the highest- and lowest-risk test patients of the folds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..errors import InputError, SlideError
from ..slides import h5_attr, h5_attrs, open_slide, slide_key
from .inputs import index_fold_files
from .qc import slide_paths

#: attention.h5 datasets per patient (see ghanet_workflow.fold.write_attention_h5)
ATTENTION_DATASETS = ("token_attention", "patch_weights", "coords", "slide_index")
#: longest side of the slide thumbnails under the attention heatmaps, in pixels (a panel is ~2 in at 150 dpi)
THUMBNAIL_PX = 320


def read_attention_files(paths: Iterable[str | Path], default_model: str = "ghanet") -> list[dict]:
    """Every patient stored in the given ``attention.h5`` files (datasets, attrs, model, fold, groups).

    ``rank`` is the patient's place among its fold's patients of the same risk end (0 = most extreme).
    A missing file is skipped (its fold is missing from the C-index table too).
    """
    import h5py

    patients = []
    for (model, fold), path in sorted(index_fold_files(paths, default_model).items()):
        if not path.is_file():
            continue
        try:
            with h5py.File(path, "r") as handle:
                groups = [str(g) for g in h5_attr(handle.attrs.get("groups", []))]
                entries = handle.get("patients") or {}
                for key in sorted(entries, key=int):
                    entry = entries[key]
                    record = {name: entry[name][()] for name in ATTENTION_DATASETS}
                    record.update(h5_attrs(entry))
                    patients.append({**record, "model": model, "fold": fold, "groups": groups})
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(
                f"cannot read {path}: {exc}; rerun that fold's training (ghanet-wf train)"
            ) from exc
    seen: dict[tuple, int] = {}
    for patient in patients:
        key = (patient["model"], patient["fold"], patient["risk_end"])
        patient["rank"] = seen[key] = seen.get(key, -1) + 1
    return patients


def select_attention_patients(patients: Sequence[dict], n: int) -> list[dict]:
    """Up to ``n`` patients: half from the folds' high-risk ends, half from their low-risk ends.

    Each fold's most extreme patient comes first (folds in order), then the next ones, so the figure
    shows different folds before it shows a second patient of one fold.
    """
    chosen = []
    for end, count in (("high", math.ceil(n / 2)), ("low", n // 2)):
        pool = sorted((p for p in patients if p.get("risk_end") == end), key=lambda p: (p["rank"], p["fold"]))
        chosen += pool[:count]
    return chosen


def read_thumbnail(
    path: str | Path | None, max_px: int = THUMBNAIL_PX
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """RGB thumbnail and level-0 (width, height) of a slide read with OpenSlide; None if it cannot be read."""
    if path is None:
        return None
    from openslide import OpenSlideError

    try:
        with open_slide(path) as slide:
            return np.asarray(slide.get_thumbnail((max_px, max_px)).convert("RGB")), tuple(slide.dimensions)
    except (OSError, SlideError, OpenSlideError):
        return None


def attention_panel(patient: dict, paths: Mapping[str, str]) -> plots.AttentionPanel:
    """The figure row of one patient: its slide with the most patches, that slide's patches only."""
    index = np.asarray(patient["slide_index"])
    shown = int(np.bincount(index).argmax())
    mask = index == shown
    slide_ids = list(patient["slide_ids"])
    slide_id = slide_ids[shown]
    patch_size = int(list(patient["patch_size_level0"])[shown]) or 1
    coords = np.asarray(patient["coords"])[mask]
    thumbnail = read_thumbnail(paths.get(slide_key(slide_id)))
    size = thumbnail[1] if thumbnail else tuple(int(v) + patch_size for v in coords.max(axis=0, initial=0))
    more = f" (1 of {len(slide_ids)} slides)" if len(slide_ids) > 1 else ""
    return plots.AttentionPanel(
        title=f"{patient['case_id']}: {patient['risk_end']} risk\n{patient['model']} fold {patient['fold']}, "
        f"{slide_id}{more}",
        coords=coords,
        patch_size=patch_size,
        token_attention=np.asarray(patient["token_attention"])[:, mask],
        patch_weights=np.asarray(patient["patch_weights"])[mask],
        size=size,
        thumbnail=thumbnail[0] if thumbnail else None,
    )


def write_attention_figure(
    attention: Iterable[str | Path],
    out_path: Path,
    options: dict,
    slides: pd.DataFrame | None = None,
    default_model: str = "ghanet",
) -> list[Path]:
    """attention_heatmaps.png: CAB token attention per signature group and gated patch weights over the
    slide thumbnail, for ``attention_patients`` of the patients stored in the folds' attention.h5."""
    chosen = select_attention_patients(
        read_attention_files(attention, default_model), int(options["attention_patients"])
    )
    paths = slide_paths(slides)
    panels = [attention_panel(patient, paths) for patient in chosen]
    groups = chosen[0]["groups"] if chosen else []
    return plots.plot_attention_heatmaps(panels, groups, out_path, options["formats"])
