"""CPU benchmark: the feature stage's loader + encoder against a naive per-patch loop.

Both paths read the same patches of the same real slide and run the same encoder with the same
weights in the same process; they alternate ``--repeats`` times and the median rates are compared.

* pipeline: ``features.make_loader`` (DataLoader workers, each with its own OpenSlide handle,
  uint8 batches) + ``features.Encoder`` (batched resize/normalise on the device, channels_last).
* naive (CLAM style): for each patch ``read_region -> PIL RGB -> ToTensor -> Resize -> Normalize``,
  gathered into batches of the same size, then the model (NCHW) on each batch.

    python bench/bench_features_cpu.py [--patches 256] [--encoder efficientnet_lite0]

Prints patches/s of both and the ratio (target >= 1.5x) and the max feature difference.
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
import torch
from torchvision import transforms

from ghanet_workflow import encoders, features

SLIDE = Path(__file__).resolve().parents[1] / "data" / "slides" / "CMU-1-Small-Region.svs"


def slide_grid(slide: Path, n_patches: int, size: int = 256) -> np.ndarray:
    """Row-major level-0 grid over the whole slide, repeated until ``n_patches`` rows."""
    width, height = openslide.OpenSlide(str(slide)).dimensions
    cells = np.array([(x, y) for y in range(0, height - size + 1, size) for x in range(0, width - size + 1, size)])
    return np.resize(cells, (n_patches, 2)).astype(np.int64)


def write_coords(path: Path, coords: np.ndarray, size: int = 256) -> Path:
    """A tiling-stage coords file for level-0 patches."""
    with h5py.File(path, "w") as handle:
        handle["coords"] = coords
        for key, value in dict(patch_size=size, patch_level=0, patch_size_level0=size, status="ok", reason="").items():
            handle.attrs[key] = value
    return path


def run_pipeline(plan: features.SlidePlan, encoder: features.Encoder, options: dict) -> tuple[float, np.ndarray]:
    """Seconds and features of the pipeline's loader + encoder over ``plan``."""
    started = time.perf_counter()
    outputs = [encoder(batch.pixels) for batch in features.make_loader([plan], options, encoder.device)]
    return time.perf_counter() - started, torch.cat(outputs).numpy()


def run_naive(slide: Path, coords: np.ndarray, model, spec, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds and features of the per-patch loop (read -> PIL -> transforms, batched model calls)."""
    transform = transforms.Compose([
        transforms.ToTensor(),
        transforms.Resize((spec.input_size, spec.input_size), antialias=True),
        transforms.Normalize(spec.mean, spec.std),
    ])
    started = time.perf_counter()
    handle = openslide.OpenSlide(str(slide))
    outputs, pending = [], []
    with torch.inference_mode():
        for x, y in coords:
            pending.append(transform(handle.read_region((int(x), int(y)), 0, (256, 256)).convert("RGB")))
            if len(pending) == batch_size:
                outputs.append(model(torch.stack(pending)))
                pending = []
        if pending:
            outputs.append(model(torch.stack(pending)))
    return time.perf_counter() - started, torch.cat(outputs).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=SLIDE)
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="checkpoint for encoders without shipped weights")
    parser.add_argument("--patches", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    options = features.resolve_options({"encoder": args.encoder, "batch_size": args.batch_size,
                                        "num_workers": args.num_workers, "progress": False})
    model, spec = encoders.create_encoder(args.encoder, weights=args.weights)
    encoder = features.Encoder(model, spec, torch.device("cpu"), "fp32")
    naive_model = encoders.create_encoder(args.encoder, weights=args.weights)[0].to(memory_format=torch.contiguous_format)
    coords = slide_grid(args.slide, args.patches)
    with tempfile.TemporaryDirectory() as tmp:
        plan = features.plan_slide(args.slide, write_coords(Path(tmp) / "coords.h5", coords), Path(tmp) / "out.h5")
        run_pipeline(features.plan_slide(args.slide, write_coords(Path(tmp) / "w.h5", coords[:args.batch_size]),
                                         Path(tmp) / "w_out.h5"), encoder, options)  # warm-up
        run_naive(args.slide, coords[:args.batch_size], naive_model, spec, args.batch_size)
        pipeline_s, naive_s = [], []
        for _ in range(args.repeats):
            seconds, naive_out = run_naive(args.slide, coords, naive_model, spec, args.batch_size)
            naive_s.append(seconds)
            seconds, pipeline_out = run_pipeline(plan, encoder, options)
            pipeline_s.append(seconds)

    naive_rate = args.patches / statistics.median(naive_s)
    pipeline_rate = args.patches / statistics.median(pipeline_s)
    print(f"slide {args.slide.name}, encoder {args.encoder}, {args.patches} patches x {args.repeats} repeats, "
          f"batch {args.batch_size}, workers {args.num_workers}, torch threads {torch.get_num_threads()}")
    print(f"naive per-patch loop : {naive_rate:8.1f} patches/s")
    print(f"pipeline             : {pipeline_rate:8.1f} patches/s")
    print(f"ratio pipeline/naive : {pipeline_rate / naive_rate:8.2f}x (target >= 1.5x)")
    print(f"max |feature diff|   : {np.abs(pipeline_out - naive_out).max():.2e}")


if __name__ == "__main__":
    main()
