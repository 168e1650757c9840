"""Report figures: Kaplan-Meier risk groups, per-fold C-index, training curves, tiling QC sheet,
G-HANet attention heatmaps.

Figures are built with the object-oriented matplotlib API (``Figure`` renders through the Agg
canvas), so nothing depends on a display or on pyplot's global state. Every function writes its
figure atomically as PNG and, when ``formats`` asks for it, as an SVG next to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from sksurv.compare import compare_survival  # noqa: E402
from sksurv.nonparametric import kaplan_meier_estimator  # noqa: E402
from sksurv.util import Surv  # noqa: E402

from .atomic import atomic_path  # noqa: E402

#: saving resolution of every figure (dots per inch)
DPI = 150
#: per-format savefig options: fast PNG compression (photographic figures otherwise spend seconds in zlib)
SAVE_OPTIONS = {"png": {"pil_kwargs": {"compress_level": 1}}}
#: longest side, in pixels, of a thumbnail on the QC contact sheet (its panel is 2.4 in at DPI)
QC_PANEL_PX = 360

#: training_log.csv columns drawn by :func:`plot_training_curves`, with their panel titles.
TRAINING_CURVES = {
    "loss_total": "total loss",
    "loss_surv": "survival NLL",
    "loss_sce": "scaled cosine error",
    "loss_mse": "reconstruction MSE",
    "val_cindex": "inner-validation C-index",
}


def read_image(path: str | Path, max_px: int) -> np.ndarray:
    """An image file as an RGB(A) array shrunk to at most ``max_px`` per side (drawing full-size
    thumbnails into small panels makes saving the figure slow and the PNG large)."""
    with Image.open(path) as image:
        image.thumbnail((max_px, max_px))
        return np.asarray(image)


def save_figure(fig: Figure, out_path: str | Path, formats: Iterable[str] = ("png",)) -> list[Path]:
    """Write ``fig`` to ``out_path`` (PNG) and to the same stem in every other format asked for."""
    out_path = Path(out_path)
    written = []
    for fmt in dict.fromkeys(["png", *formats]):
        target = out_path.with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight", **SAVE_OPTIONS.get(fmt, {}))
        written.append(target)
    return written


def logrank_pvalue(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> float:
    """Log-rank p-value (sksurv ``compare_survival``) across groups; NaN with fewer than two groups."""
    if len(np.unique(groups)) < 2 or not np.any(event):
        return float("nan")
    _, pvalue = compare_survival(Surv.from_arrays(event=event.astype(bool), time=time), groups)
    return float(pvalue)


def format_pvalue(pvalue: float) -> str:
    """``p = 0.012``, ``p < 0.001`` or ``p n/a``."""
    if not np.isfinite(pvalue):
        return "log-rank p n/a"
    return "log-rank p < 0.001" if pvalue < 0.001 else f"log-rank p = {pvalue:.3f}"


def plot_km(
    panels: Mapping[str, pd.DataFrame],
    group_labels: Sequence[str],
    out_path: str | Path,
    formats: Iterable[str] = ("png",),
    time_label: str = "months",
) -> list[Path]:
    """Kaplan-Meier curves of predicted risk groups, one panel per model, numbers at risk below.

    Each frame holds ``time``, ``event`` and ``risk_group`` (one of ``group_labels``), one row per
    patient; the log-rank p of the groups is printed in the panel.
    """
    n_panels = max(len(panels), 1)
    fig = Figure(figsize=(5.2 * n_panels, 4.8))
    grid = fig.add_gridspec(2, n_panels, height_ratios=[4, 1], hspace=0.35)
    colors = matplotlib.colormaps["coolwarm"](np.linspace(0.05, 0.95, len(group_labels)))
    for column, (title, frame) in enumerate(panels.items()):
        curve_ax = fig.add_subplot(grid[0, column])
        risk_ax = fig.add_subplot(grid[1, column], sharex=curve_ax)
        _draw_km_panel(curve_ax, risk_ax, frame, group_labels, colors, title, time_label)
    if not panels:
        fig.text(0.5, 0.5, "no test-fold predictions available", ha="center")
    return save_figure(fig, out_path, formats)


def _draw_km_panel(curve_ax, risk_ax, frame, group_labels, colors, title, time_label) -> None:
    """One KM panel: a step curve per group, the log-rank p, and the numbers-at-risk rows."""
    time = frame["time"].to_numpy(float)
    event = frame["event"].to_numpy(int).astype(bool)
    present = [label for label in group_labels if (frame["risk_group"] == label).any()]
    for label, color in zip(group_labels, colors):
        mask = (frame["risk_group"] == label).to_numpy()
        if not mask.any():
            continue
        steps, survival = kaplan_meier_estimator(event[mask], time[mask])
        curve_ax.step(
            np.r_[0.0, steps],
            np.r_[1.0, survival],
            where="post",
            color=color,
            label=f"{label} (n={mask.sum()}, events={event[mask].sum()})",
        )
    pvalue = logrank_pvalue(time, event, frame["risk_group"].to_numpy())
    curve_ax.set(title=f"{title}\n{format_pvalue(pvalue)}", ylabel="survival probability", ylim=(0, 1.05))
    curve_ax.set_xlim(left=0, right=max(float(time.max(initial=0.0)), 1.0) * 1.02)
    curve_ax.legend(loc="best", fontsize="small", frameon=False)
    ticks = [t for t in curve_ax.get_xticks() if 0 <= t <= curve_ax.get_xlim()[1]]
    for row, label in enumerate(present):
        at_risk = [(time[(frame["risk_group"] == label).to_numpy()] >= t).sum() for t in ticks]
        for tick, count in zip(ticks, at_risk):
            risk_ax.text(tick, row, str(count), ha="center", va="center", fontsize="small")
    risk_ax.set_yticks(range(len(present)), present, fontsize="small")
    risk_ax.set_ylim(len(present) - 0.5, -0.5)
    risk_ax.set_xlabel(time_label)
    risk_ax.set_title("number at risk", fontsize="small", loc="left")
    risk_ax.tick_params(axis="x", labelbottom=True)
    risk_ax.tick_params(axis="y", length=0, pad=16)
    for side in ("top", "right", "left"):
        risk_ax.spines[side].set_visible(False)


def plot_cindex_strip(
    fold_cindex: Mapping[str, pd.Series],
    out_path: str | Path,
    n_folds: int,
    pooled: Mapping[str, float] | None = None,
    formats: Iterable[str] = ("png",),
) -> list[Path]:
    """Per-fold C-index per model: one dot per fold, the mean as a bar, pooled out-of-fold as a diamond.

    ``fold_cindex`` maps a model to a Series of C-index values indexed by fold (folds without a
    value are absent); the tick label says how many of ``n_folds`` folds completed.
    """
    fig = Figure(figsize=(1.6 + 1.4 * max(len(fold_cindex), 1), 4.0))
    ax = fig.add_subplot()
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8, label="chance (0.5)")
    labels = []
    for position, (model, values) in enumerate(fold_cindex.items()):
        values = values.dropna()
        offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(len(values))
        ax.scatter(position + offsets, values.to_numpy(), color="tab:blue", zorder=3)
        for offset, (fold, value) in zip(offsets, values.items()):
            ax.annotate(
                str(fold),
                (position + offset, value),
                textcoords="offset points",
                xytext=(4, 2),
                fontsize="x-small",
            )
        if len(values):
            ax.hlines(values.mean(), position - 0.25, position + 0.25, color="black", linewidth=2)
        if pooled and np.isfinite(pooled.get(model, np.nan)):
            ax.scatter(
                [position + 0.3],
                [pooled[model]],
                marker="D",
                color="tab:orange",
                zorder=3,
                label="pooled out-of-fold" if position == 0 else None,
            )
        labels.append(f"{model}\n({len(values)}/{n_folds} folds)")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.6, max(len(labels), 1) - 0.4)
    ax.set(ylabel="Harrell's C-index (test fold)", ylim=(0, 1))
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    return save_figure(fig, out_path, formats)


def plot_reconstruction(table: pd.DataFrame, out_path: str | Path, formats: Iterable[str] = ("png",)) -> list[Path]:
    """Group-score r per signature group (mean ± std over folds), one bar per model with reconstruction.

    ``table``: the report's reconstruction.csv (model, group, group_r, group_r_std, ...); groups in
    the table's order, the best group of each model marked. Without a row, a figure saying so.
    """
    groups = list(dict.fromkeys(table["group"])) if len(table) else []
    models = list(dict.fromkeys(table["model"])) if len(table) else []
    fig = Figure(figsize=(6.4, 1.2 + 0.45 * max(len(groups), 1) * max(len(models), 1)), layout="constrained")
    ax = fig.add_subplot()
    if not groups:
        ax.text(0.5, 0.5, "no model with gene reconstruction", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return save_figure(fig, out_path, formats)
    height = 0.8 / len(models)
    for i, model in enumerate(models):
        rows = table[table["model"] == model].set_index("group").reindex(groups)
        y = np.arange(len(groups)) + (i - (len(models) - 1) / 2) * height
        values = rows["group_r"].astype(float).to_numpy()
        spread = np.nan_to_num(rows["group_r_std"].astype(float).to_numpy())
        ax.barh(y, values, height=height * 0.9, xerr=spread, label=model, capsize=2)
        if np.isfinite(values).any():
            best = int(np.nanargmax(values))
            ax.annotate("best", (values[best] + spread[best], y[best]), xytext=(4, 0), textcoords="offset points",
                        fontsize="x-small", va="center")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(np.arange(len(groups)), groups)
    ax.invert_yaxis()
    ax.set(xlabel="group-score Pearson r, test patients (mean ± std over folds)", xlim=(-1, 1))
    ax.legend(fontsize="small", frameon=False, loc="lower right")
    return save_figure(fig, out_path, formats)


def plot_training_curves(
    logs: Mapping[str, Mapping[int, pd.DataFrame]],
    out_path: str | Path,
    formats: Iterable[str] = ("png",),
) -> list[Path]:
    """Training curves: a row per model, a panel per logged quantity, a line per fold."""
    columns = [c for c in TRAINING_CURVES if any(c in f for folds in logs.values() for f in folds.values())]
    n_rows, n_cols = max(len(logs), 1), max(len(columns), 1)
    fig = Figure(figsize=(3.2 * n_cols, 2.6 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for row, (model, folds) in enumerate(logs.items()):
        for col, column in enumerate(columns):
            ax = axes[row][col]
            for fold, frame in sorted(folds.items()):
                if column in frame and frame[column].notna().any():
                    ax.plot(frame["epoch"], frame[column], marker=".", label=f"fold {fold}")
            ax.set_title(f"{model}: {TRAINING_CURVES[column]}", fontsize="small")
            # coxnet logs its penalty path: one row per penalty (alpha), strongest first
            path = any("alpha" in frame for frame in folds.values())
            ax.set_xlabel("penalty on the path (strongest first)" if path else "epoch")
        axes[row][0].legend(fontsize="x-small", frameon=False)
    return save_figure(fig, out_path, formats)


def plot_qc_contact_sheet(
    thumbnails: Mapping[str, Path | None],
    statuses: Mapping[str, str],
    out_path: str | Path,
    max_thumbnails: int = 48,
    formats: Iterable[str] = ("png",),
) -> list[Path]:
    """Grid of tiling QC thumbnails (tissue contour + patch grid); failed slides titled in red.

    ``thumbnails`` maps slide id -> QC PNG (None or a missing file draws an empty tile saying so).
    Failed slides come first so they are never cut off by ``max_thumbnails``.
    """
    order = sorted(thumbnails, key=lambda slide: (statuses.get(slide, "ok") == "ok", slide))
    shown = order[:max_thumbnails]
    n_cols = min(6, max(len(shown), 1))
    n_rows = max(math.ceil(len(shown) / n_cols), 1)
    fig = Figure(figsize=(2.4 * n_cols, 2.6 * n_rows + 0.4), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, slide in zip(axes, shown):
        status = statuses.get(slide, "ok")
        png = thumbnails[slide]
        if png is not None and Path(png).is_file():
            ax.imshow(read_image(png, QC_PANEL_PX))
        else:
            ax.text(0.5, 0.5, "no thumbnail", ha="center", va="center", transform=ax.transAxes)
        name = slide if len(slide) <= 28 else slide[:25] + "..."
        ax.set_title(f"{name}\n{status}", fontsize="x-small", color="black" if status == "ok" else "red")
    hidden = len(order) - len(shown)
    fig.suptitle(f"Tiling QC: {len(order)} slides" + (f" ({hidden} more not shown)" if hidden else ""))
    return save_figure(fig, out_path, formats)


@dataclass
class AttentionPanel:
    """One patient's row of the attention figure: the patches of one slide and what the model put on them.

    ``coords`` are level-0 (x, y) patch corners, ``token_attention`` is [G, n] and ``patch_weights``
    [n] for those patches; ``thumbnail`` (RGB array) covers the level-0 extent ``size`` (width,
    height) and is None when the slide could not be read.
    """

    title: str
    coords: np.ndarray
    patch_size: int
    token_attention: np.ndarray
    patch_weights: np.ndarray
    size: tuple[int, int]
    thumbnail: np.ndarray | None = None


def patch_grid(coords: np.ndarray, values: np.ndarray, patch_size: int, size: tuple[int, int]) -> np.ndarray:
    """``values`` painted on a grid of patch-sized cells covering a ``size`` (width, height) slide; NaN off-patch."""
    cols, rows = (max(1, math.ceil(extent / patch_size)) for extent in size)
    grid = np.full((rows, cols), np.nan)
    cells = np.asarray(coords, dtype=np.int64) // patch_size
    grid[np.clip(cells[:, 1], 0, rows - 1), np.clip(cells[:, 0], 0, cols - 1)] = values
    return grid


def _draw_heatmap(ax, panel: AttentionPanel, values: np.ndarray | None, title: str) -> None:
    """The slide thumbnail (grey under a heatmap; a blank canvas if unreadable) with ``values`` (scaled to
    their max) as a translucent overlay."""
    width, height = panel.size
    if panel.thumbnail is not None and values is None:
        ax.imshow(panel.thumbnail, extent=(0, width, height, 0))
    elif panel.thumbnail is not None:  # grey under a heatmap, so the heatmap colours read unambiguously
        ax.imshow(panel.thumbnail.mean(axis=-1), cmap="gray", vmin=0, vmax=255, extent=(0, width, height, 0))
    else:
        ax.set_facecolor("white")
    if values is not None and len(values):
        top = float(np.max(values))
        grid = patch_grid(panel.coords, values / top if top > 0 else values, panel.patch_size, panel.size)
        rows, cols = grid.shape
        extent = (0, cols * panel.patch_size, rows * panel.patch_size, 0)
        ax.imshow(grid, extent=extent, cmap="inferno", vmin=0, vmax=1, alpha=0.65, interpolation="nearest")
    ax.set(xlim=(0, width), ylim=(height, 0), xticks=[], yticks=[])
    ax.set_title(title, fontsize="x-small")


def plot_attention_heatmaps(
    panels: Sequence[AttentionPanel],
    group_names: Sequence[str],
    out_path: str | Path,
    formats: Iterable[str] = ("png",),
) -> list[Path]:
    """A row per patient: the slide, each signature group's token attention, then the gated patch weights.

    Every heatmap is scaled to its own maximum (bright = the patches that panel weighs most).
    """
    n_cols = len(group_names) + 2
    n_rows = max(len(panels), 1)
    fig = Figure(figsize=(2.1 * n_cols, 2.3 * n_rows + 0.5), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for row, panel in enumerate(panels):
        _draw_heatmap(
            axes[row][0], panel, None, "slide" if panel.thumbnail is not None else "slide (not readable)"
        )
        axes[row][0].set_ylabel(panel.title, fontsize="x-small")
        for column, group in enumerate(group_names, start=1):
            _draw_heatmap(axes[row][column], panel, panel.token_attention[column - 1], f"CAB token: {group}")
        _draw_heatmap(axes[row][-1], panel, panel.patch_weights, "HSB gated patch weights")
    if not panels:
        for ax in axes.ravel():
            ax.set_axis_off()
        fig.text(0.5, 0.5, "no attention maps: no G-HANet fold wrote attention.h5 patients", ha="center")
    fig.suptitle(
        "G-HANet attention of the highest- and lowest-risk test patients (each map scaled to its maximum)"
    )
    return save_figure(fig, out_path, formats)
