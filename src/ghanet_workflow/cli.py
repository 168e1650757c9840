"""One command-line door to every stage: ``ghanet-wf <stage> [options]``.

Snakemake rules call these subcommands (thin wiring); each subcommand lives in its
stage module as ``main(argv) -> int`` so the modules stay independent.
"""

from __future__ import annotations

import importlib
import sys

from .errors import InputError

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo-slide": ("ghanet_workflow.demo", "generate one synthetic demo slide (pyramidal TIFF)"),
    "tile": ("ghanet_workflow.tiling", "tissue segmentation + patch coordinates for one slide"),
    "extract": ("ghanet_workflow.features", "patch features for one or more slides"),
    "cohort": ("ghanet_workflow.cohort", "validate the clinical/genomic table, pool slides per patient"),
    "pack-features": ("ghanet_workflow.feature_store", "pack a built cohort's features into one file (the fold jobs read it)"),
    "splits": ("ghanet_workflow.splits", "patient-level k-fold splits (+ inner validation)"),
    "train": ("ghanet_workflow.fold", "preprocess, train and predict one fold of one model (GPU job)"),
    "evaluate": ("ghanet_workflow.metrics", "survival metrics of one trained fold's predictions"),
    "interpret": ("ghanet_workflow.interpret", "gene reconstruction and attention on one fold's test patients"),
    "predict": ("ghanet_workflow.predict", "WSI-only risk for new patients from the trained fold models"),
    "report": ("ghanet_workflow.report.cli", "aggregate folds into report tables and figures, one product per command"),
    "slurm-profile": ("ghanet_workflow.slurm_profile", "write the site's SLURM profile (snakemake --profile slurm)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        width = max(map(len, SUBCOMMANDS))
        print("usage: ghanet-wf <command> [options]\n\ncommands:")
        for name, (_, help_text) in SUBCOMMANDS.items():
            print(f"  {name:<{width}}  {help_text}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ghanet-wf: unknown command {name!r}; run 'ghanet-wf --help'", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except InputError as exc:  # bad input: one line naming the file/row/key, no traceback
        print(f"ghanet-wf {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
