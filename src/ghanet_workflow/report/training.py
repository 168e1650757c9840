"""The training-curves product: loss and inner-validation curves of every fold of every model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from .. import plots
from .inputs import index_fold_files, read_csv


def read_training_logs(
    paths: Iterable[str | Path], default_model: str = "ghanet"
) -> dict[str, dict[int, pd.DataFrame]]:
    """model -> fold -> training_log.csv frame, for the logs that exist."""
    logs: dict[str, dict[int, pd.DataFrame]] = {}
    for (model, fold), path in index_fold_files(paths, default_model).items():
        if path.is_file():
            logs.setdefault(model, {})[fold] = read_csv(path)
    return logs


def write_training_curves(
    training_logs: Iterable[str | Path], out_path: Path, options: dict, default_model: str = "ghanet"
) -> list[Path]:
    """training_curves.png: every fold's training_log.csv, one line per fold, a panel per loss
    (nothing when none of the logs exists)."""
    logs = read_training_logs(training_logs, default_model)
    return plots.plot_training_curves(logs, out_path, options["formats"]) if logs else []
