"""Slide files, in one place: which names are slides, their key, HDF5 attributes, and reading pixels.

- :data:`SLIDE_EXTENSIONS` and :func:`slide_key`: the slide key (a slide id without its slide-file
  extension) names every per-slide output; the cohort, report and predict stages and the DAG use it.
- :func:`h5_attr` / :func:`h5_attrs`: HDF5 attributes as plain Python values.
- :func:`open_slide`, :func:`resolve_mpp` and :class:`SlideReader`: opening whole-slide images,
  their pixel size (MPP) and reading pixels safely, shared by tiling, feature extraction and the demo.
  Every failure to open becomes a :class:`~ghanet_workflow.errors.SlideError` whose message names
  the slide and says what to do.

OpenSlide latches errors: after one failed read, every later call on that handle fails too.
:class:`SlideReader` therefore reopens the file before it retries a read.

The workflow imports this module while it builds the DAG (through ``slide_table``), so it stays
light: numpy and the standard library at import time; OpenSlide and OpenCV are imported inside the
functions that read pixels.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ghanet_workflow.errors import SlideError

if TYPE_CHECKING:
    import openslide

#: File extensions dropped from a slide id to make its key (compared case-insensitively): the
#: formats OpenSlide reads, plus ``.h5`` so that a slide id naming its bring-your-own CLAM/TRIDENT
#: features file (``features.external_dir/<key>.h5``) has the same key as the slide.
SLIDE_EXTENSIONS: tuple[str, ...] = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm", ".h5",
)  # fmt: skip

#: MPP values outside this range (µm per level-0 pixel) are metadata noise, not a scan resolution.
PLAUSIBLE_MPP_RANGE: tuple[float, float] = (0.05, 20.0)

#: Vendor properties holding the level-0 pixel size in µm, tried after ``openslide.mpp-x/y``
#: (OpenSlide already maps most vendors onto ``openslide.mpp-x``; these are fallbacks).
VENDOR_MPP_KEYS: tuple[tuple[str, str], ...] = (("aperio.MPP", "aperio.MPP"),)

#: µm per TIFF ResolutionUnit (tiff.XResolution is pixels per unit).
_TIFF_UNIT_UM: dict[str, float] = {"centimeter": 1e4, "inch": 25_400.0, "millimeter": 1e3, "micrometer": 1.0}

#: Largest read (pixels per side, at the read level) done in one ``read_region`` call.
READ_CHUNK_PX = 4096

#: Relative slack when choosing a pyramid level, absorbing rounding like 2.0005 vs 2.
LEVEL_TOLERANCE = 0.02


def slide_key(slide_id: str) -> str:
    """Slide key = slide id without a known slide-file extension (dots elsewhere are kept)."""
    name = str(slide_id).strip()
    lower = name.lower()
    for extension in SLIDE_EXTENSIONS:
        if lower.endswith(extension):
            return name[: -len(extension)]
    return name


def h5_attr(value):
    """An HDF5 attribute as a plain Python value: bytes decoded (UTF-8, bad bytes replaced), numpy
    scalars unwrapped, arrays (e.g. of strings) as lists of such values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [h5_attr(item) for item in value]
    return value


def h5_attrs(obj) -> dict:
    """Every attribute of an open HDF5 file, group or dataset, as plain Python values (:func:`h5_attr`)."""
    return {key: h5_attr(value) for key, value in obj.attrs.items()}


@dataclass(frozen=True)
class MppInfo:
    """Level-0 pixel size in µm and the metadata key (or ``override``) it came from."""

    mpp: float
    source: str


def open_slide(path: str | os.PathLike, slide_id: str | None = None) -> openslide.OpenSlide:
    """Open ``path`` with OpenSlide or raise ``SlideError('failed', ...)`` explaining why not."""
    import openslide

    path = Path(path)
    name = slide_id or path.name
    if not path.is_file():
        raise SlideError("failed", f"slide {name!r}: file not found at {str(path)!r}; check the slide table path")
    if path.stat().st_size == 0:
        raise SlideError("failed", f"slide {name!r}: file {str(path)!r} is empty (0 bytes); re-copy or re-download it")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(
            "failed",
            f"slide {name!r}: {str(path)!r} is not a whole-slide image OpenSlide can read "
            "(unsupported or missing format); check the file type or remove it from the slide table",
        ) from None
    except (openslide.OpenSlideError, OSError) as err:
        raise SlideError(
            "failed",
            f"slide {name!r}: OpenSlide cannot open {str(path)!r} ({err}); the file is damaged or uses "
            "an unsupported encoding; re-export it or remove it from the slide table",
        ) from None


def _plausible(value: float) -> bool:
    low, high = PLAUSIBLE_MPP_RANGE
    return math.isfinite(value) and low <= value <= high


def _float_property(properties, key: str) -> float | None:
    try:
        return float(properties[key])
    except (KeyError, ValueError, TypeError):
        return None


def _mpp_from_tiff_tags(properties) -> float | None:
    """µm/px from ``tiff.XResolution`` + ``tiff.ResolutionUnit``, or None if absent."""
    resolution = _float_property(properties, "tiff.XResolution")
    unit_um = _TIFF_UNIT_UM.get(str(properties.get("tiff.ResolutionUnit", "")).lower())
    if not resolution or resolution <= 0 or unit_um is None:
        return None
    return unit_um / resolution


def _metadata_mpp_candidates(properties) -> list[tuple[str, float]]:
    """All (source, µm/px) pairs found in the slide metadata, in order of trust."""
    candidates: list[tuple[str, float]] = []
    for key_x, key_y in (("openslide.mpp-x", "openslide.mpp-y"), *VENDOR_MPP_KEYS):
        x_mpp, y_mpp = _float_property(properties, key_x), _float_property(properties, key_y)
        if x_mpp is not None:
            candidates.append((key_x, (x_mpp + (y_mpp or x_mpp)) / 2))
    tiff_mpp = _mpp_from_tiff_tags(properties)
    if tiff_mpp is not None:
        candidates.append(("tiff.XResolution", tiff_mpp))
    return candidates


def resolve_mpp(properties, *, slide_id: str, override: float | None = None) -> MppInfo:
    """Level-0 µm/px: the override if given, else the first plausible metadata value.

    Raises ``SlideError('failed', ...)`` naming the slide and the ``mpp`` column to set when
    there is no usable value. Never assumes a magnification.
    """
    low, high = PLAUSIBLE_MPP_RANGE
    if override is not None and not (isinstance(override, float) and math.isnan(override)):
        override = float(override)
        if not _plausible(override):
            raise SlideError(
                "failed",
                f"slide {slide_id!r}: mpp override {override} µm/px is outside the plausible range "
                f"{low}-{high}; fix the `mpp` column for it in the slide table",
            )
        return MppInfo(override, "override")
    candidates = _metadata_mpp_candidates(properties)
    for source, value in candidates:
        if _plausible(value):
            return MppInfo(value, source)
    if candidates:
        found = ", ".join(f"{source}={value:.4g}" for source, value in candidates)
        raise SlideError(
            "failed",
            f"slide {slide_id!r}: MPP metadata is implausible ({found} µm/px; expected {low}-{high}); "
            "set the `mpp` column for it in the slide table",
        )
    raise SlideError(
        "failed",
        f"slide {slide_id!r} has no MPP metadata (no openslide.mpp-x, vendor or TIFF resolution tag): "
        "set the `mpp` column for it in the slide table (µm per level-0 pixel, e.g. 0.25 for 40x)",
    )


def level_for_downsample(downsamples: tuple[float, ...], needed: float, tolerance: float = LEVEL_TOLERANCE) -> int:
    """Index of the level with the largest downsample not exceeding ``needed`` (with slack)."""
    usable = [i for i, ds in enumerate(downsamples) if ds <= needed * (1 + tolerance)]
    return max(usable, key=lambda i: downsamples[i]) if usable else 0


def rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite an RGBA array on white (transparent = unscanned area = background)."""
    import cv2

    rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    if rgba[..., 3].min() < 255:
        rows, cols = np.nonzero(rgba[..., 3] < 255)
        alpha = rgba[rows, cols, 3:].astype(np.uint16)
        rgb[rows, cols] = (rgb[rows, cols].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
    return rgb


class SlideReader:
    """One process's OpenSlide handle on one slide: opened on first use, reopened after a read error.

    Creating a reader opens nothing, so a reader can be made before a DataLoader forks its workers
    and each process opens its own handle. ``slide`` opens the file (``SlideError`` if it cannot).
    Two kinds of reads:

    - :meth:`read_region_rgb` / :meth:`read_downsampled` (tiling): composited on white, a read
      that fails twice becomes a ``SlideError``;
    - :meth:`read`, :meth:`read_strip`, :meth:`read_with_retry` (feature extraction, per patch):
      the RGB channels of OpenSlide's RGBA as a view, no copy; a failed read raises OpenSlide's own
      error so that the caller can count the patch and go on.
    """

    def __init__(self, path: str | os.PathLike, slide_id: str | None = None):
        self.path = Path(path)
        self.slide_id = slide_id or self.path.name
        self._slide: openslide.OpenSlide | None = None

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def slide(self) -> openslide.OpenSlide:
        """The OpenSlide handle, opened now if it is not open."""
        if self._slide is None:
            self._slide = open_slide(self.path, self.slide_id)
        return self._slide

    def close(self) -> None:
        """Release the handle (the next read opens a fresh one)."""
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def reopen(self) -> openslide.OpenSlide:
        """Replace the (possibly error-latched) handle with a fresh one, opened now."""
        self.close()
        return self.slide

    def _rgba(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGBA uint8 (H, W, 4) of ``size`` at ``level``; ``location`` in level-0 pixels."""
        return np.asarray(self.slide.read_region((int(location[0]), int(location[1])), level, size))

    def _rgba_with_retry(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """:meth:`_rgba`; on an error reopen the handle and retry once; a second error is raised
        with the handle closed, so that the next read starts on a fresh one."""
        import openslide

        try:
            return self._rgba(location, level, size)
        except (openslide.OpenSlideError, OSError):
            self.close()
            try:
                return self._rgba(location, level, size)
            except (openslide.OpenSlideError, OSError):
                self.close()
                raise

    def read(self, x: int, y: int, level: int, size: int) -> np.ndarray:
        """RGB uint8 (size, size, 3) region at ``level`` whose top-left is level-0 (x, y)."""
        return self._rgba((x, y), level, (size, size))[:, :, :3]

    def read_strip(self, x: int, y: int, level: int, size: int, count: int) -> list[np.ndarray]:
        """``count`` side-by-side patches starting at level-0 (x, y), read as one region."""
        region = self._rgba((x, y), level, (size * count, size))
        return [region[:, i * size : (i + 1) * size, :3] for i in range(count)]

    def read_with_retry(self, x: int, y: int, level: int, size: int) -> np.ndarray:
        """:meth:`read`, retried once on a fresh handle (OpenSlide handles stay broken)."""
        return self._rgba_with_retry((x, y), level, (size, size))[:, :, :3]

    def _rgb_on_white(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (H, W, 3) composited on white, decoded straight into a numpy buffer.

        OpenSlide fills a buffer of premultiplied ARGB; compositing premultiplied colour on white
        is ``colour + (255 - alpha)``, one saturating add, so the pixels need neither the
        un-premultiplying copy nor the PIL image that ``OpenSlide.read_region`` makes (together
        about a third of the read time of a 4 µm/px thumbnail of a 40x slide). Opaque pixels come
        out identical to :func:`rgba_to_rgb_on_white` of ``read_region``, transparent ones white;
        partly transparent ones may differ by one grey level. Falls back to ``read_region`` where
        the low-level call is not there (another openslide-python) or the byte order is not
        little-endian.
        """
        import cv2

        try:
            from openslide import lowlevel

            raw_read = lowlevel._read_region  # the buffer-filling call that read_region wraps
            handle = self.slide._osr
        except (ImportError, AttributeError):
            raw_read = handle = None
        if raw_read is None or handle is None or sys.byteorder != "little":
            return rgba_to_rgb_on_white(self._rgba(location, level, size))
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            return np.zeros((max(height, 0), max(width, 0), 3), np.uint8)
        bgra = np.empty((height, width, 4), np.uint8)  # little-endian ARGB words = B, G, R, A bytes
        pointer = bgra.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
        raw_read(handle, pointer, int(location[0]), int(location[1]), int(level), width, height)
        rgb = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
        alpha = bgra[..., 3]
        if alpha.min() < 255:
            rgb = cv2.add(rgb, cv2.cvtColor(cv2.bitwise_not(alpha), cv2.COLOR_GRAY2RGB))
        return rgb

    def read_region_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array (H, W, 3) of ``size`` at ``level`` composited on white; ``location`` in
        level-0 pixels. Retried once on a fresh handle, then a ``SlideError``."""
        import openslide

        try:
            try:
                return self._rgb_on_white(location, level, size)
            except (openslide.OpenSlideError, OSError):
                self.close()
                try:
                    return self._rgb_on_white(location, level, size)
                except (openslide.OpenSlideError, OSError):
                    self.close()
                    raise
        except openslide.OpenSlideError as err:
            raise SlideError(
                "failed",
                f"slide {self.slide_id!r}: opens but its pixels cannot be decoded at level {level} "
                f"({err}); the file is corrupt: re-download or re-export it",
            ) from None

    def read_downsampled(self, scale_x: float, scale_y: float, out_size: tuple[int, int]) -> np.ndarray:
        """Whole slide as RGB at ``out_size`` (w, h); one output pixel = ``scale`` level-0 pixels.

        Reads from the best pyramid level in chunks of at most ``READ_CHUNK_PX`` per side and
        area-averages each chunk, so huge or single-level slides never need the full level in memory.
        """
        import cv2

        out_w, out_h = out_size
        level = level_for_downsample(self.slide.level_downsamples, min(scale_x, scale_y))
        level_ds = self.slide.level_downsamples[level]
        # a level within LEVEL_TOLERANCE of the wanted scale is used as is (no resampling)
        native = max(abs(scale_x / level_ds - 1), abs(scale_y / level_ds - 1)) <= LEVEL_TOLERANCE
        block_w = max(1, int(READ_CHUNK_PX * level_ds / scale_x))
        block_h = max(1, int(READ_CHUNK_PX * level_ds / scale_y))
        if native and block_w >= out_w and block_h >= out_h:  # one read, already the output: no copy
            return self.read_region_rgb((0, 0), level, (out_w, out_h))
        out = np.empty((out_h, out_w, 3), np.uint8)
        for oy in range(0, out_h, block_h):
            for ox in range(0, out_w, block_w):
                bw, bh = min(block_w, out_w - ox), min(block_h, out_h - oy)
                x0, y0 = int(ox * scale_x), int(oy * scale_y)
                read_w = bw if native else max(1, math.ceil(bw * scale_x / level_ds))
                read_h = bh if native else max(1, math.ceil(bh * scale_y / level_ds))
                chunk = self.read_region_rgb((x0, y0), level, (read_w, read_h))
                if chunk.shape[:2] != (bh, bw):
                    chunk = cv2.resize(chunk, (bw, bh), interpolation=cv2.INTER_AREA)
                out[oy : oy + bh, ox : ox + bw] = chunk
        return out
