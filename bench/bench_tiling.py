"""Benchmark: tiling a large 20x and a large 40x slide vs. the per-patch ``read_region`` white-check.

Builds once (cached under ``bench/out/``) two pyramidal tiled-JPEG TIFFs with levels 1/4/16/64
whose tissue is real H&E texture (a crop of the TCGA frozen section in ``data/slides``, resampled
to each slide's µm/px) laid out in the same few blobs on white glass (about 40% of the slide):

- ``20x``: 30000 x 22500 px at 0.5 µm/px (its levels: 0.5, 2, 8, 32 µm/px);
- ``40x``: 60000 x 45000 px at 0.25 µm/px (its levels: 0.25, 1, 4, 16 µm/px).

Both cover the same 15 x 11.25 mm. Then, per slide, after one warm-up run (page cache), and each
in a fresh process (its peak RSS is its own), ``--repeats`` times alternating, it times:

- ``ghanet-wf tile`` (this workflow, default options but preset ``resection``), the whole process
  as a Snakemake job runs it (start-up and imports included): seconds wall and CPU, patches, peak RSS;
- the baseline: every grid patch of 256 px at 0.5 µm/px read at the read level with
  ``read_region`` and kept when it is not mostly white (mean saturation test), as CLAM-era
  scripts did (``--baseline-sample N`` reads N evenly spaced patches and extrapolates),

and prints the medians and the ratios of the medians, from the same run. ``--levers`` instead times
the ways to read the mask thumbnail that issue 16 asked to measure (:func:`read_lever`). Not a test:

    python bench/bench_tiling.py [--slides 20x 40x] [--repeats 3] [--baseline-sample N] [--reference-src DIR]
    python bench/bench_tiling.py --levers [--repeats 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TEXTURE_SLIDE = ROOT / "data" / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"
#: µm/px assumed for the texture source (it has no MPP metadata; the demo assumes the same)
TEXTURE_MPP = 0.25
#: texture crop in source pixels; /2 and /64 of it stay whole, so every level of both slides tiles evenly
TEXTURE_SOURCE_PX = (2944, 2432)
DOWNSAMPLES = (1, 4, 16, 64)
TILE = 512
#: µm per pixel of the tissue layout (blob mask); 64 px of the 40x slide, 32 of the 20x one
LAYOUT_UM = 16.0
#: physical slide size in µm (the 40x slide's 60000 x 45000 px at 0.25 µm/px)
SLIDE_UM = (15_000.0, 11_250.0)
PATCH, TARGET_MPP = 256, 0.5
#: bump when the slide recipe changes (the cache file name carries it)
RECIPE = 2


@dataclass(frozen=True)
class SlideSpec:
    """One benchmark slide: level-0 size and µm/px."""

    name: str
    mpp: float

    @property
    def width(self) -> int:
        return round(SLIDE_UM[0] / self.mpp)

    @property
    def height(self) -> int:
        return round(SLIDE_UM[1] / self.mpp)

    @property
    def path(self) -> Path:
        return OUT / f"bench_{self.name}_{self.width}x{self.height}_{self.mpp}mpp_r{RECIPE}.tiff"


SLIDES = {"20x": SlideSpec("20x", 0.5), "40x": SlideSpec("40x", 0.25)}


def tissue_texture(spec: SlideSpec) -> np.ndarray:
    """Real H&E pixels: a central crop of the TCGA frozen section, resampled to ``spec.mpp``."""
    import openslide

    slide = openslide.OpenSlide(str(TEXTURE_SLIDE))
    width, height = TEXTURE_SOURCE_PX
    x0, y0 = (slide.dimensions[0] - width) // 2, (slide.dimensions[1] - height) // 2
    rgb = np.ascontiguousarray(np.asarray(slide.read_region((x0, y0), 0, (width, height)))[..., :3])
    factor = TEXTURE_MPP / spec.mpp
    if factor != 1:
        rgb = cv2.resize(rgb, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)
    return rgb


def tissue_layout(seed: int = 0) -> np.ndarray:
    """Float mask (0..1) at LAYOUT_UM µm/px: a few smooth tissue blobs, about 40% of the slide."""
    rng = np.random.default_rng(seed)
    height, width = round(SLIDE_UM[1] / LAYOUT_UM) + 1, round(SLIDE_UM[0] / LAYOUT_UM) + 1
    layout = np.zeros((height, width), np.uint8)
    for _ in range(6):
        centre = (int(rng.uniform(0.2, 0.8) * width), int(rng.uniform(0.2, 0.8) * height))
        axes = (int(rng.uniform(0.1, 0.22) * width), int(rng.uniform(0.1, 0.22) * height))
        cv2.ellipse(layout, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, thickness=-1)
    return cv2.GaussianBlur(layout, (0, 0), 3).astype(np.float32) / 255.0


def level_tiles(spec: SlideSpec, texture: np.ndarray, layout: np.ndarray, downsample: int):
    """Row-major TILE x TILE tiles of one pyramid level (texture x layout on white)."""
    level_w, level_h = -(-spec.width // downsample), -(-spec.height // downsample)
    period_w, period_h = texture.shape[1] // downsample, texture.shape[0] // downsample
    tex = cv2.resize(texture, (period_w, period_h), interpolation=cv2.INTER_AREA)
    tex = np.tile(tex, (-(-TILE // period_h) + 1, -(-TILE // period_w) + 1, 1))
    white = np.full((TILE, TILE, 3), 255, np.uint8)
    per_layout_px = LAYOUT_UM / (spec.mpp * downsample)  # level pixels per layout pixel
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
    """The layout resampled onto one level tile (computed per tile: the full level is too big)."""
    lx0, ly0 = int(tx / per_layout_px), int(ty / per_layout_px)
    span = int(TILE / per_layout_px) + 2
    window = layout[ly0 : ly0 + span, lx0 : lx0 + span]
    up = cv2.resize(window, None, fx=per_layout_px, fy=per_layout_px, interpolation=cv2.INTER_LINEAR)
    offset_x, offset_y = int(tx - lx0 * per_layout_px), int(ty - ly0 * per_layout_px)
    return up[offset_y : offset_y + TILE, offset_x : offset_x + TILE]


def build_slide(spec: SlideSpec) -> None:
    """Write the pyramidal JPEG TIFF (a minute for 40x on 2 cores); OpenSlide reads it as generic-tiff."""
    texture, layout = tissue_texture(spec), tissue_layout()
    tmp = spec.path.with_suffix(".partial.tiff")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for downsample in DOWNSAMPLES:
            shape = (-(-spec.height // downsample), -(-spec.width // downsample), 3)
            tif.write(
                level_tiles(spec, texture, layout, downsample), shape=shape, dtype=np.uint8, tile=(TILE, TILE),
                photometric="rgb", compression="jpeg", compressionargs={"level": 85},
                resolution=(1e4 / (spec.mpp * downsample),) * 2, resolutionunit="CENTIMETER",
                subfiletype=0 if downsample == 1 else 1,
            )  # fmt: skip
    tmp.replace(spec.path)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_workflow(slide: str, options: dict, src: str | None = None) -> tuple[float, float, int, float]:
    """(wall s, CPU s, patches, peak RSS MB) of one ``ghanet-wf tile`` process, start-up and imports
    included (as ``/usr/bin/time`` measured CLAM's ``create_patches_fp``); ``src``: another checkout's
    ``src`` folder to import ghanet_workflow from instead (``--reference-src``)."""
    qc_json = OUT / "bench.qc.json"
    command = [
        sys.executable, "-m", "ghanet_workflow.cli", "tile", "--slide", slide, "--slide-id", "bench",
        "--out-h5", str(OUT / "bench.h5"), "--out-qc-json", str(qc_json), "--out-png", str(OUT / "bench.png"),
        "--options", json.dumps(options),
    ]  # fmt: skip
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=src) if src else None
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"ghanet-wf tile failed ({process.returncode}): {stderr[-2000:]}")
    patches = json.loads(qc_json.read_text())["n_patches"]
    return wall, usage.ru_utime + usage.ru_stime, patches, usage.ru_maxrss / 1024


def run_baseline(slide: str, mpp: float, sample: int) -> tuple[float, float, int, float]:
    """Per-patch read_region + saturation white-check, one thread: (wall s, CPU s, kept, peak RSS MB).

    With ``sample`` > 0 only that many evenly spaced grid patches are read and the time and count
    are extrapolated to the full grid.
    """
    from ghanet_workflow.slides import SlideReader, level_for_downsample
    from ghanet_workflow.tiling import grid_coords

    cv2.setNumThreads(1)
    size0 = round(PATCH * TARGET_MPP / mpp)
    with SlideReader(slide) as reader:
        width, height = reader.slide.dimensions
        level = level_for_downsample(reader.slide.level_downsamples, size0 / PATCH)
        size = round(size0 / reader.slide.level_downsamples[level])
        grid = grid_coords(width, height, size0, size0)
        picked = grid if sample <= 0 else grid[np.linspace(0, len(grid) - 1, min(sample, len(grid))).astype(int)]
        started, cpu_started = time.perf_counter(), time.process_time()
        kept = 0
        for x, y in picked:
            patch = reader.read_region_rgb((int(x), int(y)), level, (size, size))
            kept += int(cv2.cvtColor(patch, cv2.COLOR_RGB2HSV)[..., 1].mean() > 15)
        factor = len(grid) / len(picked)
        wall, cpu = (time.perf_counter() - started) * factor, (time.process_time() - cpu_started) * factor
    return wall, cpu, round(kept * factor), _peak_rss_mb()


def in_fresh_process(function, *args):
    """Run ``function`` in a new single-use process so its peak RSS is its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


#: ways to get a 4 µm/px-class thumbnail, timed by ``--levers`` (issue 16); see :func:`read_lever`
LEVERS = ("resample_finer_pil", "get_thumbnail", "nearest_level_numpy", "nearest_level_numpy_2_strips")


def read_lever(slide: str, lever: str) -> tuple[float, float, int, float]:
    """(wall s, CPU s, thumbnail pixels, peak RSS MB) of one way to read the mask thumbnail:

    - ``resample_finer_pil``: what tiling did before: the level at or finer than 4 µm/px through
      ``read_region`` (PIL), area-resampled to 4 µm/px when it is finer;
    - ``get_thumbnail``: OpenSlide's own thumbnail at 4 µm/px;
    - ``nearest_level_numpy``: what tiling does now: the level at 4 µm/px or, on a large slide, the
      next coarser one up to 8 µm/px, read as is, decoded into a numpy buffer
      (``SlideReader.read_region_rgb``);
    - ``nearest_level_numpy_2_strips``: the same in two row strips on two threads.
    """
    import ctypes

    import openslide
    from openslide import lowlevel

    from ghanet_workflow.slides import SlideReader

    slide_handle = openslide.OpenSlide(slide)
    width, height = slide_handle.dimensions
    scale = 4.0 / float(slide_handle.properties["openslide.mpp-x"])
    downsamples = slide_handle.level_downsamples
    started, cpu_started = time.perf_counter(), time.process_time()
    if lever == "resample_finer_pil":
        level = max(i for i, ds in enumerate(downsamples) if ds <= scale * 1.02)
        size = (round(width / scale), round(height / scale))
        native = abs(downsamples[level] / scale - 1) <= 0.02
        read = size if native else slide_handle.level_dimensions[level]
        rgb = cv2.cvtColor(np.asarray(slide_handle.read_region((0, 0), level, read)), cv2.COLOR_RGBA2RGB)
        if not native:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    elif lever == "get_thumbnail":
        rgb = np.asarray(slide_handle.get_thumbnail((round(width / scale), round(height / scale))))
    else:
        level = min(i for i, ds in enumerate(downsamples) if ds >= scale * 0.98)
        level_w, level_h = slide_handle.level_dimensions[level]
        if lever == "nearest_level_numpy":
            with SlideReader(slide) as reader:
                rgb = reader.read_region_rgb((0, 0), level, (level_w, level_h))
        else:
            bgra = np.empty((level_h, level_w, 4), np.uint8)
            rows = np.linspace(0, level_h, 3).astype(int)

            def strip(i: int) -> None:
                top, bottom = int(rows[i]), int(rows[i + 1])
                pointer = bgra[top:bottom].ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
                y0 = int(top * downsamples[level])
                lowlevel._read_region(slide_handle._osr, pointer, 0, y0, level, level_w, bottom - top)

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                list(pool.map(strip, range(2)))
            rgb = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return wall, cpu, rgb.shape[0] * rgb.shape[1], _peak_rss_mb()


def run_levers(names: list[str], repeats: int) -> None:
    """Every lever in a fresh process (cold OpenSlide cache), alternated ``repeats`` times; medians."""
    for name in names:
        spec = SLIDES[name]
        runs = {lever: [] for lever in LEVERS}
        for _ in range(repeats):
            for lever in LEVERS:
                runs[lever].append(in_fresh_process(read_lever, str(spec.path), lever))
        print(f"{name}: mask thumbnail, 4 µm/px class")
        for lever, values in runs.items():
            wall, cpu, pixels, rss = (statistics.median(v) for v in zip(*values))
            print(
                f"  {lever:<29}: {wall:6.3f} s wall  {cpu:6.3f} s CPU  {pixels / 1e6:5.1f} Mpx  peak RSS {rss:4.0f} MB"
            )


def _line(label: str, runs: list[tuple]) -> tuple[float, float, int, float]:
    wall, cpu, patches, rss = (statistics.median(values) for values in zip(*(run[:4] for run in runs)))
    spread = "/".join(f"{run[0]:.2f}" for run in runs)
    print(
        f"  {label:<14}: {wall:8.2f} s wall  {cpu:8.2f} s CPU  {round(patches):6d} patches  "
        f"peak RSS {rss:5.0f} MB  (runs: {spread} s)"
    )
    return wall, cpu, patches, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", nargs="+", choices=sorted(SLIDES), default=sorted(SLIDES))
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs per slide; medians are printed")
    parser.add_argument("--baseline-sample", type=int, default=0, help="read only N grid patches and extrapolate")
    parser.add_argument("--preset", default="resection", help="tiling preset (the issue's runs: resection)")
    parser.add_argument(
        "--reference-src",
        help="also time ghanet-wf tile of another checkout's src/ (e.g. a git worktree of an older commit)",
    )
    parser.add_argument("--levers", action="store_true", help="time only the ways to read the mask thumbnail")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    options = {"preset": args.preset}
    for name in args.slides:
        spec = SLIDES[name]
        if not spec.path.exists():
            started = time.perf_counter()
            build_slide(spec)
            size_mib = spec.path.stat().st_size / 2**20
            print(f"built {spec.path.name} ({size_mib:.0f} MiB) in {time.perf_counter() - started:.0f} s")
    if args.levers:
        run_levers(args.slides, args.repeats)
        return 0
    for name in args.slides:
        spec = SLIDES[name]
        run_workflow(str(spec.path), options)  # warm-up: page cache, imports
        ours, base, reference = [], [], []
        for _ in range(args.repeats):
            ours.append(run_workflow(str(spec.path), options))
            base.append(in_fresh_process(run_baseline, str(spec.path), spec.mpp, args.baseline_sample))
            if args.reference_src:
                reference.append(run_workflow(str(spec.path), options, args.reference_src))
        print(f"{name}: {spec.width} x {spec.height} px at {spec.mpp} µm/px, levels {DOWNSAMPLES}")
        wall, cpu, _, _ = _line("ghanet-wf tile", ours)
        note = "" if args.baseline_sample <= 0 else f"  (extrapolated from {args.baseline_sample} patches)"
        b_wall, b_cpu, _, _ = _line("baseline", base)
        print(f"  {'ratio':<14}: {b_wall / wall:8.1f}x wall {b_cpu / cpu:7.1f}x CPU{note}")
        if reference:
            r_wall, r_cpu, _, _ = _line("reference", reference)
            print(f"  {'ratio':<14}: {r_wall / wall:8.2f}x wall {r_cpu / cpu:7.2f}x CPU  (reference / this checkout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
