"""The demo cohort with real features, built into a given folder (for slow tests; no Snakemake).

The workflow's stages called as functions, as the rules would run them: the 40 synthetic demo
slides (ghanet_workflow.demo, real tissue crops with the planted survival signal; smaller than
the workflow's to save time), tissue tiling with the config's tiling options, efficientnet_lite0
features on the CPU, the cohort and the patient-level folds. Building takes about a minute and a
half on 2 CPU cores; a folder that already holds a finished build is reused as it is.

Use from a session fixture::

    from demo_features import build_demo_features

    @pytest.fixture(scope="session")
    def demo_features_run(tmp_path_factory):
        return build_demo_features(tmp_path_factory.mktemp("demo"))
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch
import yaml

from ghanet_workflow.cohort import build_cohort, slide_status_from_features
from ghanet_workflow import demo
from ghanet_workflow.features import extract_features
from ghanet_workflow.fold import run_fold
from ghanet_workflow.slides import slide_key
from ghanet_workflow.splits import make_splits, write_splits
from ghanet_workflow.tiling import tile_slide

REPO = Path(__file__).resolve().parents[1]
DEMO_TABLE = REPO / "data" / "demo" / "tcga_blca_demo.csv"
DEMO_SLIDE_LIST = REPO / "config" / "demo_slides.tsv"
SIGNATURES = REPO / "data" / "tcga" / "signatures.csv"
#: 1536 px squares: 27 tissue patches per slide instead of 48, same signal
SMALL_SLIDES = {"width_px": 1536, "height_px": 1536}
FEATURE_OPTIONS = {"encoder": "efficientnet_lite0", "device": "cpu", "num_workers": 0, "progress": False}
DONE = "build.json"


@dataclass(frozen=True)
class DemoRun:
    """A built demo cohort: ``root/cohort`` (CONTRACTS files) and ``root/splits/fold_{k}.csv``."""

    root: Path
    cohort_dir: Path
    fold_csvs: list[Path]


def demo_slide_ids() -> list[str]:
    """slide_id of every synthetic demo slide (the slide list's rows under results/demo_slides)."""
    listed = pd.read_csv(DEMO_SLIDE_LIST, sep="\t", dtype=str, keep_default_na=False)
    return listed.loc[listed["path"].str.startswith("results/demo_slides/"), "slide_id"].tolist()


def config_section(name: str) -> dict:
    """A section of config/config.yaml (the workflow's defaults for the demo)."""
    return dict(yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))[name] or {})


def make_slides(slides_dir: Path, slide_ids: list[str], demo_options: Mapping) -> list[Path]:
    """Generate the demo slides (seeded: the same pixels every time), reading the two tissue sources once."""
    opts = demo.resolve_options(demo_options)
    table = demo.load_clinical_table(DEMO_TABLE)
    sources = demo.open_sources({key: REPO / path for key, path in demo.DEFAULT_SOURCES.items()}, opts)
    paths = []
    for slide_id in slide_ids:
        path = slides_dir / slide_id
        plan = demo.plan_slide(slide_id, table, opts["seed"], opts, REPO / demo.DEFAULT_SIGNATURES)
        image = demo.render_slide(plan, sources, demo.slide_rng(opts["seed"], slide_id, stream=1), opts)
        description = f"G-HANet workflow demo slide (synthetic, test build) slide_id={slide_id} seed={opts['seed']}"
        demo.write_pyramidal_tiff(image, path, opts["mpp"], opts["tile_size"], opts["jpeg_quality"], description)
        paths.append(path)
    return paths


def tile_slides(slide_paths: list[Path], tiles_dir: Path) -> list[Path]:
    """Coordinates HDF5 of each slide, with the config's tiling options."""
    options = config_section("tiling")
    coords = []
    for path in slide_paths:
        key = slide_key(path.name)
        tile_slide(
            path,
            slide_id=path.name,
            out_h5=tiles_dir / f"{key}.h5",
            out_qc_json=tiles_dir / f"{key}.qc.json",
            out_png=tiles_dir / "qc" / f"{key}.png",
            options=options,
        )
        coords.append(tiles_dir / f"{key}.h5")
    return coords


def build_demo_features(folder: str | Path, demo_options: Mapping | None = None, k: int = 5, seed: int = 1) -> DemoRun:
    """Slides, tiles, features, cohort and ``k`` folds of the demo cohort under ``folder``."""
    root = Path(folder)
    fold_csvs = [root / "splits" / f"fold_{fold}.csv" for fold in range(k)]
    run = DemoRun(root, root / "cohort", fold_csvs)
    if (root / DONE).is_file():
        return run
    demo_options = {**SMALL_SLIDES, **(demo_options or {})}
    slide_paths = make_slides(root / "slides", demo_slide_ids(), demo_options)
    coords = tile_slides(slide_paths, root / "tiles")
    features_dir = root / "features" / FEATURE_OPTIONS["encoder"]
    feature_files = [features_dir / f"{slide_key(p.name)}.h5" for p in slide_paths]
    extract_features(list(zip(slide_paths, coords, feature_files)), FEATURE_OPTIONS)
    build_cohort(DEMO_TABLE, SIGNATURES, slide_status_from_features(feature_files), run.cohort_dir)
    patients = pd.read_csv(run.cohort_dir / "patients.csv", dtype={"case_id": str})
    write_splits(make_splits(patients, k=k, seed=seed), root / "splits")
    (root / DONE).write_text(json.dumps({"demo_options": demo_options, "k": k, "seed": seed}) + "\n")
    return run


#: arguments of one :func:`ghanet_workflow.fold.run_fold` call: cohort_dir, fold_csv, model, out_dir, options
FoldJob = tuple[Path, Path, str, Path, Mapping]


def _run_fold_on_one_thread(job: FoldJob) -> dict:
    torch.set_num_threads(1)
    return run_fold(*job)


def run_folds(jobs: Sequence[FoldJob], workers: int = 2) -> list[dict]:
    """``run_fold`` for every job (metrics dicts in job order), in ``workers`` processes of one torch thread.

    The demo's models are small: one thread per fold and folds side by side use the cores far
    better than intra-op threads, which mostly wait on each other (and on other loads).
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process whose OpenMP pool is running
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_run_fold_on_one_thread, jobs))
