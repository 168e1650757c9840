"""Synthetic demo slides: pyramidal JPEG TIFFs assembled from crops of real tissue.

The embedded demo cohort has real TCGA-BLCA survival and genomic rows but no real slides for
its patients, so each patient gets a generated slide. The slide is a white canvas with a blob
of 256-px tissue crops taken from two real slides:

* ``low_risk`` source: CMU-1-Small-Region.svs (normal skin, H&E);
* ``high_risk`` source: TCGA-CR-7395-01A-01-TS1.svs (frozen head-and-neck carcinoma).

The share of crops drawn from the high-risk source grows with the patient's real risk, measured
as the percentile of its martingale residual (event - Nelson-Aalen cumulative hazard at its
time) among the patients of the table: early deaths rank high, long censored follow-up ranks
low. Gaussian noise on the logit scale, plus the per-crop coin flips, keep the signal imperfect.

A second, independent link ties morphology to one signature group's real genes (``genomic_group``):
each source's tissue windows are split into a cell-dense third (most dark, nucleus-rich pixels:
epidermis, carcinoma nests) and a sparse third (collagen, stroma), and the share of cell-dense crops
grows with the patient's genomic score: the mean z-score of the group's RNA columns over the table's
patients, made uncorrelated with the risk percentile (linear residual), then standardised. Its
logit slope is ``genomic_strength`` (0 = no link); noise as above. Both are planted signals for a
demonstration, not biology: a C-index or a reconstruction r on the demo is no result.

Every random choice comes from one generator seeded with ``seed`` and the slide id, so the
same inputs always give the same file, byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

from .atomic import atomic_path
from .cohort import gene_groups, read_signatures
from .errors import InputError, SlideError
from .options import parse_options
from .slides import SlideReader

#: Config section ``demo``: options of the demo-slide generator.
DEFAULTS: dict = {
    "seed": 0,  # base seed; combined with the slide id for every random choice
    "width_px": 2048,  # level-0 width of a generated slide
    "height_px": 2048,  # level-0 height of a generated slide
    "mpp": 0.5,  # level-0 microns per pixel written into the TIFF resolution tags
    "tile_size": 256,  # TIFF tile edge (px); also the edge of each pasted tissue crop
    "jpeg_quality": 85,  # JPEG quality of the TIFF tiles
    "tissue_fraction": 0.75,  # share of the canvas' crop cells covered by tissue
    "signal_strength": 2.0,  # logit slope of the high-risk crop share against risk (0 = no signal)
    "genomic_group": "Tumor Suppressor Genes",  # signature group whose gene score sets the cell-dense share
    "genomic_strength": 3.0,  # logit slope of the cell-dense crop share against that score (0 = no link)
    "noise": 1.0,  # SD of per-slide Gaussian noise on that logit
    "stain_jitter": 0.05,  # SD of per-crop, per-channel optical-density gain
    "min_crop_tissue": 0.6,  # least tissue share of a source crop to be used
    "assumed_source_mpp": 0.2527,  # MPP assumed for a source slide without MPP metadata
}

#: Source slides of the two tissue appearances, relative to the repository root.
DEFAULT_SOURCES: dict[str, str] = {
    "low_risk": "data/slides/CMU-1-Small-Region.svs",
    "high_risk": "data/slides/TCGA-CR-7395-01A-01-TS1.svs",
}
#: Signature groups (one gene symbol per cell) for the genomic link, relative to the repository root.
DEFAULT_SIGNATURES = "data/tcga/signatures.csv"

_BACKGROUND = 242  # grey level of the empty glass
_LEVEL_TOLERANCE = 1.05  # a source level may be up to 5% coarser than the demo resolution
_DARK_GREY = 130  # a pixel darker than this (grey level) counts as nucleus-rich for the tissue kinds


@dataclass(frozen=True)
class SlidePlan:
    """What a demo slide will show: its patient, risk and the source of every tissue cell."""

    slide_id: str
    case_id: str
    risk_percentile: float  # in (0, 1); higher = shorter real survival
    high_risk_probability: float  # chance that a tissue cell is drawn from the high-risk source
    cells: tuple[tuple[int, int, str, str], ...]  # (row, column, source key, kind) per tissue cell
    genomic_score: float = 0.0  # the planted group's score (mean 0, SD 1 over the table's patients)
    dense_probability: float = 0.5  # chance that a tissue cell is a cell-dense crop

    @property
    def high_risk_share(self) -> float:
        """Share of tissue cells drawn from the high-risk source."""
        return sum(cell[2] == "high_risk" for cell in self.cells) / max(len(self.cells), 1)

    @property
    def dense_share(self) -> float:
        """Share of tissue cells that are cell-dense crops."""
        return sum(cell[3] == "dense" for cell in self.cells) / max(len(self.cells), 1)


def resolve_options(options: Mapping | None) -> dict:
    """Merge ``options`` over :data:`DEFAULTS`; an unknown key raises :class:`InputError`."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise InputError(f"demo options: unknown key(s) {unknown}; known keys are {sorted(DEFAULTS)}")
    return {**DEFAULTS, **options}


def load_clinical_table(clinical_csv: str | Path) -> pd.DataFrame:
    """The columns of the MCAT-format demo table that the generator needs."""
    path = Path(clinical_csv)
    if not path.is_file():
        raise InputError(f"{path}: clinical table not found; pass the demo table (data/demo/tcga_blca_demo.csv)")
    needed = ["case_id", "slide_id", "survival_months", "censorship"]
    table = pd.read_csv(path, usecols=lambda column: column in needed or str(column).endswith("_rnaseq")).copy()
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; the table must be in MCAT format")
    return table


def risk_percentiles(table: pd.DataFrame) -> pd.Series:
    """Per patient, the percentile (0..1) of its martingale residual: high = died early.

    The residual is ``event - H(time)`` with ``H`` the Nelson-Aalen cumulative hazard of the
    table's patients, so it orders patients consistently with Harrell's concordance.
    """
    patients = table[["case_id", "survival_months", "censorship"]].drop_duplicates("case_id").set_index("case_id")
    time = patients["survival_months"].to_numpy(float)
    event = 1 - patients["censorship"].to_numpy(int)
    event_times, deaths = np.unique(time[event == 1], return_counts=True)
    at_risk = (time[None, :] >= event_times[:, None]).sum(axis=1)
    cumulative_hazard = ((event_times[None, :] <= time[:, None]) * (deaths / at_risk)[None, :]).sum(axis=1)
    residual = pd.Series(event - cumulative_hazard, index=patients.index)
    return (residual.rank(method="average") - 0.5) / len(residual)


def genomic_scores(table: pd.DataFrame, group: str, signatures_csv: str | Path = DEFAULT_SIGNATURES) -> pd.Series:
    """Per patient, the planted score of signature group ``group``: mean 0, SD 1, uncorrelated with risk.

    The mean over the group's RNA columns (``<gene>_rnaseq``, each z-scored over the table's
    patients; constant columns left out), minus its least-squares line on the risk percentile,
    standardised. Removing the risk part keeps the genomic link independent of the survival link.
    Real RNA groups co-vary (the demo's Tumor Suppressor score correlates up to 0.6 with other
    groups' scores), so other groups' reconstruction follows the planted one partly.
    """
    groups = gene_groups([c for c in table.columns if str(c).endswith("_rnaseq")], read_signatures(signatures_csv))
    if group not in groups:
        raise InputError(
            f"demo.genomic_group {group!r} is not a group of {signatures_csv}; choose one of {list(groups)}"
        )
    values = table[["case_id", *groups[group]]].drop_duplicates("case_id").set_index("case_id").astype(float)
    values = values.loc[:, values.std(ddof=0) > 0]
    score = ((values - values.mean()) / values.std(ddof=0)).mean(axis=1)
    risk = risk_percentiles(table).loc[score.index].to_numpy()
    design = np.column_stack([np.ones(len(risk)), risk])
    coef, *_ = np.linalg.lstsq(design, score.to_numpy(), rcond=None)
    residual = score - design @ coef
    return residual / residual.std(ddof=0)


def slide_rng(seed: int, slide_id: str, stream: int = 0) -> np.random.Generator:
    """A random generator that depends only on ``seed``, ``slide_id`` and ``stream``.

    Stream 0 draws the plan's sources, stream 2 its tissue kinds, stream 1 the crops, so a plan can
    be recomputed on its own and the genomic link leaves the survival link's draws as they were.
    """
    digest = int.from_bytes(hashlib.sha256(slide_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed), digest, stream])


def tissue_cells(rows: int, cols: int, fraction: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Pick ``fraction`` of a rows x cols grid as one ragged, roughly elliptical blob."""
    n_cells = max(1, round(fraction * rows * cols))
    y, x = np.mgrid[0:rows, 0:cols]
    centre = np.array([rows, cols]) / 2 - 0.5 + rng.normal(0, 0.5, 2)
    aspect = rng.uniform(0.7, 1.3)
    distance = np.hypot((y - centre[0]) * aspect, (x - centre[1]) / aspect) + rng.normal(0, 0.6, y.shape)
    nearest = np.argsort(distance, axis=None, kind="stable")[:n_cells]
    return sorted(zip(*np.unravel_index(nearest, distance.shape)))


def plan_slide(
    slide_id: str,
    table: pd.DataFrame,
    seed: int,
    options: Mapping | None = None,
    signatures_csv: str | Path = DEFAULT_SIGNATURES,
) -> SlidePlan:
    """Decide the patient, risk, genomic score and per-cell tissue source and kind of one demo slide."""
    opts = resolve_options(options)
    rows = table.loc[table["slide_id"] == slide_id, "case_id"]
    if rows.empty:
        raise InputError(f"slide {slide_id!r} is not in the clinical table's slide_id column; add its row")
    case_id = str(rows.iloc[0])
    rng = slide_rng(seed, slide_id)
    percentile = float(risk_percentiles(table)[case_id])
    logit = opts["signal_strength"] * (2 * percentile - 1) + opts["noise"] * rng.normal()
    probability = float(1 / (1 + np.exp(-logit)))
    grid = tissue_cells(
        opts["height_px"] // opts["tile_size"], opts["width_px"] // opts["tile_size"], opts["tissue_fraction"], rng
    )
    sources = ["high_risk" if rng.random() < probability else "low_risk" for _ in grid]
    kind_rng = slide_rng(seed, slide_id, stream=2)
    score = 0.0
    if opts["genomic_strength"] > 0:
        score = float(genomic_scores(table, opts["genomic_group"], signatures_csv)[case_id])
    dense_logit = opts["genomic_strength"] * score + opts["noise"] * kind_rng.normal()
    dense = float(1 / (1 + np.exp(-dense_logit)))
    cells = tuple(
        (int(r), int(c), source, "dense" if kind_rng.random() < dense else "sparse")
        for (r, c), source in zip(grid, sources)
    )
    return SlidePlan(slide_id, case_id, percentile, probability, cells, score, dense)


class TissueSource:
    """Random tissue crops of one real slide, resampled to the demo slide's resolution.

    The slide level closest to the demo resolution is read once into memory; crop positions
    are drawn among those whose window holds at least ``min_tissue`` tissue, from the cell-dense
    or the sparse third of them (``kind`` dense or sparse: by their share of dark, nucleus-rich pixels).
    """

    def __init__(self, path: str | Path, target_mpp: float, crop_px: int, assumed_mpp: float, min_tissue: float):
        self.path = Path(path)
        try:
            with SlideReader(self.path) as reader:
                slide = reader.slide
                mpp = float(slide.properties.get("openslide.mpp-x", assumed_mpp))
                # Tolerate up to 5% upsampling, so a level just finer than the target is still used.
                level = slide.get_best_level_for_downsample(_LEVEL_TOLERANCE * target_mpp / mpp)
                self.read_px = round(crop_px * target_mpp / (mpp * slide.level_downsamples[level]))
                self.image = reader.read_region_rgb((0, 0), level, slide.level_dimensions[level])
        except SlideError as exc:
            raise InputError(f"{self.path}: cannot open the demo tissue source ({exc}); check the path") from exc
        self.crop_px = crop_px
        positions = tissue_windows(self.image, self.read_px, min_tissue)
        if len(positions) < 3:
            raise InputError(
                f"{self.path}: fewer than 3 {self.read_px}-px windows with >= {min_tissue:.0%} tissue; "
                "use another slide"
            )
        dark = cv2.cvtColor(self.image, cv2.COLOR_RGB2GRAY) < _DARK_GREY
        darkness = window_shares(dark, self.read_px)[positions[:, 0] // 8, positions[:, 1] // 8]
        order = np.argsort(darkness, kind="stable")
        third = len(order) // 3
        self.positions = {"dense": positions[order[-third:]], "sparse": positions[order[:third]]}

    def random_crop(self, rng: np.random.Generator, kind: str) -> np.ndarray:
        """One crop_px x crop_px RGB crop at a random tissue-rich position of the ``kind`` (dense, sparse)."""
        positions = self.positions[kind]
        y, x = positions[rng.integers(len(positions))]
        window = self.image[y : y + self.read_px, x : x + self.read_px]
        return cv2.resize(window, (self.crop_px, self.crop_px), interpolation=cv2.INTER_AREA)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels that look like stained tissue: saturated and not white."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return (hsv[..., 1] > 25) & (hsv[..., 2] < 235)


def tissue_windows(rgb: np.ndarray, window: int, min_tissue: float, step: int = 8) -> np.ndarray:
    """Top-left (y, x) of the window x window squares, on a ``step`` grid, with >= min_tissue tissue."""
    return np.argwhere(window_shares(tissue_mask(rgb), window, step) >= min_tissue) * step


def window_shares(mask: np.ndarray, window: int, step: int = 8) -> np.ndarray:
    """Share of true pixels of ``mask`` in the window x window square at each ``step``-grid top-left."""
    mask = mask.astype(np.float32)
    coarse = cv2.resize(mask, (mask.shape[1] // step, mask.shape[0] // step), interpolation=cv2.INTER_AREA)
    k = window // step
    summed = cv2.integral(coarse)
    return (summed[k:, k:] - summed[:-k, k:] - summed[k:, :-k] + summed[:-k, :-k]) / (k * k)


def augment(crop: np.ndarray, rng: np.random.Generator, stain_jitter: float) -> np.ndarray:
    """Random rotation by 90° steps, optional flip and a mild per-channel stain jitter."""
    crop = np.rot90(crop, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    optical_density = -np.log((crop.astype(np.float32) + 1) / 256)
    gain = 1 + rng.normal(0, stain_jitter, 3).astype(np.float32)
    jittered = 256 * np.exp(-optical_density * gain) - 1
    return np.clip(jittered, 0, 255).astype(np.uint8)


def render_slide(
    plan: SlidePlan, sources: Mapping[str, TissueSource], rng: np.random.Generator, opts: dict
) -> np.ndarray:
    """Paint the plan's tissue cells onto a blank canvas (height x width x 3 uint8)."""
    size = opts["tile_size"]
    canvas = np.full((opts["height_px"], opts["width_px"], 3), _BACKGROUND, np.uint8)
    for row, col, source, kind in plan.cells:
        crop = sources[source].random_crop(rng, kind)
        canvas[row * size : (row + 1) * size, col * size : (col + 1) * size] = augment(crop, rng, opts["stain_jitter"])
    return canvas


def write_pyramidal_tiff(
    image: np.ndarray, out_path: str | Path, mpp: float, tile_size: int, jpeg_quality: int, description: str
) -> None:
    """Write ``image`` as a tiled JPEG TIFF pyramid (downsamples 1, 2, 4, ...) that OpenSlide opens.

    OpenSlide's generic-tiff reader reports ``openslide.mpp-x/y`` from the level-0 X/YResolution
    tags (pixels per centimetre); each halved level follows as a further tiled page marked as a
    reduced-resolution image, down to the last level whose larger side is at least one tile.
    """
    pixels_per_cm = 1e4 / mpp
    with atomic_path(out_path) as tmp, tifffile.TiffWriter(tmp) as tiff:
        level, downsample = image, 1
        while True:
            tiff.write(
                level,
                tile=(tile_size, tile_size),
                compression="jpeg",
                compressionargs={"level": jpeg_quality},
                photometric="rgb",
                resolution=(pixels_per_cm / downsample, pixels_per_cm / downsample),
                resolutionunit="CENTIMETER",
                subfiletype=0 if downsample == 1 else 1,
                description=description if downsample == 1 else None,
                metadata=None,
            )
            if max(level.shape[:2]) // 2 < tile_size:
                break
            level = cv2.resize(level, (level.shape[1] // 2, level.shape[0] // 2), interpolation=cv2.INTER_AREA)
            downsample *= 2


def open_sources(sources: Mapping[str, str | Path], opts: dict) -> dict[str, TissueSource]:
    """Open the ``low_risk`` and ``high_risk`` tissue sources."""
    missing = sorted({"low_risk", "high_risk"} - set(sources))
    if missing:
        raise InputError(f"demo sources: missing key(s) {missing}; give a slide path for low_risk and high_risk")
    return {
        key: TissueSource(
            sources[key], opts["mpp"], opts["tile_size"], opts["assumed_source_mpp"], opts["min_crop_tissue"]
        )
        for key in ("low_risk", "high_risk")
    }


def generate_demo_slide(
    slide_id: str,
    out_path: str | Path,
    clinical_csv: str | Path,
    sources: Mapping[str, str | Path] | None = None,
    seed: int | None = None,
    options: Mapping | None = None,
    signatures_csv: str | Path = DEFAULT_SIGNATURES,
) -> None:
    """Build the synthetic slide ``slide_id`` of the demo table ``clinical_csv`` at ``out_path``.

    ``sources`` maps ``low_risk``/``high_risk`` to real slide files (default
    :data:`DEFAULT_SOURCES`); ``seed`` overrides ``options['seed']``; ``signatures_csv`` holds the
    signature groups of the genomic link.
    """
    opts = resolve_options(options)
    if seed is not None:
        opts["seed"] = int(seed)
    plan = plan_slide(slide_id, load_clinical_table(clinical_csv), opts["seed"], opts, signatures_csv)
    rng = slide_rng(opts["seed"], slide_id, stream=1)
    image = render_slide(plan, open_sources(sources or DEFAULT_SOURCES, opts), rng, opts)
    description = (
        f"G-HANet workflow demo slide (synthetic, from real tissue crops) slide_id={slide_id} "
        f"case_id={plan.case_id} seed={opts['seed']}"
    )
    write_pyramidal_tiff(image, out_path, opts["mpp"], opts["tile_size"], opts["jpeg_quality"], description)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ghanet-wf demo-slide", description=__doc__.splitlines()[0])
    parser.add_argument("--slide-id", required=True, help="slide_id of the slide in the clinical table")
    parser.add_argument("--clinical", required=True, help="MCAT-format demo table (CSV)")
    parser.add_argument("--out", required=True, help="output TIFF path")
    parser.add_argument("--seed", type=int, default=None, help="base seed (default: options or 0)")
    parser.add_argument("--options", default="{}", help="JSON object of demo options (config section demo)")
    parser.add_argument("--low-risk-slide", default=DEFAULT_SOURCES["low_risk"], help="low-risk tissue source")
    parser.add_argument("--high-risk-slide", default=DEFAULT_SOURCES["high_risk"], help="high-risk tissue source")
    parser.add_argument("--signatures", default=DEFAULT_SIGNATURES, help="signatures.csv of the genomic link")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """``ghanet-wf demo-slide``: generate one synthetic demo slide."""
    args = _parse_args(argv)
    options = parse_options(args.options, what="demo")
    sources = {"low_risk": args.low_risk_slide, "high_risk": args.high_risk_slide}
    generate_demo_slide(args.slide_id, args.out, args.clinical, sources, args.seed, options, args.signatures)
    return 0
