"""Benchmark: tiling a large 40x slide vs. the per-patch ``read_region`` white-check of older tools.

Builds once (cached under ``bench/out/``) a pyramidal tiled-JPEG TIFF of 60000 x 45000 px at
0.25 µm/px with levels 1/4/16/64, whose tissue is real H&E texture (the TCGA frozen section in
``data/slides``) laid out in a few blobs on white glass. Then, each in a fresh single-threaded
process, it times:

- ``tile_slide`` (this workflow): seconds, patches, peak RSS;
- the baseline: every grid patch read at the read level with ``read_region`` and kept when it is
  not mostly white (mean saturation test), as CLAM-era scripts did.

and prints the ratio. Not a test: ``python bench/bench_tiling.py [--baseline-sample N]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TEXTURE_SLIDE = ROOT / "data" / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"
WIDTH, HEIGHT, MPP = 60_000, 45_000, 0.25
DOWNSAMPLES = (1, 4, 16, 64)
TILE = 512
#: texture period in level-0 pixels; a multiple of the coarsest downsample keeps levels consistent
TEXTURE_SIZE = (2944, 2368)


def tissue_texture() -> np.ndarray:
    """Real H&E pixels: a central crop of the TCGA frozen section, TEXTURE_SIZE (w, h)."""
    import openslide

    slide = openslide.OpenSlide(str(TEXTURE_SLIDE))
    width, height = TEXTURE_SIZE
    x0, y0 = (slide.dimensions[0] - width) // 2, (slide.dimensions[1] - height) // 2
    rgba = np.asarray(slide.read_region((x0, y0), 0, (width, height)))
    return np.ascontiguousarray(rgba[..., :3])


def tissue_layout(seed: int = 0) -> np.ndarray:
    """Float mask (0..1) at 1/64 scale: a few smooth tissue blobs, about 30% of the slide."""
    rng = np.random.default_rng(seed)
    height, width = HEIGHT // 64 + 1, WIDTH // 64 + 1
    layout = np.zeros((height, width), np.uint8)
    for _ in range(5):
        centre = (int(rng.uniform(0.2, 0.8) * width), int(rng.uniform(0.2, 0.8) * height))
        axes = (int(rng.uniform(0.08, 0.2) * width), int(rng.uniform(0.08, 0.2) * height))
        cv2.ellipse(layout, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, thickness=-1)
    return cv2.GaussianBlur(layout, (0, 0), 3).astype(np.float32) / 255.0


def level_tiles(texture: np.ndarray, layout: np.ndarray, downsample: int):
    """Row-major TILE x TILE tiles of one pyramid level (texture x layout on white)."""
    level_w, level_h = -(-WIDTH // downsample), -(-HEIGHT // downsample)
    tex = cv2.resize(
        texture, (TEXTURE_SIZE[0] // downsample, TEXTURE_SIZE[1] // downsample), interpolation=cv2.INTER_AREA
    )
    tex = np.tile(tex, (-(-TILE // tex.shape[0]) + 1, -(-TILE // tex.shape[1]) + 1, 1))
    period_w, period_h = TEXTURE_SIZE[0] // downsample, TEXTURE_SIZE[1] // downsample
    white = np.full((TILE, TILE, 3), 255, np.uint8)
    per_layout_px = 64 / downsample  # level pixels per layout pixel
    for ty in range(0, level_h, TILE):
        for tx in range(0, level_w, TILE):
            lx0, ly0 = int(tx / per_layout_px), int(ty / per_layout_px)
            lx1, ly1 = int((tx + TILE) / per_layout_px) + 2, int((ty + TILE) / per_layout_px) + 2
            if layout[ly0:ly1, lx0:lx1].max() == 0:
                yield white
                continue
            alpha = _alpha_window(layout, tx, ty, per_layout_px)
            alpha = np.pad(alpha, ((0, TILE - alpha.shape[0]), (0, TILE - alpha.shape[1])))[..., None]
            ox, oy = tx % period_w, ty % period_h
            crop = tex[oy : oy + TILE, ox : ox + TILE].astype(np.float32)
            yield (255 - (255 - crop) * alpha).astype(np.uint8)


def _alpha_window(layout: np.ndarray, tx: int, ty: int, per_layout_px: float) -> np.ndarray:
    """The layout upsampled onto one level tile (computed per tile: the full level is too big)."""
    lx0, ly0 = int(tx / per_layout_px), int(ty / per_layout_px)
    span = int(TILE / per_layout_px) + 2
    window = layout[ly0 : ly0 + span, lx0 : lx0 + span]
    up = cv2.resize(window, None, fx=per_layout_px, fy=per_layout_px, interpolation=cv2.INTER_LINEAR)
    offset_x, offset_y = int(tx - lx0 * per_layout_px), int(ty - ly0 * per_layout_px)
    return up[offset_y : offset_y + TILE, offset_x : offset_x + TILE]


def build_slide(path: Path) -> None:
    """Write the pyramidal JPEG TIFF (about a minute on 2 cores); OpenSlide reads it as generic-tiff."""
    texture, layout = tissue_texture(), tissue_layout()
    tmp = path.with_suffix(".partial.tiff")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for downsample in DOWNSAMPLES:
            shape = (-(-HEIGHT // downsample), -(-WIDTH // downsample), 3)
            tif.write(
                level_tiles(texture, layout, downsample), shape=shape, dtype=np.uint8, tile=(TILE, TILE),
                photometric="rgb", compression="jpeg", compressionargs={"level": 85},
                resolution=(1e4 / (MPP * downsample),) * 2, resolutionunit="CENTIMETER",
                subfiletype=0 if downsample == 1 else 1,
            )  # fmt: skip
    tmp.replace(path)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_workflow(slide: str) -> tuple[float, float, int, float]:
    """(wall seconds, CPU seconds, patches, peak RSS MB) of ``tile_slide`` on one thread."""
    cv2.setNumThreads(1)
    from ghanet_workflow.tiling import tile_slide

    started, cpu_started = time.perf_counter(), time.process_time()
    row = tile_slide(
        slide, slide_id="bench", out_h5=OUT / "bench.h5", out_qc_json=OUT / "bench.qc.json", out_png=OUT / "bench.png"
    )
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return wall, cpu, row["n_patches"], _peak_rss_mb()


def run_baseline(slide: str, sample: int) -> tuple[float, float, int, float, int]:
    """Per-patch read_region + saturation white-check: (wall s, CPU s, kept, peak RSS MB, patches read).

    With ``sample`` > 0 only that many evenly spaced grid patches are read and the time is
    extrapolated to the full grid (printed as such).
    """
    cv2.setNumThreads(1)
    from ghanet_workflow.slides import SlideReader, level_for_downsample
    from ghanet_workflow.tiling import grid_coords

    size0 = round(256 * 0.5 / MPP)
    with SlideReader(slide) as reader:
        level = level_for_downsample(reader.slide.level_downsamples, size0 / 256)
        size = round(size0 / reader.slide.level_downsamples[level])
        grid = grid_coords(WIDTH, HEIGHT, size0, size0)
        picked = grid if sample <= 0 else grid[np.linspace(0, len(grid) - 1, sample).astype(int)]
        started, cpu_started = time.perf_counter(), time.process_time()
        kept = 0
        for x, y in picked:
            patch = reader.read_region_rgb((int(x), int(y)), level, (size, size))
            kept += int(cv2.cvtColor(patch, cv2.COLOR_RGB2HSV)[..., 1].mean() > 15)
        factor = len(grid) / len(picked)
        wall, cpu = (time.perf_counter() - started) * factor, (time.process_time() - cpu_started) * factor
    return wall, cpu, round(kept * factor), _peak_rss_mb(), len(picked)


def in_fresh_process(function, *args):
    """Run ``function`` in a new single-use process so its peak RSS is its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-sample", type=int, default=0, help="read only N grid patches and extrapolate")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    slide = OUT / f"bench_{WIDTH}x{HEIGHT}_{MPP}mpp.tiff"
    if not slide.exists():
        started = time.perf_counter()
        build_slide(slide)
        print(f"built {slide.name} ({slide.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s")
    wall, cpu, patches, rss = in_fresh_process(run_workflow, str(slide))
    print(f"tile_slide : {wall:7.2f} s wall  {cpu:7.2f} s CPU  {patches:6d} patches  peak RSS {rss:6.0f} MB")
    b_wall, b_cpu, b_patches, b_rss, b_read = in_fresh_process(run_baseline, str(slide), args.baseline_sample)
    note = "" if args.baseline_sample <= 0 else f" (extrapolated from {b_read} patches)"
    print(
        f"baseline   : {b_wall:7.2f} s wall  {b_cpu:7.2f} s CPU  {b_patches:6d} patches  peak RSS {b_rss:6.0f} MB{note}"
    )
    print(f"speed-up   : {b_wall / wall:.1f}x wall, {b_cpu / cpu:.1f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
