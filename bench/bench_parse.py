"""Benchmark: what parsing the workflow costs, now against an earlier commit, in the same run.

Every ``snakemake`` call parses the Snakefile, and so does every SLURM job on its node before it
runs its one command. This times ``snakemake -n --quiet`` of the demo config (parse, config
checks, slide table and the DAG of ~100 jobs; nothing runs) in the current checkout and in a git
worktree of ``--baseline`` (default 12bf727, before the light parse), alternating ``--repeat``
times, and prints the median CPU seconds (user + sys) and peak memory of each, and their ratio.
The baseline imported torch and scikit-learn while parsing; this checkout must not.

Not a test: ``python bench/bench_parse.py [--baseline REV] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "parse"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def timed(tree: Path, extra: list[str]) -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of one dry run of the workflow in ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), HF_HUB_OFFLINE="1")
    command = [str(SNAKEMAKE), "-n", "--quiet", "--cores", "1", *extra]
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dry run in {tree} failed: {process.stderr.read().decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="12bf727", help="earlier commit to compare with")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    tree = OUT / f"baseline-{args.baseline}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline], check=True,
                   capture_output=True)  # fmt: skip
    runs: dict[str, list[tuple[float, float]]] = {"now": [], args.baseline: []}
    try:
        for _ in range(args.repeat):
            runs["now"].append(timed(ROOT, []))
            runs[args.baseline].append(timed(tree, ["--workflow-profile", "none"]))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    medians = {name: (statistics.median(c for c, _ in r), statistics.median(m for _, m in r)) for name, r in runs.items()}
    print(f"{'snakemake -n --quiet, demo config':<36}{'CPU [s]':>10}{'peak RSS [MB]':>15}")
    for name, (cpu, rss) in medians.items():
        print(f"{name:<36}{cpu:>10.2f}{rss:>15.0f}")
    now, then = medians["now"], medians[args.baseline]
    print(f"parse + DAG: {then[0] / now[0]:.2f}x less CPU, {then[1] / now[1]:.1f}x less memory than {args.baseline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
