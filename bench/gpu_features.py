"""GPU benchmark (one prepared script for a lent H200): encoder ceiling vs end-to-end from a real slide.

For ``resnet50_trunc`` and a ViT-L/16 (UNI-style ``vit_large_patch16_224``), random weights built
directly on the GPU (timing only):

1. ceiling: synthetic normalised batches already on the GPU -> encoder, registry precision
   (autocast), channels_last for the CNN; patches/s.
2. end-to-end: ``features.extract_features`` machinery (DataLoader workers reading uint8 patches of
   CMU-1-Small-Region.svs with OpenSlide, pinned memory, on-GPU resize/normalise, encoder), coords
   repeated to get enough patches; patches/s, with GPU utilisation sampled by nvidia-smi (or NVML).

Prints one line per measurement and ``end-to-end / ceiling`` (target >= 0.80). Budget: < 4 minutes
on an H200 with 16 CPU cores. ``--dry-run`` runs the same code on the CPU with tiny sizes.

    python bench/gpu_features.py            # on the GPU machine
    python bench/gpu_features.py --dry-run  # smoke test anywhere
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import openslide  # noqa: E402
import torch  # noqa: E402

from ghanet_workflow import encoders, features  # noqa: E402

SLIDE = Path(__file__).resolve().parents[1] / "data" / "slides" / "CMU-1-Small-Region.svs"
#: encoder -> (batch size, end-to-end patches) on the GPU
GPU_PLAN = {"resnet50_trunc": (256, 40_000), "vit_large_patch16_224": (256, 12_000)}


class UtilisationSampler:
    """Samples GPU utilisation (%) every ``interval`` s in a thread: NVML if importable, else nvidia-smi."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 - pynvml absent: fall back to nvidia-smi
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip().splitlines()[0])
            except Exception:  # noqa: BLE001
                return None

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append(value)
            time.sleep(self.interval)

    def __enter__(self) -> "UtilisationSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "util n/a"
        return f"GPU util mean {statistics.mean(self.samples):.0f}% median {statistics.median(self.samples):.0f}%"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_encoder(name: str, device: torch.device, precision: str) -> features.Encoder:
    """Encoder ``name`` with random weights initialised directly on ``device`` (no checkpoint)."""
    spec = encoders.get_spec(name)
    model = encoders.build_model(spec, device=device).eval().requires_grad_(False)
    if spec.is_cnn:
        model = model.to(memory_format=torch.channels_last)
    return features.Encoder(model, spec, device, precision)


def ceiling(encoder: features.Encoder, batch_size: int, iterations: int) -> float:
    """patches/s of the encoder alone on synthetic normalised batches already on the device."""
    spec, device = encoder.spec, encoder.device
    batch = torch.randn(batch_size, 3, spec.input_size, spec.input_size, device=device)
    if spec.is_cnn:
        batch = batch.contiguous(memory_format=torch.channels_last)
    dtype = features.AUTOCAST_DTYPES.get(encoder.precision)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(3):
            encoder.model(batch)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(iterations):
            encoder.model(batch)
        synchronize(device)
    return batch_size * iterations / (time.perf_counter() - started)


def ceiling_with_preprocess(encoder: features.Encoder, batch_size: int, iterations: int) -> float:
    """patches/s of on-device uint8 256 px -> resize/normalise -> encoder (input already on the device)."""
    pixels = torch.randint(0, 256, (batch_size, 3, 256, 256), dtype=torch.uint8, device=encoder.device)
    for _ in range(3):
        encoder(pixels)
    synchronize(encoder.device)
    started = time.perf_counter()
    for _ in range(iterations):
        encoder(pixels)
    synchronize(encoder.device)
    return batch_size * iterations / (time.perf_counter() - started)


def write_coords(path: Path, n_patches: int, size: int = 256) -> Path:
    """Coords file: the whole-slide 256 px grid of CMU-1-Small-Region repeated to ``n_patches`` rows."""
    width, height = openslide.OpenSlide(str(SLIDE)).dimensions
    cells = np.array([(x, y) for y in range(0, height - size + 1, size) for x in range(0, width - size + 1, size)])
    with h5py.File(path, "w") as handle:
        handle["coords"] = np.resize(cells, (n_patches, 2)).astype(np.int64)
        for key, value in dict(patch_size=size, patch_level=0, patch_size_level0=size, status="ok", reason="").items():
            handle.attrs[key] = value
    return path


def prefetch_that_fits(workers: int, batch_size: int, wanted: int = 4) -> int:
    """Largest prefetch factor (<= ``wanted``) whose in-flight uint8 batches fit in half of /dev/shm."""
    batch_bytes = batch_size * 3 * 256 * 256
    free = shutil.disk_usage("/dev/shm").free if Path("/dev/shm").is_dir() else float("inf")
    fits = int(free // 2 // max(1, workers * batch_bytes))
    if fits < 1:
        print(f"warning: /dev/shm has {free / 2**20:.0f} MiB free; DataLoader workers may fail")
    return max(1, min(wanted, fits))


def end_to_end(encoder: features.Encoder, batch_size: int, n_patches: int, workers: int, tmp: Path) -> tuple[float, str]:
    """patches/s of the real stage loop (workers, pinned memory, device preprocessing, writing)."""
    options = features.resolve_options({"batch_size": batch_size, "num_workers": workers, "progress": False,
                                        "encoder": encoder.spec.name,
                                        "prefetch_factor": prefetch_that_fits(workers, batch_size)})
    plan = features.plan_slide(SLIDE, write_coords(tmp / f"{encoder.spec.name}.h5", n_patches),
                               tmp / f"{encoder.spec.name}_out.h5")
    run = features.RunContext(options, encoder.spec, "random", encoder.precision)
    with UtilisationSampler() as sampler:
        started = time.perf_counter()
        [(_, result)] = list(features.run_encoder([plan], encoder, run))
        synchronize(encoder.device)
        seconds = time.perf_counter() - started
    assert result["status"] == "ok" and result["n_patches"] == n_patches, result
    return n_patches / seconds, sampler.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU run of the same code")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--encoders", nargs="+", default=list(GPU_PLAN))
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda":
        print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CPU cores {os.cpu_count()}, "
              f"workers {args.workers}, /dev/shm free {shutil.disk_usage('/dev/shm').free / 2**30:.1f} GiB, "
              f"prefetch {prefetch_that_fits(args.workers, 256)}")
    for name in args.encoders:
        batch_size, n_patches = (4, 16) if args.dry_run else GPU_PLAN[name]
        iterations = 2 if args.dry_run else 30
        spec = encoders.get_spec(name)
        precision = features.resolve_precision("auto", spec, device)
        started = time.perf_counter()
        encoder = random_encoder(name, device, precision)
        top = ceiling(encoder, batch_size, iterations)
        top_pre = ceiling_with_preprocess(encoder, batch_size, iterations)
        with tempfile.TemporaryDirectory() as tmp:
            end_to_end(encoder, batch_size, min(n_patches, 4 * batch_size), args.workers, Path(tmp))  # warm-up
            rate, util = end_to_end(encoder, batch_size, n_patches, args.workers, Path(tmp))
        print(f"{name:<24} {precision:<5} batch {batch_size:<4} ceiling {top:9.0f} patches/s | "
              f"ceiling+resize {top_pre:9.0f} | end-to-end {rate:9.0f} ({n_patches} patches, {util}) | "
              f"end-to-end/ceiling {rate / top:5.2f} | {time.perf_counter() - started:.0f} s")
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
