"""Benchmark: seconds per training epoch of our loop vs the reference's disk-per-step loop.

Both loops train the same model on the same synthetic patients with batch size 1, gradient
accumulation and class-balanced sampling:

- ours: every bag held in memory, at most ``max_patches`` random patches per bag at training;
- reference-style: ``torch.load`` of the patient's whole bag from disk at every step, all patches.

A third line (ours without the patch cap) separates the gain of the in-memory bags from that of
the cap; a fourth runs the reference-style loop with the reference's CAB, which recomputes the
patches' keys and values in each of its two cross-attention rounds (ours computes them once). Then the peak memory of one training step on a 100,000-patch bag, capped and uncapped,
each measured in a fresh process (peak RSS on CPU, torch's max allocated on CUDA).

    python bench/bench_training.py            # 60 patients x 8000 patches x 1024-d (~2 GB)
    python bench/bench_training.py --small    # 12 patients x 2000 patches x 1024-d, seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ghanet_workflow.losses import total_loss
from ghanet_workflow.model import build_model
from ghanet_workflow.train import Case, balanced_weights, model_config, resolve_options, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_cab import use_reference_cab  # noqa: E402  (the reference's CAB, shared with tests/test_model.py)

GROUP_SIZES = [94, 334, 521, 468, 1496, 479]  # BLCA, all genes


def synthetic_cases(n_patients: int, n_patches: int, dim: int) -> dict[str, Case]:
    """Random bags and genes with labels spread over the 4 bins x censorship classes."""
    generator = torch.Generator().manual_seed(0)
    return {
        f"p{i}": Case(
            torch.randn(n_patches, dim, generator=generator),
            [torch.randn(n, generator=generator) for n in GROUP_SIZES],
            label=i % 4,
            censorship=float(i % 3 == 0),
            time=float(10 + i),
        )
        for i in range(n_patients)
    }


def time_ours(cases: dict[str, Case], options: dict, dim: int, out_dir: Path) -> float:
    """Seconds of one epoch of ghanet_workflow.train.train (no inner validation)."""
    config = model_config(resolve_options(options), dim, GROUP_SIZES, 4)
    result = train("ghanet", config, cases, {}, out_dir, options)
    return float(result.log["seconds"].iloc[-1])


def time_reference(
    cases: dict[str, Case],
    options: dict,
    dim: int,
    bag_dir: Path,
    device: torch.device,
    reference_cab: bool = False,
) -> float:
    """Seconds of one epoch that torch.loads each sampled bag from disk, all patches, batch size 1."""
    paths = {}
    for case_id, case in cases.items():
        paths[case_id] = bag_dir / f"{case_id}.pt"
        torch.save(case.features, paths[case_id])
    torch.manual_seed(1)
    model = build_model("ghanet", model_config(resolve_options(options), dim, GROUP_SIZES, 4)).to(device)
    if reference_cab:
        use_reference_cab(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5)
    ids = list(cases)
    order = torch.multinomial(
        balanced_weights(list(cases.values())), len(ids), replacement=True, generator=torch.Generator().manual_seed(1)
    )
    started = time.perf_counter()
    model.train()
    for step, index in enumerate(order.tolist(), start=1):
        case = cases[ids[index]]
        features = torch.load(paths[ids[index]], weights_only=True).to(device)
        genes = [g.to(device) for g in case.genomics]
        loss = total_loss(model(features), case.label, case.censorship, genes)["total"]
        (loss / options["grad_accum"]).backward()
        if step % options["grad_accum"] == 0 or step == len(order):
            optimizer.step()
            optimizer.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss, not inherited from a forking parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_memory_child(n_patches: int, max_patches: int, dim: int) -> None:
    """One training step on one bag (run in a fresh process); prints the peak memory in MiB as JSON."""
    cases = synthetic_cases(1, n_patches, dim)
    options = {"epochs": 1, "max_patches": max_patches, "grad_accum": 1}
    with tempfile.TemporaryDirectory() as tmp:
        train("ghanet", model_config(resolve_options(options), dim, GROUP_SIZES, 4), cases, {}, tmp, options)
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mib()
    print(json.dumps({"peak_mib": peak, "bag_mib": n_patches * dim * 4 / 2**20}))


def peak_memory(n_patches: int, max_patches: int, dim: int) -> dict:
    """Run :func:`peak_memory_child` in a fresh interpreter and return its measurement."""
    out = subprocess.run(
        [sys.executable, __file__, "--peak-child", str(n_patches), str(max_patches), str(dim)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="12 patients x 2000 patches (quick look)")
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--patches", type=int, default=8000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--max-patches", type=int, default=4096)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--peak-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_child:
        peak_memory_child(*args.peak_child)
        return
    n_patients, n_patches = (12, 2000) if args.small else (args.patients, args.patches)
    max_patches = min(args.max_patches, n_patches // 2) if args.small else args.max_patches
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"{n_patients} patients x {n_patches} patches x {args.dim}-d, device {device}, "
        f"{torch.get_num_threads()} threads, max_patches {max_patches}"
    )
    cases = synthetic_cases(n_patients, n_patches, args.dim)
    options = {"epochs": 1, "max_patches": max_patches, "grad_accum": 32}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours = time_ours(cases, options, args.dim, tmp / "ours")
        ours_uncapped = time_ours(cases, {**options, "max_patches": n_patches}, args.dim, tmp / "uncapped")
        (tmp / "bags").mkdir()
        reference = time_reference(cases, options, args.dim, tmp / "bags", device)
        reference_cab = time_reference(cases, options, args.dim, tmp / "bags", device, reference_cab=True)
    print(f"reference-style (torch.load per step, all patches): {reference:8.2f} s/epoch  (the baseline)")
    print(
        f"  same loop with the reference's CAB (K/V twice):   {reference_cab:8.2f} s/epoch "
        f"(x{reference / reference_cab:.2f})"
    )
    print(
        f"ours, in memory, all patches:                       {ours_uncapped:8.2f} s/epoch "
        f"(x{reference / ours_uncapped:.2f})"
    )
    print(
        f"ours, in memory, max_patches {max_patches:<6}:                 {ours:8.2f} s/epoch "
        f"(x{reference / ours:.2f})"
    )
    baseline = peak_memory(1, 1, args.dim)["peak_mib"]
    print(f"peak memory of a training process on a 1-patch bag (torch, model, Adam, checkpoint): {baseline:.0f} MiB")
    for cap in (args.max_patches, 100_000):
        measured = peak_memory(100_000, cap, args.dim)
        print(
            f"peak memory, one training step on a 100,000-patch bag, max_patches {cap}: "
            f"{measured['peak_mib']:.0f} MiB (bag itself {measured['bag_mib']:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
