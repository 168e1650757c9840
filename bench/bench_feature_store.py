"""Benchmark: one training epoch reading bags from the feature store vs holding them in memory.

A synthetic cohort is written to disk as the workflow has it (one float32 feature HDF5 per slide,
one slide per patient, a built cohort folder), then packed into the feature store in float32 and
float16. Each mode trains one G-HANet epoch (default options: 4096-patch cap, hidden 512, the BLCA
gene groups, 1 torch thread, CPU) in a fresh process that reports its peak RSS:

- memory: the previous way, every bag read into RAM as float32 first (``fold.load_bags``);
- store float32 / float16: bags read from the store when a step takes them (page cache warm:
  the store was just written, or read by the previous mode).

Printed: peak RSS and seconds per epoch of each mode with the ratios to ``memory``, whether the
float32 store gives the same weights as ``memory`` (same seed), and the training memory estimate
(:func:`ghanet_workflow.memory.training_mem_mb`) next to the measured peak.

    python bench/bench_feature_store.py                  # 300 patients x 8000 x 1024-d: ~25 GB in /tmp
    python bench/bench_feature_store.py --patients 12    # a quick run
    python bench/bench_feature_store.py --eval-bag 100000  # one 100,000-patch bag predicted whole
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

GROUP_SIZES = [94, 334, 521, 468, 1496, 479]  # BLCA, all genes (as bench/bench_training.py)
MODES = ("memory", "store_float32", "store_float16")
CHILDREN = (*MODES, "evaluate")


def write_cohort(folder: Path, n_patients: int, n_patches: int, dim: int) -> Path:
    """Per-slide feature HDF5 files and a built cohort folder (CONTRACTS format) under ``folder``."""
    rng = np.random.default_rng(0)
    cohort_dir, features_dir = folder / "cohort", folder / "features"
    cohort_dir.mkdir(parents=True)
    features_dir.mkdir()
    groups = {f"group{g}": [f"G{g}_{k}_rnaseq" for k in range(n)] for g, n in enumerate(GROUP_SIZES)}
    genes = [gene for columns in groups.values() for gene in columns]
    patients, slides = [], []
    for i in range(n_patients):
        case_id = f"P{i:04d}"
        path = features_dir / f"{case_id}-DX1.h5"
        with h5py.File(path, "w") as handle:
            handle["features"] = rng.standard_normal((n_patches, dim), dtype=np.float32)
        slides.append(
            {"slide_id": f"{case_id}-DX1.svs", "case_id": case_id, "status": "ok", "reason": "",
             "n_patches": n_patches, "features_path": str(path), "used": True}
        )
        patients.append(
            {"case_id": case_id, "survival_months": float(10 + i % 97), "censorship": int(i % 3 == 0),
             "n_slides": 1, "slides": f"{case_id}-DX1.svs"}
        )
    pd.DataFrame(patients).to_csv(cohort_dir / "patients.csv", index=False)
    genomics = pd.DataFrame(rng.standard_normal((n_patients, len(genes))).astype(np.float32), columns=genes)
    genomics.insert(0, "case_id", [p["case_id"] for p in patients])
    genomics.to_csv(cohort_dir / "genomics.csv.gz", index=False)
    (cohort_dir / "groups.json").write_text(json.dumps(groups))
    pd.DataFrame(slides).to_csv(cohort_dir / "slides.csv", index=False)
    return cohort_dir


def child(mode: str, cohort_dir: Path, out_dir: Path) -> dict:
    """One epoch in this (fresh) process; returns its figures."""
    import torch

    from ghanet_workflow import feature_store
    from ghanet_workflow.cohort import load_built_cohort
    from ghanet_workflow.fold import load_bags
    from ghanet_workflow.train import Case, model_config, resolve_options, train

    torch.set_num_threads(1)
    cohort = load_built_cohort(cohort_dir)
    ids = list(cohort.patients.index)
    started = time.perf_counter()
    if mode == "memory":
        bags = load_bags(cohort, ids)
    else:
        dtype = mode.removeprefix("store_")
        bags = feature_store.open_store(cohort, cohort_dir, dtype).bags(ids)
    load_s = time.perf_counter() - started
    generator = torch.Generator().manual_seed(0)
    cases = {
        case_id: Case(
            bags[case_id], [torch.randn(n, generator=generator) for n in GROUP_SIZES],
            label=i % 4, censorship=float(i % 3 == 0), time=float(10 + i),
        )
        for i, case_id in enumerate(ids)
    }
    options = {"epochs": 1, "device": "cpu", "seed": 1}
    dim = bags[ids[0]].shape[1]
    result = train("ghanet", model_config(resolve_options(options), dim, GROUP_SIZES, 4), cases, {}, out_dir, options)
    digest = hashlib.sha256()
    for key, value in sorted(result.model.state_dict().items()):
        digest.update(key.encode() + value.detach().cpu().numpy().tobytes())
    return {
        "mode": mode,
        "load_s": round(load_s, 2),
        "epoch_s": float(result.log["seconds"].iloc[-1]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "weights_sha256": digest.hexdigest(),
    }


def eval_child(cohort_dir: Path) -> dict:
    """Predictions (all patches, eval mode) of the cohort's one bag read whole from the store."""
    import torch

    from ghanet_workflow import feature_store
    from ghanet_workflow.cohort import load_built_cohort
    from ghanet_workflow.model import build_model
    from ghanet_workflow.train import Case, model_config, predict, resolve_options

    torch.set_num_threads(1)
    cohort = load_built_cohort(cohort_dir)
    store = feature_store.open_store(cohort, cohort_dir)
    case_id = cohort.patients.index[0]
    bag = store.bag(case_id)
    model = build_model("ghanet", model_config(resolve_options({}), bag.shape[1], GROUP_SIZES, 4))
    started = time.perf_counter()
    predict(model, {case_id: Case(bag)})
    return {
        "mode": "evaluate",
        "patches": bag.shape[0],
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(mode: str, cohort_dir: Path, work: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--cohort-dir", str(cohort_dir), "--work", str(work / mode)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--patches", type=int, default=8000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic cohort and stores")
    parser.add_argument(
        "--eval-bag", type=int, metavar="N",
        help="instead: peak RSS of predicting one N-patch bag (e.g. 100000) read whole from the store, vs the estimate",
    )
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--cohort-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = eval_child(args.cohort_dir) if args.child == "evaluate" else child(args.child, args.cohort_dir, args.work)
        print(json.dumps(figures))
        return 0

    from ghanet_workflow import feature_store, memory
    from ghanet_workflow.cohort import load_built_cohort

    work = Path(tempfile.mkdtemp(prefix="bench_feature_store-"))
    if args.eval_bag:
        try:
            cohort_dir = write_cohort(work, 1, args.eval_bag, args.dim)
            feature_store.ensure_store(load_built_cohort(cohort_dir), feature_store.store_dir(cohort_dir))
            figures = run_child("evaluate", cohort_dir, work)
            estimate = memory.training_mem_mb(
                args.eval_bag, args.dim, memory.model_params_bound(args.dim, 512, GROUP_SIZES), 4096, 512
            )
            print(json.dumps(figures))
            print(f"one {args.eval_bag}-patch bag evaluated whole: peak {figures['peak_rss_mb']:.0f} MB, "
                  f"estimated mem_mb {estimate} ({estimate / figures['peak_rss_mb']:.2f}x)")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    try:
        started = time.perf_counter()
        cohort_dir = write_cohort(work, args.patients, args.patches, args.dim)
        gb = args.patients * args.patches * args.dim * 4 / 1e9
        print(f"{args.patients} patients x {args.patches} patches x {args.dim}-d: {gb:.1f} GB of float32 per-slide "
              f"HDF5 written in {time.perf_counter() - started:.0f} s")
        cohort = load_built_cohort(cohort_dir)
        results = {}
        for mode in MODES:
            if mode != "memory":
                dtype = mode.removeprefix("store_")
                started = time.perf_counter()
                feature_store.ensure_store(cohort, feature_store.store_dir(cohort_dir), dtype)
                print(f"packed the {dtype} store in {time.perf_counter() - started:.0f} s")
            results[mode] = run_child(mode, cohort_dir, work)
            print(json.dumps(results[mode]))
        base = results["memory"]
        print(f"\n{'mode':<15}{'peak RSS MB':>13}{'x memory':>10}{'epoch s':>10}{'x memory':>10}{'load s':>9}")
        for mode, r in results.items():
            print(f"{mode:<15}{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] / base['peak_rss_mb']:>10.2f}"
                  f"{r['epoch_s']:>10.1f}{r['epoch_s'] / base['epoch_s']:>10.2f}{r['load_s']:>9.1f}")
        same = results["store_float32"]["weights_sha256"] == base["weights_sha256"]
        print(f"float32 store and in-memory bags give identical weights (same seed): {same}")
        bound = memory.model_params_bound(args.dim, 512, GROUP_SIZES)
        for mode, itemsize in (("store_float32", 4), ("store_float16", 2)):
            estimate = memory.training_mem_mb(args.patches, args.dim, bound, 4096, 512, itemsize)
            print(f"{mode}: estimated mem_mb {estimate} vs measured peak {results[mode]['peak_rss_mb']:.0f} MB "
                  f"({estimate / results[mode]['peak_rss_mb']:.2f}x)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
