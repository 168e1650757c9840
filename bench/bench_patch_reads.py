"""Benchmark: patch reading with several side-by-side patches per ``read_region`` call vs one per call.

The feature stage's own reader (``features.PatchBatches``, the code each DataLoader worker runs)
reads the full row-major 256-px grid of each real slide in ``data/slides`` with
``features.patches_per_read`` = 1 (one OpenSlide call per patch, as CLAM and the naive loop do) and
with larger values, alternating ``--repeats`` times with a fresh OpenSlide handle (cold tile cache)
each time. Prints the median patches/s of each setting, its ratio to one patch per read, and checks
that every setting returns the same pixels.

    python bench/bench_patch_reads.py [--repeats 5] [--per-read 1 4 8 16] [--slides S ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import openslide

from ghanet_workflow import features

SLIDES = Path(__file__).resolve().parents[1] / "data" / "slides"
REAL_SLIDES = ["CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"]  # Aperio JPEG / JPEG 2000 tiles
PATCH = 256


def write_grid(slide: Path, out: Path) -> Path:
    """Coords HDF5 (tiling-stage layout) of the full level-0 grid of ``slide``."""
    width, height = openslide.OpenSlide(str(slide)).dimensions
    coords = [(x, y) for y in range(0, height - PATCH + 1, PATCH) for x in range(0, width - PATCH + 1, PATCH)]
    with h5py.File(out, "w") as handle:
        handle["coords"] = np.asarray(coords, dtype=np.int64)
        for key, value in dict(patch_size=PATCH, patch_level=0, patch_size_level0=PATCH, status="ok").items():
            handle.attrs[key] = value
    return out


def read_all(plan: features.SlidePlan, per_read: int, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds to read every patch of ``plan`` with a fresh reader, and the pixels (for the check)."""
    dataset = features.PatchBatches([plan], per_read)
    started = time.perf_counter()
    batches = [dataset[key] for key in features.batch_keys([plan], batch_size)]
    seconds = time.perf_counter() - started
    dataset.close()
    return seconds, np.concatenate([b.pixels.numpy() for b in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-read", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--slides", type=Path, nargs="+", help="other slide files (default: the real slides)")
    args = parser.parse_args()
    settings = sorted(set([1, *args.per_read]))
    with tempfile.TemporaryDirectory() as tmp:
        for slide in args.slides or [SLIDES / name for name in REAL_SLIDES]:
            name = slide.name
            plan = features.plan_slide(slide, write_grid(slide, Path(tmp) / f"{slide.stem}.h5"), Path(tmp) / "x.h5")
            seconds: dict[int, list[float]] = {n: [] for n in settings}
            reference = None
            for _ in range(args.repeats):
                for per_read in settings:
                    elapsed, pixels = read_all(plan, per_read, args.batch_size)
                    seconds[per_read].append(elapsed)
                    if reference is None:
                        reference = pixels
                    assert np.array_equal(pixels, reference), f"patches_per_read={per_read} changed the pixels"
            n = len(plan.coords)
            base = statistics.median(seconds[1])
            print(f"{name}: {n} patches of {PATCH} px, level 0, median of {args.repeats} (same pixels: yes)")
            for per_read in settings:
                median = statistics.median(seconds[per_read])
                print(f"  patches_per_read {per_read:>3}: {n / median:8.0f} patches/s  (x{base / median:.2f})")


if __name__ == "__main__":
    main()
